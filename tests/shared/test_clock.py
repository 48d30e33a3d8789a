"""The pure tests run a second and third time with the clock a year ahead and a year back (``make test``)."""

import datetime as dt
import time

import time_machine


def test_the_clock_is_where_the_run_says(pytestconfig):
    days = pytestconfig.getoption("--clock-shift") or 0
    real = time_machine.escape_hatch.time.time() if time_machine.escape_hatch.is_travelling() else time.time()
    assert abs(time.time() - real - days * 86400) < 3600
    assert abs(dt.datetime.now(dt.UTC).timestamp() - real - days * 86400) < 3600


def test_a_run_with_a_shifted_clock_leaves_out_every_test_that_uses_real_services(request):
    from ..conftest import _needs_real_time

    assert not _needs_real_time(request.node)
    if request.config.getoption("--clock-shift") is not None:
        kept = request.session.items
        assert kept and not any(_needs_real_time(item) for item in kept)
        assert not any("infra" in item.fixturenames for item in kept)
