"""pipeline/retry.py: which failures are retried, for how long, and how long it waits between."""

import socket
import ssl
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from pipeline.retry import (FIRST_DELAY_S, RESOLVE_FOR_S, HubUnreachable, RetriesExhausted, Retry,
                            TransientError, describe, is_transient, parse_duration)


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
        first = FIRST_DELAY_S * 2 ** attempt
        assert 0.5 * first <= slept <= first  # exponential, jittered down to half
    assert clock.sleeps[5] >= 7  # Retry-After
    assert lines[0].startswith("retry 1: dataset info of me/x: ConnectError: refused; next attempt in")


def test_gives_up_after_the_bound_and_a_success_restarts_the_count(monkeypatch):
    clock = Clock(monkeypatch)
    retry = Retry(60, log=lambda line: None, sleep=clock.sleep)
    with pytest.raises(RetriesExhausted, match=r"reading f.parquet: still failing after 1m .*"
                                               r"HfHubHTTPError: 503.*run the same command again"):
        retry.call("reading f.parquet", failing([http_error(503)] * 100))
    assert sum(clock.sleeps) == pytest.approx(60)  # the last attempt is made at the bound
    # runs of 6 failures (FIRST_DELAY_S x 63 s at most, jittered down to half) with a success
    # between them: more than the bound in all, but never in a row
    clock.sleeps.clear()
    bound = FIRST_DELAY_S * 64
    items = iter(([http_error(500)] * 6 + ["a"]) * 3)

    def read(start):
        for item in items:
            if isinstance(item, Exception):
                raise item
            yield item
    retry = Retry(bound, log=lambda line: None, sleep=clock.sleep)
    assert list(retry.stream("reading g.parquet", read)) == ["a"] * 3
    assert sum(clock.sleeps) > bound


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


def test_retry_after_as_an_http_date(monkeypatch):
    clock = Clock(monkeypatch)
    retry = Retry(600, log=lambda line: None, sleep=clock.sleep)
    in_a_minute = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    assert retry.call("x", failing([http_error(503, retry_after=in_a_minute)])) == "ok"
    assert 58 <= clock.sleeps[0] <= 60
    retry.call("x", failing([http_error(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")]))
    assert clock.sleeps[1] <= FIRST_DELAY_S  # a date gone by: the backoff alone


def raised(error, cause):
    """`error` raised from `cause`, as httpx raises its errors from the socket's."""
    try:
        raise error from cause
    except type(error) as e:
        return e


def test_a_name_that_does_not_resolve_has_a_short_budget_and_says_why_at_once(monkeypatch):
    clock, lines = Clock(monkeypatch), []
    request = httpx2.Request("GET", "https://hub.example/api/datasets/me/x")
    unresolved = raised(httpx2.ConnectError("[Errno -2] Name or service not known", request=request),
                        socket.gaierror(-2, "Name or service not known"))
    retry = Retry(1800, log=lines.append, sleep=clock.sleep)
    with pytest.raises(RetriesExhausted, match="still failing after 2m") as exhausted:  # 500s first
        retry.call("dataset info of me/x", failing([http_error(500)] * 3 + [unresolved] * 1000))
    assert "--source DIR" in str(exhausted.value) and "--retry-for" not in str(exhausted.value)
    assert sum(clock.sleeps[3:]) == pytest.approx(RESOLVE_FOR_S) and RESOLVE_FOR_S < 1800
    assert lines[3].startswith("note: hub.example does not resolve") and "--source DIR" in lines[3]
    assert "--retry-for" in lines[3] and lines[4].startswith("retry 4: ")
    assert sum(line.startswith("note:") for line in lines) == 1


def test_trouble_in_the_set_up_is_not_retried():
    from huggingface_hub.errors import OfflineModeIsEnabled

    request = httpx2.Request("GET", "https://hub.example/x")
    certificate = ssl.SSLCertVerificationError(1, "certificate verify failed")
    certificate.verify_message = "self-signed certificate"
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_message = "certificate has expired"
    for error, says in [
            (OfflineModeIsEnabled("offline mode is enabled"), "unset HF_HUB_OFFLINE"),
            (httpx2.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' "
                                        "protocol.", request=request), "HF_ENDPOINT="),
            (httpx2.ProxyError("407 Proxy Authentication Required", request=request), "HTTPS_PROXY"),
            (raised(httpx2.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=request),
                    certificate), "SSL_CERT_FILE"),
            (raised(httpx2.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=request),
                    expired), "certificate has expired by this machine's clock .*set the clock")]:
        retry = Retry(600, log=pytest.fail, sleep=pytest.fail)
        with pytest.raises(HubUnreachable, match=f"^dataset info of me/x: .*{says}"):
            retry.call("dataset info of me/x", failing([error]))
        assert not is_transient(error)


def test_a_long_message_is_cut_between_words():
    text = "Cannot reach https://hub.example/api/datasets/x: offline mode is enabled. " * 3
    described = describe(OSError(text))
    assert described.endswith(" ...") and len(described) < len(text)
    words = described.removeprefix("OSError: ").removesuffix(" ...").split(" ")
    assert words == text.split(" ")[:len(words)]  # whole words only


def test_once_the_hub_has_answered_a_name_that_does_not_resolve_gets_retry_for(monkeypatch):
    clock, lines = Clock(monkeypatch), []
    request = httpx2.Request("GET", "https://cdn.example/x.parquet")
    unresolved = raised(httpx2.ConnectError("[Errno -3] Temporary failure in name resolution",
                                            request=request), socket.gaierror(-3, "Temporary failure"))
    retry = Retry(1800, log=lines.append, sleep=clock.sleep)
    assert retry.call("dataset info of me/x", failing([])) == "ok"  # hours of answers, then DNS fails
    with pytest.raises(RetriesExhausted, match="still failing after 30m .*--retry-for sets"):
        retry.call("reading x.parquet", failing([unresolved] * 10000))
    assert sum(clock.sleeps) == pytest.approx(1800)
    assert not any(line.startswith("note:") for line in lines), "not a machine without DNS"
