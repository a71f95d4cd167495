"""A local Hugging Face hub for tests: the real `huggingface_hub` and `datasets` clients talk to it
through HF_ENDPOINT, and it fails on demand the way real networks fail.

It answers the requests those clients send (measured, see ENVIRONMENT.md): dataset info and
revision, tree listings, and `resolve` with HEAD, ETag, X-Repo-Commit and Range. Every repository
has one commit, whose sha is derived from its files.

Faults are deterministic: `Fault("00001.parquet", "reset", nth=2)` resets the connection halfway
through the body of the second request whose path contains "00001.parquet". Kinds:
- "reset": headers and half of the body, then the connection is closed;
- "corrupt": the whole body, every byte zero (a transfer that went wrong silently);
- "429": Too Many Requests with `Retry-After: 1`;
- "500": Internal Server Error;
- "stall": nothing is sent for `stall_s` seconds (clients time out), then the request is dropped;
- "stop": the server shuts down (new connections are refused until `start()` is called again,
  on the same port) and drops this request.

    with HubServer({"me/corpus": {"README.md": b"...", "data/a.parquet": b"..."}}) as hub:
        hub.inject(Fault("a.parquet", "429"))
        env = {**os.environ, **hub.client_env(tmp_path)}   # for a child process, without HF_*
"""

import hashlib
import json
import re
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Fault:
    path_contains: str
    kind: str          # reset | corrupt | 429 | 500 | stall | stop
    nth: int = 1       # the nth matching request (counted from 1) gets the fault
    stall_s: float = 3.0


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self, repos, faults=(), port=0):
        self.repos = repos
        self.shas = {name: hashlib.sha1(json.dumps(sorted(
            (path, git_blob_sha1(data)) for path, data in files.items())).encode()).hexdigest()
            for name, files in repos.items()}
        self.faults = list(faults)
        self.requests = []  # (method, path, Range, Authorization) of every request, in order
        self._lock = threading.Lock()
        self._counts = {}
        self._port = port
        self._server = None
        self._lifetime = threading.Lock()  # a start waits for a stop a fault began

    def inject(self, *faults):
        """Replace the faults; counting (`nth`) and the request log start again."""
        with self._lock:
            self.faults = list(faults)
            self._counts.clear()
            self.requests.clear()

    # ------------------------------------------------------------------------------------------
    # lifetime

    def start(self):
        with self._lifetime:
            if self._server is None:
                handler = type("Handler", (_Handler,), {"hub": self})
                self._server = _QuietServer(("127.0.0.1", self._port), handler)
                self._port = self._server.server_address[1]  # a restart reuses the port
                threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        with self._lifetime:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._port}"

    def client_env(self, home):
        """Environment for a child process whose hub clients must use this server (read when
        they are imported), with caches in `home` and short timeouts so a stalled response fails
        in a second. HF_HUB_OFFLINE / HF_DATASETS_OFFLINE must not be set beside it."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(home / "hf_home"),
                "HF_DATASETS_CACHE": str(home / "hf_datasets"), "HF_HUB_DOWNLOAD_TIMEOUT": "1",
                "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def fault_for(self, path):
        with self._lock:
            for fault in self.faults:
                if fault.path_contains in path:
                    key = id(fault)
                    self._counts[key] = self._counts.get(key, 0) + 1
                    if self._counts[key] == fault.nth:
                        return fault
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a dropped connection is the point of a fault, not news


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    fault = None
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server stops at once

    def log_message(self, *args):  # keep pytest's output clean; hub.requests has the record
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def answer(self, head):
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range"),
                                  self.headers.get("Authorization")))
        fault = self.hub.fault_for(path)
        if fault and fault.kind == "stop":
            threading.Thread(target=self.hub.stop).start()
            self.drop()
            return
        if fault and fault.kind == "stall":
            threading.Event().wait(fault.stall_s)
            self.drop()
            return
        if fault and fault.kind in ("429", "500"):
            status = int(fault.kind)
            self.send_json({"error": "injected"}, status=status,
                           headers={"Retry-After": "1"} if status == 429 else {})
            return
        self.fault = fault
        self.route(path, head)

    def route(self, path, head):
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self.dataset_info(m.group(1))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path):
            recursive = parse_qs(urlparse(self.path).query).get("recursive", [""])[0].lower()
            return self.tree(m.group(1), m.group(3), recursive == "true")
        if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.resolve(m.group(1), m.group(3), head)
        self.send_json({"error": f"unknown route {path}"}, status=404)

    def repo(self, name):
        if name not in self.hub.repos:
            self.send_json({"error": "Repository not found"}, status=404,
                           headers={"X-Error-Code": "RepoNotFound"})
            return None
        return self.hub.repos[name]

    def dataset_info(self, name):
        files = self.repo(name)
        if files is not None:
            self.send_json({"id": name, "sha": self.hub.shas[name], "private": False,
                            "siblings": [{"rfilename": p} for p in sorted(files)], "cardData": {}})

    def tree(self, name, folder, recursive):
        """The entries right below `folder` (with `recursive`, every entry below it)."""
        files = self.repo(name)
        if files is None:
            return
        folder = folder.strip("/")
        prefix = folder + "/" if folder else ""
        entries = {}
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 1)):
                directory = prefix + "/".join(parts[:depth])
                entries.setdefault(directory, {"type": "directory", "path": directory, "size": 0,
                                               "oid": git_blob_sha1(directory.encode())})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "path": path, "size": len(data),
                                 "oid": git_blob_sha1(data)}
            else:
                directory = prefix + parts[0]
                entries.setdefault(directory, {"type": "directory", "path": directory, "size": 0,
                                               "oid": git_blob_sha1(directory.encode())})
        if not entries and folder:
            return self.send_json({"error": "Entry not found"}, status=404,
                                  headers={"X-Error-Code": "EntryNotFound"})
        self.send_json(list(entries.values()))

    def resolve(self, name, path, head):
        files = self.repo(name)
        if files is None:
            return
        if path not in files:
            return self.send_json({"error": "Entry not found"}, status=404,
                                  headers={"X-Error-Code": "EntryNotFound"})
        data = files[path]
        status, body = 200, data
        headers = {"X-Repo-Commit": self.hub.shas[name], "ETag": f'"{git_blob_sha1(data)}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or ""):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.write_body(body)

    def send_json(self, obj, status=200, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.write_body(body)

    def write_body(self, body):
        kind = self.fault.kind if self.fault else None
        if kind == "reset":  # half of it, then the connection breaks
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.drop()
        else:
            self.wfile.write(bytes(len(body)) if kind == "corrupt" else body)

    def drop(self):
        """Close the connection abruptly (RST, not a clean FIN): a network failure."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
