"""Configs and admin API calls for the database-key tests."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import aiohttp
import asyncpg

from router.identity import schema as key_schema

ADMIN_TOKEN = "admin-token-for-tests-0001"
YAML_KEY = "sk-yaml-key-0001"


def identity_config(
    database_url: str, schema: str, *, admin_port: int | None = 0, **extra: Any
) -> dict[str, Any]:
    """A gateway on the simulated backend with database keys (and an admin listener)."""
    doc: dict[str, Any] = {
        "backends": {"sim": {"provider": "simulate"}},
        "pools": {"sim-pool": {"members": [{"backend": "sim", "model": "sim-1"}]},
                  "other-pool": {"members": [{"backend": "sim", "model": "sim-2"}]}},
        "models": {"chat": {"routes": [{"pools": ["sim-pool"]}]},
                   "other": {"routes": [{"pools": ["other-pool"]}]}},
        "teams": {"eng": {}, "ops": {}},
        "keys": [{"id": "yaml-key", "team": "eng", "key": YAML_KEY}],
        "database": {"url": database_url, "schema_name": schema, "retry_seconds": 0.2},
        "logging": {"requests": False},
    }  # fmt: skip
    if admin_port is not None:
        doc["admin"] = {
            "listen": {"host": "127.0.0.1", "port": admin_port},
            "tokens": [hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()],
        }
    doc.update(extra)
    return doc


class Admin:
    """Calls to one admin listener."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str = ADMIN_TOKEN):
        self.session = session
        self.url = url.rstrip("/") + "/admin/v1/keys"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str = "", body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.session.request(
            method, self.url + path, json=body, headers=self.headers
        ) as resp:
            return resp.status, await resp.json()

    async def create(self, **body: Any) -> dict[str, Any]:
        status, doc = await self.call("POST", "", body)
        assert status == 201, doc
        return doc


async def chat_status(session: aiohttp.ClientSession, url: str, key: str,
                      model: str = "chat") -> tuple[int, dict[str, Any]]:  # fmt: skip
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with session.post(url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"}) as resp:  # fmt: skip
        return resp.status, await resp.json()


async def seed_key(database_url: str, schema: str, key_id: str, team: str) -> str:
    """A key written straight into the table (the schema applied first), before any
    gateway follows it; its secret."""
    secret = "sk-sw-" + secrets.token_urlsafe(32)
    conn = await asyncpg.connect(database_url)
    try:
        await key_schema.apply(conn, schema)
        await conn.execute(
            f'INSERT INTO "{schema}".keys (id, team, sha256, created_by) VALUES ($1, $2, $3, $4)',
            key_id, team, hashlib.sha256(secret.encode()).digest(), "test",
        )  # fmt: skip
    finally:
        await conn.close()
    return secret
