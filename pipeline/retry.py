"""Retrying hub requests through outages: bounded in time, exponential backoff with jitter,
`Retry-After` honoured, one log line per retry.

huggingface_hub retries a failed request itself, 5 times over ~23 s, and then gives up; an
hours-long download meets longer outages than that. So every hub request the pipeline makes goes
through a `Retry`, which keeps trying for as long as the user allows (`--retry-for`, counted
from the first failure of a run of failures; any success starts the count again) and then raises
`RetriesExhausted`: the CLI exits with EXIT_RETRIES_EXHAUSTED, every finished shard kept, and the
same command resumes. The library's own retries are turned off so the bound means what it says.

Only transient failures are retried: network errors, timeouts, HTTP 408/429/5xx, and
`TransientError` (a hub file whose bytes did not parse: a truncated or corrupt range read, since
the hub serves files that parsed when uploaded). Anything else (404, a bad record) is raised as is.
"""

import random
import re
import sys
import time

DEFAULT_RETRY_FOR = "30m"
EXIT_RETRIES_EXHAUSTED = 75  # EX_TEMPFAIL (sysexits.h): try again later; bad input exits 1
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0


class TransientError(Exception):
    """A failure that is worth retrying although it is not a network error itself."""


class RetriesExhausted(Exception):
    """The hub kept failing for longer than --retry-for."""


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
    """The server's Retry-After in seconds (the delay-seconds form), else None."""
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    return float(value) if value and value.strip().isdigit() else None


def is_transient(error):
    """True for failures that say nothing about the input: retry them. Looks through the chain
    of causes, since `datasets` and pyarrow wrap the network error they met."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OfflineModeIsEnabled):  # a ConnectionError, but the user's choice
            return False
        status = http_status(error)
        if status is not None:
            return status in TRANSIENT_STATUS
        if isinstance(error, (TransientError, httpx2.TransportError, ConnectionError, TimeoutError)):
            return True
        # `raise X from None` hides the context on purpose: X is the whole story then
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return False


def describe(error):
    first_line = (str(error).strip().splitlines() or [""])[0][:160]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def log(message):
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def quiet_library_retries():
    """huggingface_hub's http_backoff tries 5 more times (~23 s, two warnings each) before we see a
    failure; our loop does the retrying, within --retry-for and with one line each."""
    import logging

    from huggingface_hub.utils import _http

    _http.http_backoff.__kwdefaults__["max_retries"] = 0
    logging.getLogger(_http.__name__).setLevel(logging.ERROR)


class Retry:
    """One run's retrying: `call` for a request, `stream` for a file read item by item. The
    clock of --retry-for is shared, so it measures the outage, not any one request."""

    def __init__(self, retry_for_s, log=log, sleep=time.sleep):
        self.retry_for_s = retry_for_s
        self.log, self.sleep = log, sleep
        self.failing_since = None  # start of the current run of failures
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
        self.failing_since, self.attempt = None, 0

    def wait_or_raise(self, what, error):
        """Sleep before the next attempt, or raise: `error` itself if it is not transient,
        RetriesExhausted once the failures have lasted --retry-for."""
        if not is_transient(error):
            raise error
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        left = self.retry_for_s - (now - self.failing_since)
        if left <= 0:
            raise RetriesExhausted(
                f"{what}: still failing after {format_duration(self.retry_for_s)} of retries "
                f"({describe(error)}); every finished shard is kept: run the same command again "
                "to resume (--retry-for sets how long to keep trying)") from None
        backoff = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** self.attempt) * random.uniform(0.5, 1.0)
        delay = min(max(backoff, retry_after_s(error) or 0), left)  # the last try at the bound
        self.attempt += 1
        self.log(f"retry {self.attempt}: {what}: {describe(error)}; next attempt in {delay:.1f} s")
        self.sleep(delay)
