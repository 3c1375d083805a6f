"""Rate limits and budgets: exact across replicas (Redis) or in-process."""

from router.quota.service import BudgetShort, Quota, Ticket

__all__ = ["BudgetShort", "Quota", "Ticket"]
