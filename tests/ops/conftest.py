from collections.abc import Iterator

import pytest

from .stack import RunningPlatform, running_platform


@pytest.fixture(scope="package")
def platform(infra, tmp_path_factory) -> Iterator[RunningPlatform]:
    """Every service as a process, scraped every second by a real Prometheus with the shipped rules.

    At DEBUG, so that the lines about each notification (DEBUG, not INFO) are written too, and
    checked like every other line.
    """
    with running_platform(infra, tmp_path_factory.mktemp("platform"), HERALD_CONSUMER_LAG_INTERVAL_SECONDS="1", HERALD_LOG_LEVEL="DEBUG") as running:
        yield running
