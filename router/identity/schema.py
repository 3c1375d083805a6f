"""The database schema of the keys, applied and versioned at start.

Everything lives in the schema ``database.schema_name``. ``schema_version``
holds the version applied; each migration runs in one transaction under an
advisory lock, so replicas starting together apply it once. Any change to a
key row notifies ``<schema>.keys`` with the key id (a trigger, so a change
made by hand in SQL reaches every replica too).
"""

from __future__ import annotations

import asyncpg

MIGRATIONS: tuple[str, ...] = (
    # 1: keys, and the notification of every change
    """
    CREATE TABLE keys (
        id text PRIMARY KEY,
        team text NOT NULL,
        sha256 bytea NOT NULL UNIQUE,
        previous_sha256 bytea,
        previous_valid_until timestamptz,
        models jsonb,
        limits jsonb,
        budgets jsonb NOT NULL DEFAULT '[]'::jsonb,
        description text,
        expires_at timestamptz,
        revoked_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        created_by text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNIQUE INDEX keys_previous_sha256 ON keys (previous_sha256)
        WHERE previous_sha256 IS NOT NULL;
    CREATE FUNCTION keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.keys', COALESCE(NEW.id, OLD.id));
        RETURN NULL;
    END;
    $$;
    CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys
        FOR EACH ROW EXECUTE FUNCTION keys_changed();
    """,
)
LOCK_ID = 0x5350_494C  # advisory lock held while migrating


class SchemaTooNew(Exception):
    """The database was migrated by a newer release."""


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one schema's keys."""
    return f"{schema}.keys"


async def apply(conn: asyncpg.Connection, schema: str) -> int:
    """Create ``schema`` and bring it to the latest version; the version now in force."""
    quoted = '"' + schema + '"'  # config checks the name: [a-z_][a-z0-9_]*
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version (version integer NOT NULL)"
        )
        current = await conn.fetchval(f"SELECT max(version) FROM {quoted}.schema_version")
        current = int(current or 0)
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"database schema {schema} is at version {current}, newer than this "
                f"release knows ({len(MIGRATIONS)}); upgrade spillway"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            await conn.execute(f"SET LOCAL search_path TO {quoted}")
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute(
                f"INSERT INTO {quoted}.schema_version (version) VALUES ($1)", version
            )
        return len(MIGRATIONS)
