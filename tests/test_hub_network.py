"""A network that fails slowly, against the local hub (tests/hub_server.py) and the real clients in
a child process: a request that is never answered, the libraries' own retries, rate limits, a
proxy that ignores Range, a clock that is wrong. Each must end within --retry-for (plus a request
timeout, HF_HUB_DOWNLOAD_TIMEOUT, 1 s here) or be named for what it is.
"""

import time

import pytest

from hub_server import Fault, HubServer
from test_hub import FLAGS, edu_repo, fineweb
from test_hub import faults  # noqa: F401 (a fixture: pytest finds it by its name)


@pytest.fixture(scope="module")
def hub():
    with HubServer({"me/edu": edu_repo()}) as server:
        yield server


def test_a_listing_never_answered_ends_within_retry_for(hub, faults, tmp_path):
    faults(Fault("/tree/", "blackhole", times=None))
    started = time.monotonic()
    result = fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out", tmp_path / "out",
                     *FLAGS, retry_for="3s", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "still failing after 3s" in last and "ReadTimeout" in last, last
    assert took < 3 + 15, took  # + a request timeout, and a busy machine's start-up
