"""Ports for what the tests start: each test process hands out a range of its own, in turn."""

import socket

from herald import infra as local


def test_free_port_hands_out_its_range_in_turn_and_passes_over_a_port_in_use(monkeypatch):
    first = local.free_port()
    monkeypatch.setattr(local, "PORT_RANGE", range(first, first + 3))
    monkeypatch.setattr(local, "_turn", 0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first + 1))
        assert [local.free_port() for _ in range(3)] == [first, first + 2, first]


def test_the_suite_takes_its_ports_below_the_kernels_ephemeral_range():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert local.PORT_RANGE is not None and local.PORT_RANGE.stop <= low
    assert local.free_port() in local.PORT_RANGE
