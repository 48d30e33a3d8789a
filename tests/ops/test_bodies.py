"""Every service refuses a 100 MB body with 413 while reading it, and stays near its normal memory."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HUNDRED_MB = 100 * 1024 * 1024

#: One route per service that takes a body, as a client (or an attacker) would reach it.
ROUTES = {
    "ingress": "/v1/events",
    "router": "/v1/recipients/u1",
    "email": "/v1/unsubscribe",
    "sms": "/v1/webhooks/twilio/status",
    "push": "/v1/push/subscriptions",
    "inapp": "/v1/inbox/read-all",
}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def post_huge(url: str, path: str, *, declared: bool, method: str = "POST") -> tuple[int, int]:
    """Send a 100 MB body (with its Content-Length, or chunked) until the server answers; its status and the bytes it took."""
    target = urlsplit(url)
    framing = f"Content-Length: {HUNDRED_MB}" if declared else "Transfer-Encoding: chunked"
    head = f"{method} {path} HTTP/1.1\r\nHost: {target.netloc}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    chunk = b"x" * 65536
    piece = chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with socket.create_connection((target.hostname, target.port), timeout=30) as conn:
        conn.sendall(head.encode())
        conn.setblocking(False)
        answer = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b"\r\n" not in answer:
            try:
                answer += conn.recv(4096)
                if not answer:
                    break
                continue
            except BlockingIOError:
                pass
            if sent < HUNDRED_MB:
                try:
                    sent += conn.send(piece)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    time.sleep(0.01)
            else:
                time.sleep(0.01)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1]), sent


@pytest.mark.parametrize("name", list(ROUTES))
def test_a_100_mb_body_is_refused_with_413_and_memory_stays_put(platform, name):
    pid = platform.stack.procs[name].pid
    before = rss_bytes(pid)
    url, path = platform.url(name), ROUTES[name]
    method = "PUT" if name == "router" else "POST"
    status, _ = post_huge(url, path, declared=True, method=method)
    assert status == 413
    status, sent = post_huge(url, path, declared=False, method=method)
    assert status == 413
    assert sent < HUNDRED_MB  # answered long before the body was all sent
    grown = rss_bytes(pid) - before
    assert grown < 30 * 1024 * 1024, f"{name} grew by {grown / 1e6:.0f} MB"
