"""Provisioning producer keys with the command line, then using them against the running service."""

from __future__ import annotations

import asyncio
import os
import sys

from .test_events import booking


async def cli(infra, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "HERALD_DATABASE_URL": infra.database_url, "HERALD_ENVIRONMENT": "test"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.ingress.cli", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


async def test_keys_created_listed_and_revoked_from_the_command_line(ingress, infra):
    code, out, _ = await cli(infra, "keys", "create", "lessons-cli", "--types", "booking.*, lesson.reminder", "--rate", "50")
    assert code == 0, out
    fields = dict(line.split(maxsplit=1) for line in out.splitlines()[:2])
    key_id, key = fields["id"], fields["key"]
    headers = {"Authorization": f"ApiKey {key}"}
    assert (await ingress.http.post("/v1/events", json=booking(), headers=headers)).status_code == 202

    code, listing, _ = await cli(infra, "keys", "list", "--producer", "lessons-cli")
    assert code == 0 and key_id in listing and "booking.*,lesson.reminder" in listing and "50/min" in listing
    assert key not in listing and key[:9] in listing

    assert (await cli(infra, "keys", "revoke", key_id))[0] == 0
    assert (await ingress.http.post("/v1/events", json=booking(), headers=headers)).status_code == 401
    code, _, err = await cli(infra, "keys", "revoke", key_id)
    assert code == 1 and "no active key" in err
