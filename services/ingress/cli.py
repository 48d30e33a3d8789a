"""Producer keys: ``python -m services.ingress.cli keys create|list|revoke``.

A key is printed once, when it is created; only its SHA-256 digest is stored.
Several keys of one producer may be active at once: create the new one, move
the producer over, then revoke the old one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import uuid

import asyncpg

from . import logic, repo
from .settings import Settings


def audited(action: str, target: str, **detail: object) -> None:
    from herald.cli import audited as log_it

    log_it(action, target, **detail)


async def create(settings: Settings, *, producer: str, types: list[str], rate: int | None, days: float | None) -> tuple[uuid.UUID, str]:
    """Create a key for ``producer`` allowed ``types`` (glob patterns); return its id and the key."""
    key = logic.new_key()
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=days) if days else None
    conn = await asyncpg.connect(settings.database_url)
    try:
        key_id = await repo.insert_key(
            conn=conn, producer=producer, key_hash=logic.hash_key(key), key_prefix=logic.key_prefix(key),
            event_types=types, rate_per_minute=rate or settings.key_rate_per_minute, expires_at=expires,
        )
    finally:
        await conn.close()
    return key_id, key


async def listing(settings: Settings, producer: str | None) -> list[dict]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await repo.list_keys(conn=conn, producer=producer)
    finally:
        await conn.close()


async def revoke(settings: Settings, key_id: uuid.UUID) -> bool:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await repo.revoke_key(conn=conn, key_id=key_id)
    finally:
        await conn.close()



class KeyToolSettings(Settings):
    """An operator command serves nothing: production settings without the services' secrets are fine here."""

    refuses_unsafe_production = False

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ingress.cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys = parser.add_subparsers(dest="group", required=True).add_parser("keys", help="producer API keys").add_subparsers(dest="command", required=True)
    made = keys.add_parser("create", help="create a key and print it (once)")
    made.add_argument("producer", help="the producer's name, e.g. bookings")
    made.add_argument("--types", required=True, help="comma-separated event types or glob patterns, e.g. 'booking.*,lesson.reminder'")
    made.add_argument("--rate", type=int, help="requests per minute (default HERALD_KEY_RATE_PER_MINUTE)")
    made.add_argument("--days", type=float, help="expire after this many days (default: never)")
    shown = keys.add_parser("list", help="list keys (never the keys themselves)")
    shown.add_argument("--producer")
    gone = keys.add_parser("revoke", help="revoke a key by id")
    gone.add_argument("id", type=uuid.UUID)
    args = parser.parse_args(argv)
    settings = KeyToolSettings()
    if args.command == "create":
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        if not types:
            parser.error("--types names no event type")
        key_id, key = asyncio.run(create(settings, producer=args.producer, types=types, rate=args.rate, days=args.days))
        print(f"id   {key_id}\nkey  {key}\n(shown once: store it now; send it as 'Authorization: ApiKey <key>')")
        audited("producer_key.create", args.producer, key_id=str(key_id), event_types=",".join(types))
    elif args.command == "list":
        for row in asyncio.run(listing(settings, args.producer)):
            state = "revoked" if row["revoked_at"] else ("expires " + row["expires_at"].isoformat() if row["expires_at"] else "active")
            print(f"{row['id']}  {row['producer']:16} {row['key_prefix']}…  {','.join(row['event_types'])}  {row['rate_per_minute']}/min  {state}")
    else:
        if not asyncio.run(revoke(settings, args.id)):
            print(f"no active key {args.id}", file=sys.stderr)
            return 1
        print(f"revoked {args.id}")
        audited("producer_key.revoke", str(args.id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
