"""Retrying hub requests through outages: bounded in time, exponential backoff with jitter,
`Retry-After` and the hub's `RateLimit` header honoured, one log line per retry.

huggingface_hub retries a failed request itself, 5 times over ~23 s, and then gives up; an
hours-long download meets longer outages than that. So every hub request the pipeline makes goes
through a `Retry`, which keeps trying for as long as the user allows (`--retry-for`, counted
from the first failure of a run of failures; any success starts the count again) and then raises
`RetriesExhausted`: the CLI exits with EXIT_RETRIES_EXHAUSTED, every finished shard kept, and the
same command resumes. The library's own retries are turned off (pipeline/hub_client.py) so the
bound means what it says.

Only transient failures are retried: network errors, timeouts, HTTP 408/429/5xx, and
`TransientError` (a hub file whose bytes did not parse: a truncated or corrupt range read, until
the same part fails the same way on a fresh read, pipeline/readers.py). A host name that does not
resolve before any request has succeeded is retried for a few minutes only (RESOLVE_FOR_S): on a
compute node without internet it never will; once the hub has answered, DNS is just another
outage, retried for --retry-for. Trouble in this machine's set-up (offline mode, an endpoint
without a scheme, a proxy that refuses, a TLS certificate not trusted, a clock so wrong that
certificates look expired or not yet valid) raises `HubUnreachable` at once, with what to change.
Anything else (404, a bad record) is raised as is.
"""

import random
import re
import socket
import ssl
import sys
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

DEFAULT_RETRY_FOR = "30m"
EXIT_RETRIES_EXHAUSTED = 75  # EX_TEMPFAIL (sysexits.h): try again later; bad input exits 1
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
FIRST_DELAY_S = 0.25  # then 0.5, 1, 2, ...: a lone reset costs little, an outage backs off
MAX_DELAY_S = 60.0
RESOLVE_FOR_S = 120  # a host name that does not resolve: a DNS hiccup passes in this time
DESCRIBE_CHARS = 200


class TransientError(Exception):
    """A failure that is worth retrying although it is not a network error itself."""


class RetriesExhausted(Exception):
    """The hub kept failing for longer than --retry-for."""


class HubUnreachable(RuntimeError):
    """Retrying cannot help: this machine's set-up keeps it from the hub. The message says what
    to change. (A RuntimeError: the CLI reports it as one line and exits 1.)"""


def parse_duration(text):
    """Seconds in "90", "90s", "10m", "2h", "1h30m"; for argparse."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or not parts:
        raise ValueError(f"not a duration: {text!r} (examples: 30m, 2h, 90s)")
    hours, minutes, seconds = (int(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds):
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def http_status(error):
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def retry_after_s(error):
    """The server's Retry-After in seconds (delay-seconds, or an HTTP-date), else the time until
    the hub's rate limit window resets (`RateLimit: "api";r=0;t=N`, none left), else None."""
    from huggingface_hub.utils import parse_ratelimit_headers

    response = getattr(error, "response", None)
    value = (response.headers.get("Retry-After") or "").strip() if response is not None else ""
    if value.isdigit():
        return float(value)
    limit = parse_ratelimit_headers(response.headers) if response is not None and not value else None
    if limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds)
    try:
        when = parsedate_to_datetime(value)  # "Wed, 21 Oct 2026 07:28:00 GMT"
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def causes(error, hidden=False):
    """`error` and the errors behind it: its cause, else its context. `raise X from None` hides
    the context on purpose (X is then the whole story) unless `hidden`: `datasets` raises a failed
    hub request as FileNotFoundError ... from None, and only the hidden context says it was a 429."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        hide = error.__suppress_context__ and not hidden
        error = error.__cause__ or (None if hide else error.__context__)


def transient_cause(error, hidden=False):
    """The failure behind `error` that says nothing about the input (retry it), else None. Looks
    through the chain of causes, since `datasets` and pyarrow wrap the network error they met;
    the first HTTP status found, however deep, decides."""
    import httpx2

    chain = list(causes(error, hidden))
    answered = [cause for cause in chain if http_status(cause) is not None]
    if answered:  # behind `datasets`' ConnectionError("Server Disconnected"), say, a 429
        return answered[0] if http_status(answered[0]) in TRANSIENT_STATUS else None
    return next((cause for cause in chain if isinstance(
        cause, (TransientError, httpx2.TransportError, ConnectionError, TimeoutError))), None)


def is_transient(error):
    return transient_cause(error) is not None and setup_problem(error) is None


def setup_problem(error):
    """What in this machine's set-up keeps it from the hub, as a line saying what to change;
    None if nothing is known to. Retrying any of these only repeats it."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    for cause in causes(error, hidden=True):
        if isinstance(cause, OfflineModeIsEnabled):
            return ("HF_HUB_OFFLINE is set, so no hub request is made: unset HF_HUB_OFFLINE (and "
                    "HF_DATASETS_OFFLINE), or pass a local --source")
        if isinstance(cause, httpx2.UnsupportedProtocol):
            return (f"HF_ENDPOINT={constants.ENDPOINT} is not a URL the client can use "
                    f"({describe(cause)}): write it with its scheme, e.g. https://HOST")
        if isinstance(cause, httpx2.ProxyError) and not str(cause).startswith(
                tuple(map(str, TRANSIENT_STATUS))):  # "503 Service Unavailable" passes
            return (f"the proxy refused the connection ({describe(cause)}): check HTTPS_PROXY, "
                    "HTTP_PROXY and NO_PROXY (and the proxy's credentials)")
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message in (
                "certificate is not yet valid", "certificate has expired"):
            now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            return (f"the hub's TLS {cause.verify_message} by this machine's clock ({now}): "
                    "check the date (`date -u`) and set the clock right (NTP: chronyd, "
                    "systemd-timesyncd); a clock set wrong makes every certificate look so")
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"the hub's TLS certificate is not trusted here ({cause.verify_message}): "
                    "point SSL_CERT_FILE at your CA bundle (a proxy that inspects TLS needs "
                    "its certificate there)")
    return None


def resolution_failure(error):
    """The host name did not resolve (no DNS, no internet): the socket.gaierror behind it."""
    return next((c for c in causes(error, hidden=True) if isinstance(c, socket.gaierror)), None)


def host_of(error):
    try:
        return error.request.url.host
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when no request is set
        return "the hub"


def describe(error):
    """`Type: first line`, cut at a word near DESCRIBE_CHARS, never mid-word."""
    text = "".join(c if c.isprintable() else "?" for c in (str(error).strip().splitlines() or [""])[0])
    if len(text) > DESCRIBE_CHARS:
        text = text[:DESCRIBE_CHARS].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def log(message):
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


class Retry:
    """One run's retrying: `call` for a request, `stream` for a file read item by item. The
    clock of --retry-for is shared, so it measures the outage, not any one request."""

    def __init__(self, retry_for_s, log=log, sleep=time.sleep):
        self.retry_for_s = retry_for_s
        self.log, self.sleep = log, sleep
        self.failing_since = None  # start of the current run of failures
        self.unresolved_since = None  # its first failure to resolve the hub's name
        self.answered = False  # has any request succeeded (so DNS works here)?
        self.attempt = 0

    def call(self, what, function, *args, **kwargs):
        """function(*args, **kwargs), retried through transient failures."""
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                self.wait_or_raise(what, error)
            else:
                self.succeeded()
                return result

    def stream(self, what, read, start=0):
        """The items of read(start), reopened at the first unread item after a transient failure
        (read(n) must yield the items from number n on): nothing is skipped or repeated."""
        done = start
        while True:
            try:
                for item in read(done):
                    self.succeeded()
                    yield item
                    done += 1
                return
            except Exception as error:
                self.wait_or_raise(what, error)

    def succeeded(self):
        self.failing_since, self.unresolved_since, self.attempt = None, None, 0
        self.answered = True

    def wait_or_raise(self, what, error):
        """Sleep before the next attempt, or raise: HubUnreachable for trouble in the set-up,
        `error` itself if it is not transient, RetriesExhausted once the failures have lasted
        --retry-for (or RESOLVE_FOR_S, for a host name that never resolved)."""
        problem = setup_problem(error)
        if problem:
            raise HubUnreachable(f"{what}: {problem}") from None
        if not is_transient(error):
            raise error
        if http_status(transient_cause(error)) is not None:
            error = transient_cause(error)  # the server's answer, with its status and headers
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        bound, since = self.retry_for_s, self.failing_since
        never_resolved = False
        if resolution_failure(error) and not self.answered:  # RESOLVE_FOR_S from the first
            if self.unresolved_since is None:
                self.unresolved_since = now
                self.log(self.resolution_advice(error, min(bound, RESOLVE_FOR_S)))
            if RESOLVE_FOR_S - (now - self.unresolved_since) < bound - (now - since):
                bound, since, never_resolved = RESOLVE_FOR_S, self.unresolved_since, True
        left = bound - (now - since)
        if left < 1e-3:  # at the bound, give or take the rounding of a sum of sleeps
            what_next = ("the hub's name never resolved here (see the note above): run where "
                         "it does, or pass a local --source DIR" if never_resolved else
                         "every finished shard is kept: run the same command again to resume "
                         "(--retry-for sets how long to keep trying)")
            raise RetriesExhausted(f"{what}: still failing after {format_duration(bound)} of "
                                   f"retries ({describe(error)}); {what_next}") from None
        backoff = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** self.attempt) * random.uniform(0.5, 1.0)
        delay = min(max(backoff, retry_after_s(error) or 0), left)  # the last try at the bound
        self.attempt += 1
        self.log(f"retry {self.attempt}: {what}: {describe(error)}; next attempt in {delay:.1f} s")
        self.sleep(delay)

    def resolution_advice(self, error, bound):
        return (f"note: {host_of(error)} does not resolve ({resolution_failure(error)}): this "
                "machine cannot look up the hub's address, and a compute node without internet "
                f"access never will; retrying for {format_duration(bound)} only, in case DNS is "
                "down for a moment (--retry-for shortens it). To stop waiting, download the "
                "dataset where there is internet (`hf download --repo-type dataset NAME "
                "--local-dir DIR`) and pass --source DIR")
