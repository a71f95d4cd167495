"""pipeline/retry.py: which failures are retried, for how long, and how long it waits between."""

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from pipeline.retry import (RetriesExhausted, Retry, TransientError, is_transient, parse_duration)


def http_error(status, retry_after=None):
    headers = {"Retry-After": retry_after} if retry_after else {}
    request = httpx2.Request("GET", "http://hub/x")
    return HfHubHTTPError(f"{status}", response=httpx2.Response(status, headers=headers, request=request))


class Clock:
    """Sleeps that only move a clock forward, so a 30-minute bound takes no time."""

    def __init__(self, monkeypatch):
        self.now, self.sleeps = 1000.0, []
        monkeypatch.setattr("pipeline.retry.time.monotonic", lambda: self.now)

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors, result="ok"):
    errors = list(errors)

    def call():
        if errors:
            raise errors.pop(0)
        return result
    return call


def test_durations():
    assert [parse_duration(t) for t in ["90", "90s", "10m", "2h", "1h30m"]] == [90, 90, 600, 7200, 5400]
    for bad in ["", "ten minutes", "10x", "m"]:
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_what_is_transient():
    assert all(is_transient(e) for e in [
        http_error(429), http_error(500), http_error(503), http_error(408),
        httpx2.ConnectError("refused"), httpx2.ReadTimeout("slow"), ConnectionResetError(),
        TransientError("corrupt range read")])
    assert not any(is_transient(e) for e in [http_error(404), http_error(401), ValueError("x"),
                                             KeyError("text")])
    try:  # a library that wraps the network error it met: the cause decides
        try:
            raise httpx2.ReadError("reset")
        except httpx2.ReadError as inner:
            raise RuntimeError("could not load the dataset") from inner
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


def test_backoff_grows_with_jitter_honours_retry_after_and_logs_each_retry(monkeypatch):
    clock, lines = Clock(monkeypatch), []
    retry = Retry(600, log=lines.append, sleep=clock.sleep)
    errors = [httpx2.ConnectError("refused")] * 5 + [http_error(429, retry_after="7")]
    assert retry.call("dataset info of me/x", failing(errors)) == "ok"
    assert len(clock.sleeps) == len(lines) == 6
    for attempt, slept in enumerate(clock.sleeps[:5]):
        assert 0.5 * 2 ** attempt <= slept <= 2 ** attempt  # exponential, jittered down to half
    assert clock.sleeps[5] >= 7  # Retry-After
    assert lines[0].startswith("retry 1: dataset info of me/x: ConnectError: refused; next attempt in")


def test_gives_up_after_the_bound_and_a_success_restarts_the_count(monkeypatch):
    clock = Clock(monkeypatch)
    retry = Retry(60, log=lambda line: None, sleep=clock.sleep)
    with pytest.raises(RetriesExhausted, match=r"reading f.parquet: still failing after 1m .*"
                                               r"HfHubHTTPError: 503.*run the same command again"):
        retry.call("reading f.parquet", failing([http_error(503)] * 100))
    assert sum(clock.sleeps) == pytest.approx(60)  # the last attempt is made at the bound
    # up to 31 s of failures (1+2+4+8+16, jittered), a success, as many again: more than the
    # 40 s bound in all, but never in a row
    clock.sleeps.clear()
    items = iter([http_error(500)] * 5 + ["a"] + [http_error(500)] * 5 + ["b"])

    def read(start):
        for item in items:
            if isinstance(item, Exception):
                raise item
            yield item
    retry = Retry(40, log=lambda line: None, sleep=clock.sleep)
    assert list(retry.stream("reading g.parquet", read)) == ["a", "b"]
    assert sum(clock.sleeps) > 31


def test_stream_reopens_at_the_first_unread_item():
    opened = []

    def read(start):  # fails once, after two items, the first time it is opened
        opened.append(start)
        for i in range(start, 6):
            if i == 2 and len(opened) == 1:
                raise httpx2.ReadError("connection reset")
            yield i
    retry = Retry(60, log=lambda line: None, sleep=lambda s: None)
    assert list(retry.stream("reading h.parquet", read, start=0)) == list(range(6))
    assert opened == [0, 2]


def test_bad_input_is_not_retried():
    retry = Retry(60, log=pytest.fail, sleep=pytest.fail)
    with pytest.raises(KeyError):
        retry.call("x", failing([KeyError("text")]))
    with pytest.raises(HfHubHTTPError):
        retry.call("x", failing([http_error(404)]))
