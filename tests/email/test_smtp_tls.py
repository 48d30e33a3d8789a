"""The SMTP provider against a relay that requires STARTTLS (aiosmtpd with a self-signed certificate)."""

import datetime as dt
import ipaddress
import ssl
import uuid

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from herald.infra import free_port
from services.email.compose import Rendered, compose
from services.email.providers.smtp import SmtpProvider
from services.email.settings import Settings
from shared import Misconfigured, TransientError


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem"


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
async def test_starttls_is_used_when_configured(tls_relay, certificate):
    port, recorder = tls_relay
    provider = SmtpProvider(Settings(smtp_port=port, smtp_starttls=True, smtp_ca_file=str(certificate[0])))
    try:
        message_id = await provider.send(message(), idempotency_key="k")
        await provider.send(message(), idempotency_key="k2")
    finally:
        await provider.aclose()
    assert message_id.startswith("<") and recorder.received == [(["ada@example.com"], True)] * 2


async def test_a_relay_requiring_starttls_refuses_plain_text(tls_relay):
    port, recorder = tls_relay
    provider = SmtpProvider(Settings(smtp_port=port, smtp_starttls=False))
    try:
        with pytest.raises(Misconfigured, match="smtp_530"):  # Herald's own configuration: the channel pauses, the message waits
            await provider.send(message(), idempotency_key="k")
    finally:
        await provider.aclose()
    assert recorder.received == []


async def test_an_untrusted_relay_certificate_is_not_accepted(tls_relay):
    port, recorder = tls_relay
    provider = SmtpProvider(Settings(smtp_port=port, smtp_starttls=True))
    try:
        with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
            await provider.send(message(), idempotency_key="k")
    finally:
        await provider.aclose()
    assert recorder.received == []


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
