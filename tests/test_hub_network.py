"""A network that fails slowly, against the local hub (tests/hub_server.py) and the real clients in
a child process: a request that is never answered, the libraries' own retries, rate limits, a
proxy that ignores Range, a clock that is wrong. Each must end within --retry-for (plus a request
timeout, HF_HUB_DOWNLOAD_TIMEOUT, 1 s here) or be named for what it is.
"""

import json
import re
import time

import pytest

from hub_server import Fault, HubServer
from test_hub import EXTRA, FLAGS, csv_repo, edu_repo, fineweb
from test_hub import faults  # noqa: F401 (a fixture: pytest finds it by its name)
from test_pipeline import expected_stream, stream


@pytest.fixture(scope="module")
def hub():
    with HubServer({"me/edu": edu_repo(), "me/csv": csv_repo(), "me/csv3": three_csv_repo(),
                    "me/json": json_repo()}) as server:
        yield server


def test_a_listing_never_answered_ends_within_retry_for(hub, faults, tmp_path):
    faults(Fault("/tree/", "blackhole", times=None))
    result = fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out", tmp_path / "out",
                     *FLAGS, retry_for="3s", timeout=60)
    ended = time.monotonic()
    assert result.returncode == 75, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "still failing after 3s" in last and "ReadTimeout" in last, last
    first_listing = next(r for r in hub.requests if "/tree/" in r[1])
    assert ended - first_listing[4] < 3 + 8  # + a request timeout, and a busy machine's exit


def json_repo():
    """A .json array, read whole (the library's streamed read, with retries of its own)."""
    records = [{"text": f"document {i} " * 20} for i in range(50)]
    return {"README.md": b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                         b"    path: data/*.json\n---\n", "data/a.json": json.dumps(records).encode()}


@pytest.mark.parametrize("repo, fault", [
    ("me/json", Fault("data/a.json", "500", nth=2, times=None)),  # after the format's peek
    ("me/csv", Fault("data/a.csv", "429", times=None))])  # `datasets` reads it: 60 s a 429
def test_no_library_retries_beneath_retry_for(hub, faults, tmp_path, repo, fault):
    faults(fault)
    result = fineweb(hub, tmp_path, "--source", f"hf:{repo}", "--out", tmp_path / "out", *FLAGS,
                     retry_for="3s", timeout=60)
    ended = time.monotonic()
    assert result.returncode == 75, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(rf"still failing after 3s of retries \(.*\b{fault.kind}\b", last), last
    failed = [r for r in hub.requests if fault.path_contains in r[1]][fault.nth - 1:]
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
    assert len(failed) == len(retries) + 1, "each try is one of ours, logged"
    assert ended - failed[0][4] < 3 + 8  # + a request timeout, and a busy machine's exit


def test_the_hubs_rate_limit_header_sets_the_wait(hub, faults, tmp_path):
    faults(Fault("/api/datasets/me/json", "ratelimit"))  # no Retry-After: RateLimit's t=2
    result = fineweb(hub, tmp_path, "--source", "hf:me/json", "--out", tmp_path / "out", *FLAGS)
    assert result.returncode == 0, result.stderr
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
    assert len(retries) == 1 and "429" in retries[0] and \
        retries[0].endswith("next attempt in 2.0 s"), retries


def test_a_name_that_stops_resolving_mid_run_is_an_outage_like_any(hub, faults, tmp_path):
    faults()
    hub.cdn_host = "cdn.invalid"  # the hub answers; the host its parquet files are on never does
    try:
        result = fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out",
                         tmp_path / "out", *FLAGS, retry_for="2s")
    finally:
        hub.cdn_host = "127.0.0.1"
    assert result.returncode == 75, result.stderr
    assert "does not resolve" not in result.stderr, "not a node without DNS: the hub has answered"
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
    assert retries and all("ConnectError" in line for line in retries), retries
    assert "(--retry-for sets how long to keep trying)" in result.stderr.splitlines()[-1]


def test_a_proxy_that_ignores_range_is_named_not_a_damaged_file(hub, faults, tmp_path):
    faults(Fault("/lfs/", "norange", times=None))
    result = fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out", tmp_path / "out",
                     *FLAGS)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: reading hf://") and "000_00000.parquet: asked for bytes " in last
    assert "ignores HTTP Range requests" in last and "damaged" not in result.stderr, last
    assert "retry " not in result.stderr


def three_csv_repo():
    head = b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.csv\n---\n"
    body = csv_repo()["data/a.csv"]
    return {"README.md": head, "data/a.csv": body, "data/b.csv": body, "data/c.csv": body}


def test_a_streamed_dataset_reconnects_where_it_was(hub, faults, tmp_path):
    faults(Fault("data/c.csv", "500"))  # the third file's first read
    result = fineweb(hub, tmp_path, "--source", "hf:me/csv3", "--out", tmp_path / "out", *FLAGS)
    assert result.returncode == 0, result.stderr
    assert "retry 1: streaming hf:me/csv3: HfHubHTTPError: Server error '500" in result.stderr
    reads = [r[1].rsplit("/", 1)[1] for r in hub.requests if r[0] == "GET" and ".csv" in r[1]]
    # from the state of the last document read (the end of b.csv): b.csv again, not a.csv
    assert reads == ["a.csv", "b.csv", "c.csv", "b.csv", "c.csv"], reads
    docs = [d.replace('"', "'") for d in EXTRA]
    assert stream(tmp_path / "out")[0] == expected_stream(docs * 3)
