"""How the pipeline's hub requests are made, whoever makes them (us, `datasets`, fsspec's hf://):
through huggingface_hub's shared HTTP client, configured here once per process, and each
retried on its own through a pipeline.retry.Retry.

- The libraries retry beneath us: huggingface_hub's http_backoff and http_stream_backoff try 5
  more times (~23 s, two warnings each) before we see a failure, and `datasets`' streaming reads
  20 times, up to 60 s apart (20 minutes on a 429). All turned off, since pipeline/retry.py does
  the retrying, within --retry-for and with one line each.
- huggingface_hub's client has no timeout, and repository listings (`list_repo_tree` pages) and
  paths-info pass none: a request accepted and never answered (a firewall, a hung proxy) would
  hang the run for good, out of --retry-for's reach. Every request that has no timeout of its
  own gets HF_HUB_DOWNLOAD_TIMEOUT (10 s by default) to connect and for each read.
- A read timeout only catches silence. A body that keeps trickling in (a few bytes a second, a
  stuck proxy) would hold a read for hours, so every body must arrive at MIN_BYTES_PER_S or more
  over each window of three read timeouts, as curl's --speed-limit/--speed-time; slower is a
  timeout, retried as any.
- `datasets` re-raises a failed hub request as `FileNotFoundError ... from None`, which reads as
  a wrong dataset name: `load_with_retries` asks the hub itself before believing it.
"""

import logging
import time
from urllib.parse import urlparse

import httpx2
from datasets import config as datasets_config
from fsspec.spec import AbstractBufferedFile
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.hf_file_system import HfFileSystemFile
from huggingface_hub.utils import _http, set_client_factory

from pipeline.retry import HubUnreachable, transient_cause

MIN_BYTES_PER_S = 1024


def configure_hub_client():
    """Once per process, before the first hub request; HubUnreachable for settings that would
    make every request fail."""
    if constants.is_offline_mode():
        raise HubUnreachable("HF_HUB_OFFLINE is set, so no hub request is made: unset "
                             "HF_HUB_OFFLINE (and HF_DATASETS_OFFLINE), or pass a local --source")
    if urlparse(constants.ENDPOINT).scheme not in ("http", "https"):
        raise HubUnreachable(f"HF_ENDPOINT={constants.ENDPOINT} has no http:// or https://: "
                             "write it in full, e.g. https://huggingface.co")
    _http.http_backoff.__kwdefaults__["max_retries"] = 0
    _http.http_stream_backoff.__wrapped__.__kwdefaults__["max_retries"] = 0  # a @contextmanager
    datasets_config.STREAMING_READ_MAX_RETRIES = datasets_config.STREAMING_OPEN_MAX_RETRIES = 1  # tries
    datasets_config.STREAMING_READ_RETRY_INTERVAL = datasets_config.STREAMING_OPEN_RETRY_INTERVAL = 0
    datasets_config.STREAMING_READ_SERVER_UNAVAILABLE_RETRY_INTERVAL = 0  # slept after the last try
    datasets_config.STREAMING_READ_RATE_LIMIT_RETRY_INTERVAL = 0
    logging.getLogger(_http.__name__).setLevel(logging.ERROR)
    set_client_factory(bounded_client)


def load_with_retries(what, load, name, subset, revision, retry):
    """load(name, subset, revision=revision), a `datasets` loader, through outages. A failure
    that does not look transient is checked against the hub: the dataset's info and card, asked
    for directly, keep their HTTP status (a 429 is retried, a 404 is the answer); and the chain
    behind `datasets`' error, hidden context included, may show it was a 429 or a reset."""

    def attempt():
        try:
            return load(name, subset, revision=revision)
        except Exception as error:
            if transient_cause(error) is None:
                HfApi().dataset_info(name, revision=revision, timeout=20)
                try:
                    get_hf_file_metadata(hf_hub_url(name, "README.md", repo_type="dataset",
                                                    revision=revision))
                except EntryNotFoundError:  # a dataset without a card is fine
                    pass
                hidden = transient_cause(error, hidden=True)
                if hidden is not None:
                    raise hidden from None  # with its status and Retry-After, for the retry
            raise
    return retry.call(what, attempt)


def bounded_client():
    """huggingface_hub's own client, with a timeout on every request and the slow-body bound on
    every response."""
    client = _http.default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {"request": [*hooks["request"], bound_waits],
                          "response": [*hooks["response"], bound_slow_body]}
    return client


def bound_waits(request):
    """A request hook: runs after the caller's timeout is set (an explicit `timeout=None`
    included), before anything is sent; any wait left unbounded gets HF_HUB_DOWNLOAD_TIMEOUT."""
    waits = request.extensions.get("timeout", {})
    request.extensions = {**request.extensions, "timeout": {
        kind: constants.HF_HUB_DOWNLOAD_TIMEOUT if waits.get(kind) is None else waits[kind]
        for kind in ("connect", "read", "write", "pool")}}


def bound_slow_body(response):
    """A response hook: runs before the body is read, so the body is read through the guard.
    The window is three read timeouts (HF_HUB_DOWNLOAD_TIMEOUT, 10 s by default): longer than
    any pause a read timeout lets through."""
    response.stream = SlowBodyGuard(response.stream, response.request,
                                    window_s=3 * constants.HF_HUB_DOWNLOAD_TIMEOUT)


class SlowBodyGuard(httpx2.SyncByteStream):
    """A response body that raises httpx2.ReadTimeout when fewer than MIN_BYTES_PER_S x window_s
    bytes arrive in a window of window_s seconds."""

    def __init__(self, stream, request, window_s):
        self.stream, self.request, self.window_s = stream, request, window_s

    @property
    def elapsed(self):  # httpx reads the response's elapsed time from its stream
        return getattr(self.stream, "elapsed", None)

    def __iter__(self):
        window_start, received = time.monotonic(), 0
        for chunk in self.stream:
            received += len(chunk)
            now = time.monotonic()
            if now - window_start >= self.window_s:
                if received < MIN_BYTES_PER_S * self.window_s:
                    raise httpx2.ReadTimeout(
                        f"the body arrived at under {MIN_BYTES_PER_S} bytes/s for "
                        f"{self.window_s:g} s (a stalled transfer)", request=self.request)
                window_start, received = now, 0
            yield chunk

    def close(self):
        self.stream.close()


class RetryingHubFile(HfFileSystemFile):
    """A hub file (fsspec's, for pyarrow) whose every ranged request is retried on its own
    through `retry` (a pipeline.retry.Retry): a failure costs that one request, not the reopening
    of the file, and each success resets the backoff."""

    def __init__(self, fs, fs_path, retry, url, **kwargs):
        self.retry, self.url_for_log = retry, url
        super().__init__(fs, fs_path, **kwargs)

    def read(self, length=-1):
        """Every byte through _fetch_range: HfFileSystemFile.read() of a whole file would stream it
        through a file object of its own, with retries of its own, outside `retry`."""
        return AbstractBufferedFile.read(self, length)

    def _fetch_range(self, start, end):
        data = self.retry.call(f"reading {self.url_for_log} (bytes {start}-{end - 1})",
                               super()._fetch_range, start, end)
        if len(data) > end - start:  # a 200 with the whole file: the Range header was dropped
            raise HubUnreachable(
                f"reading {self.url_for_log}: asked for bytes {start}-{end - 1}, got {len(data):,} "
                "bytes: a proxy or server between here and the hub ignores HTTP Range requests, "
                "which reading the hub's files in parts needs; bypass the proxy for the hub "
                "(NO_PROXY), or download the dataset where Range works (`hf download --repo-type "
                "dataset NAME --local-dir DIR`) and pass --source DIR")
        return data
