"""Failures of hub sources, each classified the right way round, against the local hub
(tests/hub_server.py) and the real huggingface_hub and datasets clients in a child process:
transient ones (a rate-limited dataset card) are retried, permanent ones (a damaged file on the
hub, trouble in this machine's set-up) end the run at once with one line and exit status 1, and a
host name that does not resolve says what it means at the first failure.
"""

import io
import ssl
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from hub_server import Fault, HubServer
from test_hub import FLAGS, LINES, SAMPLE, fineweb, lines_repo, ok, parquet_bytes
from test_hub import faults  # noqa: F401 (a fixture: pytest finds it by its name)
from test_pipeline import expected_stream, stream


def damaged_repo():
    """One parquet file whose row group 1 has a page header that no reader can parse."""
    data = bytearray(parquet_bytes(SAMPLE[0]))
    column = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data[start:start + 16] = b"\xff" * 16
    return {"README.md": b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                         b"    path: data/*.parquet\n---\n", "data/a.parquet": bytes(data)}

@pytest.fixture(scope="module")
def hub():
    with HubServer({"me/lines": lines_repo(), "me/damaged": damaged_repo()}) as server:
        yield server


def test_rate_limited_dataset_card_is_retried_not_called_a_wrong_name(hub, faults, tmp_path):
    # datasets HEADs README.md twice, then raises FileNotFoundError "from None", erasing the status:
    # the 429s are found behind it; the 500s, when the hub is asked again directly
    for fault, why in [(Fault("README.md", "429", times=2), "429 Too Many Requests"),
                       (Fault("README.md", "500", times=3), "500 Internal Server Error")]:
        faults(fault)
        home = tmp_path / fault.kind  # and a cache of its own: a cached card would do instead
        out = home / "out"
        result = ok(fineweb(hub, home, "--source", "hf:me/lines", "--out", out, *FLAGS))
        retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
        assert len(retries) == 1 and retries[0].startswith("retry 1: config of me/lines: ") \
            and why in retries[0], result.stderr
        assert stream(out)[0] == expected_stream(LINES)


def test_damaged_parquet_on_the_hub_is_bad_data_naming_file_and_row_group(hub, faults, tmp_path):
    faults()
    started = time.monotonic()
    result = fineweb(hub, tmp_path, "--source", "hf:me/damaged", "--out", tmp_path / "out", *FLAGS,
                     retry_for="5m")
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 60
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: hf://datasets/me/damaged@") and "data/a.parquet: row group 1 " \
        "does not parse, the same way on a fresh read" in last, last
    assert sum(line.startswith("retry ") for line in result.stderr.splitlines()) == 1


@contextmanager
def serving(handler, certificate=None):
    """A server on a free port (over TLS with `certificate`, a PEM file holding the key too)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if certificate:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class RefusingProxy(BaseHTTPRequestHandler):
    """A proxy that wants credentials nobody gave it."""

    def do_CONNECT(self):
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# A throwaway self-signed certificate for 127.0.0.1 (EC P-256, valid until 2126), made with
# `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1`
SELF_SIGNED = """\
-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUZIPMOV4bcaIJ1Cxpo41EWU8JRBIwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTIwMjE3MjkxOVoYDzIxMjYxMTA4
MTcyOTE5WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATbsJy5fb2GtfRxcpr+VTYf2YHQNpBlT8LFL4uKyNes70E+bBFaeF1m
Rex/xAsOMn25g9imDzXrx8hSpU7TsZMTo1MwUTAdBgNVHQ4EFgQUeOQCREaj845T
WzaY9AGnbmnUT8AwHwYDVR0jBBgwFoAUeOQCREaj845TWzaY9AGnbmnUT8AwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAhseHzXhwg1Al5jqQKGsw
q+USDhL8hFg0rx6yW1VU3SICIG+7C2UQfWpQKIpOCgCXW8SpLnL0D+eeiy/I2cYc
3hhi
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKpyLoBlWLu5nNtGg
MH8HQJWiVJIpANGROwHgyrRNNsChRANCAATbsJy5fb2GtfRxcpr+VTYf2YHQNpBl
T8LFL4uKyNes70E+bBFaeF1mRex/xAsOMn25g9imDzXrx8hSpU7TsZMT
-----END PRIVATE KEY-----
"""


# One valid from 2125 on, as every certificate looks to a machine whose clock is a century behind;
# made with `openssl ca -selfsign -startdate 21250101000000Z -enddate 21260101000000Z`
NOT_YET_VALID = """\
-----BEGIN CERTIFICATE-----
MIIBXjCCAQSgAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAkxMjcuMC4w
LjEwIhgPMjEyNTAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAwMFowFDESMBAGA1UE
AwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEXm5stqnzUMgw
uhtjhbAIZxWPiR0fUuoBnyfmDWvdtV2EsqrtDj/6qKy3TdpCyyVE3pF6WlHDWgE/
zehWfQycb6NDMEEwDwYDVR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMB0G
A1UdDgQWBBTpEXNAIuguse+t3CCHAbSoSFs0ZzAKBggqhkjOPQQDAgNIADBFAiEA
1tEAA9iJgkgKG4u3joLWF71dFb5TKxPemsvlIBZPh34CIEpVTE0MktsBkAfM0ZIj
hNadCbSwHBNu7gPAYRu8WheC
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg7HESOASe0B40W3kz
ejVxRiyA8bhl//7pxdlEpIwMHOGhRANCAARebmy2qfNQyDC6G2OFsAhnFY+JHR9S
6gGfJ+YNa921XYSyqu0OP/qorLdN2kLLJUTekXpaUcNaAT/N6FZ9DJxv
-----END PRIVATE KEY-----
"""


def self_signed_certificate(folder):
    (folder / "self_signed.pem").write_text(SELF_SIGNED)
    return folder / "self_signed.pem"


def test_trouble_in_the_set_up_fails_in_one_line_at_once(hub, faults, tmp_path):
    faults()
    args = ["--source", "hf:me/lines", "--out", tmp_path / "out", *FLAGS]
    (tmp_path / "not_yet_valid.pem").write_text(NOT_YET_VALID)
    ca = tmp_path / "ca.pem"  # the certificate alone, trusted: only its dates are wrong
    ca.write_text(NOT_YET_VALID[:NOT_YET_VALID.index("-----BEGIN PRIVATE KEY")])
    with serving(RefusingProxy) as proxy, \
            serving(BaseHTTPRequestHandler, self_signed_certificate(tmp_path)) as tls, \
            serving(BaseHTTPRequestHandler, tmp_path / "not_yet_valid.pem") as future:
        for env, says in [
                ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set, so no hub request is made: "
                                          "unset HF_HUB_OFFLINE"),
                ({"HF_ENDPOINT": hub.url.removeprefix("http://")}, "has no http:// or https://"),
                ({"HF_ENDPOINT": "https://hub.example", "HTTPS_PROXY": f"http://{proxy}"},
                 "the proxy refused the connection (ProxyError: 407"),
                ({"HF_ENDPOINT": f"https://{tls}"}, "TLS certificate is not trusted here "
                                                    "(self-signed certificate): point SSL_CERT_FILE"),
                ({"HF_ENDPOINT": f"https://{future}", "SSL_CERT_FILE": str(ca)},
                 "certificate is not yet valid by this machine's clock (")]:
            started = time.monotonic()
            result = fineweb(hub, tmp_path, *args, retry_for="5m", **env)
            assert result.returncode == 1 and time.monotonic() - started < 30, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_hub_name_that_does_not_resolve_says_so_at_the_first_failure(hub, faults, tmp_path):
    result = fineweb(hub, tmp_path, "--source", "hf:me/lines", "--out", tmp_path / "out", *FLAGS,
                     retry_for="1s", HF_ENDPOINT="http://hub.invalid")
    assert result.returncode == 75, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("note: hub.invalid does not resolve (") and "retrying for 1s" in lines[0]
    assert "a compute node without internet" in lines[0] and "--source DIR" in lines[0]
    assert lines[1].startswith("retry 1: dataset info of me/lines: ConnectError")
