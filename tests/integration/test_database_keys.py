"""Database keys through the admin API, on a real PostgreSQL, in one gateway.

(Several gateway processes sharing the database: test_database_replicas.py.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import openai
import pytest

from tests.support.gateway import Running, make_config, start_gateway
from tests.support.keys import ADMIN_TOKEN, YAML_KEY, Admin, chat_status, identity_config
from tests.support.net import eventually
from tests.support.raw_client import raw_request


@pytest.fixture
async def gw(database_url: str, db_schema: str) -> AsyncIterator[Running]:
    running = await start_gateway(make_config(identity_config(database_url, db_schema)))
    yield running
    await running.stop()


@pytest.fixture
async def admin(gw: Running) -> AsyncIterator[Admin]:
    port = gw.gateway.identity.admin_port
    async with aiohttp.ClientSession() as session:
        yield Admin(session, f"http://127.0.0.1:{port}")


async def test_create_use_list_revoke(gw: Running, admin: Admin) -> None:
    made = await admin.create(id="ci-bot", team="eng", limits={"requests_per_minute": 100})
    secret = made["secret"]
    assert secret.startswith("sk-sw-") and made["id"] == "ci-bot" and made["team"] == "eng"
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=secret, max_retries=0) as c:
        reply = await c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content
    status, listed = await admin.call("GET")
    assert status == 200 and [k["id"] for k in listed["data"]] == ["ci-bot"]
    assert '"secret"' not in json.dumps(listed) and secret not in json.dumps(listed)
    status, one = await admin.call("GET", "/ci-bot")
    assert status == 200 and one["limits"] == {"requests_per_minute": 100}
    status, revoked = await admin.call("DELETE", "/ci-bot")
    assert status == 200 and revoked["revoked_at"]
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=secret, max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
    status, listed = await admin.call("GET")
    assert listed["data"] == []
    status, listed = await admin.call("GET", "?include_revoked=true")
    assert [k["id"] for k in listed["data"]] == ["ci-bot"]
    # YAML keys keep working beside database keys
    async with aiohttp.ClientSession() as s:
        assert (await chat_status(s, gw.url, YAML_KEY))[0] == 200


async def test_database_key_limits_models_and_budgets_apply(gw: Running, admin: Admin) -> None:
    made = await admin.create(
        id="tiny", team="eng", models=["chat"], limits={"requests_per_minute": 2},
        budgets=[{"tokens_per_day": 100000}],
    )  # fmt: skip
    async with aiohttp.ClientSession() as s:
        assert (await chat_status(s, gw.url, made["secret"]))[0] == 200
        status, doc = await chat_status(s, gw.url, made["secret"], model="other")
        assert status == 403 and doc["error"]["param"] == "model"
        assert (await chat_status(s, gw.url, made["secret"]))[0] == 200
        status, doc = await chat_status(s, gw.url, made["secret"])
        assert status == 429 and "key 'tiny'" in doc["error"]["message"]
        assert "requests_per_minute" in doc["error"]["message"]
        async with s.get(gw.url + "/v1/quota",
                         headers={"Authorization": f"Bearer {made['secret']}"}) as r:  # fmt: skip
            quota = await r.json()
        assert quota["key_id"] == "tiny"
        assert any(b["owner"] == "tiny" and b["name"] == "tokens_per_day" and b["used"] > 0
                   for b in quota["budgets"])  # fmt: skip
        async with s.get(gw.url + "/v1/models",
                         headers={"Authorization": f"Bearer {made['secret']}"}) as r:  # fmt: skip
            assert [m["id"] for m in (await r.json())["data"]] == ["chat"]
    # a change of limits applies to the next request
    status, _ = await admin.call("PATCH", "/tiny", {"limits": {"requests_per_minute": 50}})
    assert status == 200
    async with aiohttp.ClientSession() as s:
        assert (await chat_status(s, gw.url, made["secret"]))[0] == 200


async def test_rotation_grace_and_expiry(gw: Running, admin: Admin) -> None:
    made = await admin.create(id="rot", team="eng")
    old = made["secret"]
    status, rotated = await admin.call("POST", "/rot/rotate", {"grace_seconds": 2})
    assert status == 200 and rotated["secret"] != old
    assert rotated["previous_secret_valid_until"]
    async with aiohttp.ClientSession() as s:
        assert (await chat_status(s, gw.url, rotated["secret"]))[0] == 200
        assert (await chat_status(s, gw.url, old))[0] == 200  # within the grace period

        async def old_refused() -> bool:
            return (await chat_status(s, gw.url, old))[0] == 401

        await eventually(old_refused, within=6.0)
        assert (await chat_status(s, gw.url, rotated["secret"]))[0] == 200
        # without grace the old secret stops at once
        status, again = await admin.call("POST", "/rot/rotate", {})
        assert (await chat_status(s, gw.url, rotated["secret"]))[0] == 401
        assert (await chat_status(s, gw.url, again["secret"]))[0] == 200
        # expiry
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        made = await admin.create(id="temp", team="ops", expires_at=soon)
        assert (await chat_status(s, gw.url, made["secret"]))[0] == 200

        async def expired() -> bool:
            status, doc = await chat_status(s, gw.url, made["secret"])
            return status == 401 and doc["error"]["code"] == "expired_api_key"

        await eventually(expired, within=5.0)


async def test_admin_api_refuses_bad_calls(gw: Running, admin: Admin) -> None:
    async with aiohttp.ClientSession() as s:
        anon = Admin(s, admin.url.removesuffix("/admin/v1/keys"), token="not-an-admin-token")
        status, doc = await anon.call("GET")
        assert status == 401 and doc["error"]["code"] == "invalid_token"
        async with s.get(admin.url) as r:
            assert r.status == 401
    cases = [
        ({"team": "nope"}, 400, "team"),
        ({"team": "eng", "id": "bad id!"}, 400, "id"),
        ({"team": "eng", "models": ["missing"]}, 400, "models"),
        ({"team": "eng", "budgets": [{"tokens_per_day": 5, "pools": ["nope"]}]}, 400, "budgets"),
        ({"team": "eng", "limits": {"requests_per_minute": -1}}, 400, "limits.requests_per_minute"),
        ({"team": "eng", "surprise": 1}, 400, "surprise"),
        ({"team": "eng", "id": "yaml-key"}, 409, "id"),
    ]
    for body, want, param in cases:
        status, doc = await admin.call("POST", "", body)
        assert status == want and doc["error"]["param"] == param, (body, doc)
    await admin.create(id="dup", team="eng")
    status, doc = await admin.call("POST", "", {"id": "dup", "team": "eng"})
    assert status == 409
    assert (await admin.call("GET", "/missing"))[0] == 404
    assert (await admin.call("PATCH", "/dup", {}))[0] == 400
    assert (await admin.call("POST", "/dup/rotate", {"grace_seconds": 10**9}))[0] == 400
    await admin.call("DELETE", "/dup")
    assert (await admin.call("PATCH", "/dup", {"description": "x"}))[0] == 409


async def test_an_admin_token_that_is_not_utf8_is_a_401(gw: Running, admin: Admin) -> None:
    """Raw bytes, as a hostile client sends them: never a 500 (a JWT-shaped one too)."""
    port = gw.gateway.identity.admin_port
    assert port is not None
    for token in (b"\xff\xfe-admin", b"eyJ\xc3\x28.a.b"):
        reply = await raw_request(port, b"GET", b"/admin/v1/keys",
                                  [(b"Authorization", b"Bearer " + token)])  # fmt: skip
        assert reply.status == 401, reply.body
        assert reply.json()["error"]["code"] == "invalid_token"  # type: ignore[index]


async def test_every_admin_call_is_one_audit_line_without_secrets(
    gw: Running, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spillway.audit")
    made = await admin.create(id="audited", team="eng")
    _, rotated = await admin.call("POST", "/audited/rotate", {"grace_seconds": 5})
    await admin.call("DELETE", "/audited")
    lines = [r for r in caplog.records if r.name == "spillway.audit"]
    fields = [getattr(r, "fields", {}) for r in lines]
    assert [f["action"] for f in fields] == ["key.create", "key.rotate", "key.revoke"]
    assert all(f["key_id"] == "audited" and f["team"] == "eng" for f in fields)
    assert all(f["actor"].startswith("admin-token:") for f in fields)
    assert [f["status"] for f in fields] == [201, 200, 200]
    text = json.dumps(fields)
    for secret in (made["secret"], rotated["secret"], ADMIN_TOKEN):
        assert secret not in text


async def test_database_down_serves_from_cache(db_schema: str) -> None:
    """The database goes away (here: the gateway's connections are cut by the server):
    cached keys keep working, /readyz stays ready and says so."""
    from tests.support.postgres import postgres_server

    with postgres_server() as server:
        running = await start_gateway(make_config(identity_config(server.url, db_schema)))
        try:
            async with aiohttp.ClientSession() as s:
                admin = Admin(s, f"http://127.0.0.1:{running.gateway.identity.admin_port}")
                made = await admin.create(id="cached", team="eng")
                server.kill()

                async def down() -> bool:
                    async with s.get(running.url + "/readyz") as r:
                        doc = await r.json()
                    return r.status == 200 and doc["key_database"]["status"] == "unreachable"

                await eventually(down, within=15.0)
                async with s.get(running.url + "/readyz") as r:
                    doc = await r.json()
                assert doc["key_database"]["serving"] == "from cache"
                assert doc["key_database"]["keys"] == 1
                assert (await chat_status(s, running.url, made["secret"]))[0] == 200
                async with s.get(running.url + "/metrics") as r:
                    assert 'spillway_key_store_up{store="postgresql"} 0.0' in await r.text()
                status, doc = await admin.call("POST", "", {"team": "eng"})
                assert status == 503 and doc["error"]["code"] == "database_unreachable"
                server.start()

                async def up() -> bool:
                    async with s.get(running.url + "/readyz") as r:
                        return (await r.json())["key_database"]["status"] == "ok"

                await eventually(up, within=20.0)
                async with s.get(running.url + "/metrics") as r:
                    assert 'spillway_key_store_up{store="postgresql"} 1.0' in await r.text()
        finally:
            await running.stop()


async def test_schema_is_versioned_and_applied_once(database_url: str, db_schema: str) -> None:
    a = await start_gateway(make_config(identity_config(database_url, db_schema, admin_port=None)))
    b = await start_gateway(make_config(identity_config(database_url, db_schema, admin_port=None)))
    await a.stop()
    await b.stop()
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch(f'SELECT version FROM "{db_schema}".schema_version')
        assert [r["version"] for r in versions] == [1]
        await conn.execute(f'INSERT INTO "{db_schema}".schema_version VALUES (99)')
    finally:
        await conn.close()
    c = await start_gateway(make_config(identity_config(database_url, db_schema, admin_port=None)))
    try:
        async with aiohttp.ClientSession() as s, s.get(c.url + "/readyz") as r:
            doc = await r.json()
        assert doc["key_database"]["status"] == "unreachable"
        assert "newer than this release" in doc["key_database"]["error"]
    finally:
        await c.stop()
    await asyncio.sleep(0)
