"""The channel gate on its own, with a clock the test moves."""

from shared import ChannelGate, GateState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(**options) -> tuple[ChannelGate, Clock, list[tuple[str, str]]]:
    clock, changes = Clock(), []
    values = dict(failures=3, failure_rate=0.5, window_seconds=30, min_calls=10, open_seconds=5, open_max_seconds=40)
    values.update(options)
    g = ChannelGate("email", clock=clock, on_change=lambda before, after, why: changes.append((after.value, why)), **values)
    return g, clock, changes


def test_failures_in_a_row_open_it_and_a_successful_probe_closes_it():
    g, clock, changes = gate()
    g.failed("http_503")
    g.succeeded()  # a success breaks the run
    g.failed("http_503")
    g.failed("http_503")
    assert g.state is GateState.closed and g.admits() is None
    g.failed("timeout")
    assert g.state is GateState.open and "3 failures in a row, last timeout" in g.reason
    assert g.admits() == 0 and 4.9 <= g.retry_in() <= 5.0  # nothing goes through while open
    clock.now += 5
    assert g.admits() == 1 and g.state is GateState.half_open  # one probe
    assert g.admits() == 0  # and only one at a time
    g.succeeded()
    assert g.state is GateState.closed and g.admits() is None
    assert [c[0] for c in changes] == ["open", "half_open", "closed"]


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_maximum():
    g, clock, _ = gate()
    for _ in range(3):
        g.failed("http_500")
    pauses = []
    for _ in range(5):
        clock.now += 1000
        assert g.admits() == 1
        g.failed("http_500")
        assert g.state is GateState.open
        pauses.append(round(g.retry_in()))
    assert pauses == [10, 20, 40, 40, 40]


def test_a_failure_rate_over_the_window_opens_it_once_enough_calls_were_made():
    g, clock, _ = gate(failures=100)
    for i in range(9):
        (g.failed if i % 2 else g.succeeded)("http_503") if i % 2 else g.succeeded()
    assert g.state is GateState.closed  # 9 calls: below the minimum
    for _ in range(2):
        g.failed("http_503")
    assert g.state is GateState.open and "failure rate" in g.reason
    # calls older than the window no longer count
    g2, clock2, _ = gate(failures=100)
    for _ in range(6):
        g2.failed("x")
    clock2.now += 31
    for _ in range(10):
        g2.succeeded()
    g2.failed("x")
    assert g2.state is GateState.closed


def test_a_misconfiguration_pauses_it_until_a_probe_gets_through():
    g, clock, changes = gate()
    g.misconfigured("smtp_535: 5.7.8 bad credentials")
    assert g.state is GateState.misconfigured and g.admits() == 0
    clock.now += 5
    assert g.admits() == 1 and g.state is GateState.misconfigured
    g.misconfigured("smtp_535: 5.7.8 bad credentials")  # still wrong: wait longer
    assert g.state is GateState.misconfigured and round(g.retry_in()) == 10
    clock.now += 10
    assert g.admits() == 1
    g.succeeded()  # fixed
    assert g.state is GateState.closed
    assert [c[0] for c in changes] == ["misconfigured", "closed"]


def test_a_probe_that_never_reached_the_provider_lets_the_next_one_through():
    g, clock, _ = gate()
    g.misconfigured("http_401")
    clock.now += 5
    assert g.admits() == 1
    g.probe_over()  # the probe was a duplicate, or expired: nothing said
    assert g.admits() == 1


def test_an_operator_holds_and_resumes_and_resume_closes_an_open_breaker():
    g, clock, changes = gate()
    g.control(held=False, resume_token="")  # the first look only remembers what is there
    g.control(held=True, resume_token="")
    assert g.state is GateState.held and g.admits() == 0
    clock.now += 10_000
    assert g.admits() == 0  # a hold never probes
    g.succeeded()
    assert g.state is GateState.held  # nor does a delivery end it
    g.control(held=False, resume_token="")
    assert g.state is GateState.closed
    for _ in range(3):
        g.failed("http_503")
    assert g.state is GateState.open
    g.control(held=False, resume_token="t1")
    assert g.state is GateState.closed and g.admits() is None
    g.control(held=False, resume_token="t1")  # the same resume is not applied twice
    for _ in range(3):
        g.failed("http_503")
    g.control(held=False, resume_token="t1")
    assert g.state is GateState.open
    assert [c[0] for c in changes] == ["held", "closed", "open", "closed", "open"]
