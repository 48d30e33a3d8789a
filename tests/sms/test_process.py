"""The sms service and the sandbox as real processes configured only by HERALD_* variables."""

import os

import httpx
import pytest

from herald import infra as local
from herald.stack import SANDBOX, SERVICES, Stack
from services.sms.settings import Settings

from ..support import bearer, eventually, make_topics, settings_for
from .conftest import dispatch, new_phone, produce_all, statuses_of

pytestmark = pytest.mark.slow

SMS = next(s for s in SERVICES if s.name == "sms")


@pytest.fixture
async def processes(infra, namespace, tmp_path):
    sms_port, sandbox_port = local.free_port(), local.free_port()
    env = {
        **os.environ,
        **infra.env(namespace),
        SMS.port_variable: str(sms_port),
        SANDBOX.port_variable: str(sandbox_port),
        "HERALD_TWILIO_API_BASE": f"http://127.0.0.1:{sandbox_port}",
        "HERALD_PUBLIC_URL": f"http://127.0.0.1:{sms_port}",
        "HERALD_SMS_REDIS_PREFIX": f"{namespace}sms:",
        "HERALD_SMS_ALLOWED_COUNTRIES": "us, de",
    }
    settings = settings_for(Settings, infra, namespace, public_url=env["HERALD_PUBLIC_URL"], sms_redis_prefix=env["HERALD_SMS_REDIS_PREFIX"])
    await make_topics(settings)
    stack = Stack(env=env, log_dir=tmp_path / "logs")
    try:
        stack.start_all((SANDBOX, SMS), timeout=90)
        yield stack, settings
    finally:
        stack.stop_all()


async def test_a_dispatch_is_sent_receipted_and_a_number_verified_across_real_processes(infra, processes, db):
    stack, settings = processes
    sms, sandbox = stack.url(SMS), stack.url(SANDBOX)
    phone = new_phone()
    d, abroad = dispatch(phone), dispatch("+33612345678")
    async with httpx.AsyncClient(timeout=20) as http:
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d, abroad])
        found = await statuses_of(infra, settings, {d.notification_id, abroad.notification_id}, final=3, timeout=60)

        async def delivered():
            return await db.fetchval("SELECT status FROM sms.ledger WHERE notification_id = $1", d.notification_id) == "delivered"

        await eventually(delivered, timeout=30, what="the stand-in's signed receipt recorded")
        started = await http.post(f"{sms}/v1/verifications", json={"phone": phone}, headers=bearer(settings, "u-proc"))
        page = (await http.get(f"{sandbox}/")).text
    assert sorted((s["notification_id"] == str(d.notification_id), s["status"], s["reason"]) for s in found) == [
        (False, "suppressed", "country_not_allowed"), (True, "delivered", None), (True, "sent", None),
    ]
    assert started.status_code == 202
    assert "Booking confirmed: Piano lesson" in page and "Your verification code is" in page
