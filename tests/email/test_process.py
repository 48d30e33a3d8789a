"""The email service and the sandbox as real processes configured only by HERALD_* variables."""

import os
from urllib.parse import urlsplit

import httpx
import pytest

from herald import infra as local
from herald.stack import SANDBOX, SERVICES, Stack
from services.email.settings import Settings

from ..support import TopicReader, eventually, make_topics, produce, settings_for
from .conftest import email_dispatch
from .servers import RecordingRouter, serve

pytestmark = pytest.mark.slow

EMAIL = next(s for s in SERVICES if s.name == "email")


@pytest.fixture
def router_api():
    recorder = RecordingRouter()
    with serve(recorder.app()) as url:
        recorder.url = url
        yield recorder


@pytest.fixture
async def processes(infra, namespace, tmp_path, router_api):
    email_port, sandbox_port, smtp_port = local.free_port(), local.free_port(), local.free_port()
    env = {
        **os.environ,
        **infra.env(namespace),
        EMAIL.port_variable: str(email_port),
        SANDBOX.port_variable: str(sandbox_port),
        "HERALD_SANDBOX_SMTP_PORT": str(smtp_port),
        "HERALD_SMTP_PORT": str(smtp_port),
        "HERALD_UNSUBSCRIBE_URL": f"http://127.0.0.1:{email_port}/v1/unsubscribe",
        "HERALD_ROUTER_URL": router_api.url,
    }
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    stack = Stack(env=env, log_dir=tmp_path / "logs")
    try:
        stack.start_all((SANDBOX, EMAIL), timeout=90)
        yield stack, settings
    finally:
        stack.stop_all()


async def test_a_promotion_is_emailed_and_its_unsubscribe_link_works_across_real_processes(infra, processes, router_api):
    stack, settings = processes
    email, sandbox = stack.url(EMAIL), stack.url(SANDBOX)
    d = email_dispatch("promotion", event_type="marketing.promotion", category="promotional", locale="de")
    await produce(infra.kafka_bootstrap, settings.notify_topic("email"), d.model_dump_json().encode(), key=b"u_1")
    async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:
        await reader.wait_for(1, timeout=60)
        [status] = reader.json()
    async with httpx.AsyncClient(timeout=20) as http:

        async def received():
            return (await http.get(f"{sandbox}/api/messages", params={"provider": "smtp"})).json()

        [message] = await eventually(received, what="the email in the sandbox")
        [link] = [v for k, v in message["meta"]["headers"] if k == "List-Unsubscribe"]
        target = link.strip("<>")
        answer = await http.post(target, content="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"})
        page = (await http.get(f"{sandbox}/")).text
    assert status["status"] == "sent"
    assert message["subject"] == "20% off winter lessons" and "Zum Angebot" in message["text"]
    assert urlsplit(target).netloc == urlsplit(email).netloc
    assert answer.status_code == 200
    assert router_api.requests[0]["body"] == {"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}
    assert "20% off winter lessons" in page
