"""The SMTP provider against a relay that requires STARTTLS (aiosmtpd with a self-signed certificate)."""

import ssl
import uuid

import pytest
from aiosmtpd.controller import Controller

from herald.infra import free_port
from services.email.compose import Rendered, compose
from services.email.providers.smtp import SmtpProvider
from services.email.settings import Settings
from shared import Misconfigured

from ..support import tls_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return tls_certificate(tmp_path_factory.mktemp("tls"))


class Recorder:
    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.received.append((envelope.rcpt_tos, session.ssl is not None))
        return "250 OK"


@pytest.fixture
def tls_relay(certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), tls_context=context, require_starttls=True, server_hostname="relay")
    controller.start()
    yield controller.port, recorder
    controller.stop()


def message():
    rendered = Rendered(subject="Hello", html="<p>Hi</p>", text="Hi\n")
    return compose(rendered, to="ada@example.com", sender="n@herald.example", sender_name="Herald", notification_id=uuid.uuid4())


@pytest.mark.real_clock  # OpenSSL checks the certificate against the real clock
@pytest.mark.parametrize("mode", ["opportunistic", "required"])
async def test_starttls_is_used_with_a_verified_certificate_when_the_relay_offers_it(tls_relay, certificate, mode):
    port, recorder = tls_relay
    settings = Settings(smtp_port=port, smtp_ca_file=str(certificate[0]), **({"smtp_starttls": mode} if mode != "opportunistic" else {}))
    assert settings.smtp_starttls == mode  # opportunistic is the default
    provider = SmtpProvider(settings)
    try:
        message_id = await provider.send(message(), idempotency_key="k")
        await provider.send(message(), idempotency_key="k2")
    finally:
        await provider.aclose()
    assert message_id.startswith("<") and recorder.received == [(["ada@example.com"], True)] * 2


async def test_a_relay_requiring_starttls_refuses_plain_text(tls_relay):
    port, recorder = tls_relay
    provider = SmtpProvider(Settings(smtp_port=port, smtp_starttls="off"))
    try:
        with pytest.raises(Misconfigured, match="smtp_530"):  # Herald's own configuration: the channel pauses, the message waits
            await provider.send(message(), idempotency_key="k")
    finally:
        await provider.aclose()
    assert recorder.received == []


@pytest.mark.parametrize("mode", ["opportunistic", "required"])
async def test_an_untrusted_relay_certificate_is_a_configuration_error_never_a_fall_back_to_plain_text(tls_relay, mode):
    port, recorder = tls_relay
    provider = SmtpProvider(Settings(smtp_port=port, smtp_starttls=mode))
    try:
        with pytest.raises(Misconfigured, match="CERTIFICATE_VERIFY_FAILED") as refused:
            await provider.send(message(), idempotency_key="k")
    finally:
        await provider.aclose()
    assert refused.value.reason == "smtp_tls_certificate"
    assert recorder.received == []


@pytest.mark.parametrize(("mode", "sent"), [("opportunistic", True), ("off", True), ("required", False)])
async def test_a_relay_without_starttls_gets_plain_text_unless_tls_is_required(mode, sent):
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), server_hostname="relay")
    controller.start()
    provider = SmtpProvider(Settings(smtp_port=controller.port, smtp_starttls=mode))
    try:
        if sent:
            await provider.send(message(), idempotency_key="k")
        else:
            with pytest.raises(Misconfigured) as refused:
                await provider.send(message(), idempotency_key="k")
            assert refused.value.reason == "smtp_starttls_unavailable"
    finally:
        await provider.aclose()
        controller.stop()
    assert recorder.received == ([(["ada@example.com"], False)] if sent else [])


def test_the_older_boolean_setting_still_reads():
    assert Settings(smtp_starttls=True).smtp_starttls == "required" and Settings(smtp_starttls="false").smtp_starttls == "off"


async def test_a_pooled_connection_the_relay_closed_is_replaced_without_a_failure():
    from ..support import eventually

    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), server_hostname="relay", timeout=0.5)
    controller.start()
    provider = SmtpProvider(Settings(smtp_port=controller.port))
    try:
        await provider.send(message(), idempotency_key="a")
        [pooled] = provider._idle
        await eventually(lambda: _closed(pooled), timeout=20, what="the relay closing the idle connection")
        await provider.send(message(), idempotency_key="b")
    finally:
        await provider.aclose()
        controller.stop()
    assert len(recorder.received) == 2


async def _closed(client):
    return not client.is_connected
