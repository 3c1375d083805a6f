"""Principals beyond the config's keys: SSO tokens (JWT, JWKS), database keys and
their admin API. :mod:`router.auth` asks these sources through small protocols."""
