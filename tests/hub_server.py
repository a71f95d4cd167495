"""A local Hugging Face hub for tests: the real `huggingface_hub` and `datasets` clients talk to it
through HF_ENDPOINT, and it fails on demand the way real networks fail.

It answers the requests those clients send (measured, see ENVIRONMENT.md) the way the hub does:
dataset info and revision, tree listings (paginated by a `Link` header), `paths-info`, and
`resolve` with HEAD, ETag, X-Repo-Commit and Range, over HTTP/1.1 keep-alive. Every repository
has one commit, whose sha is derived from its files; a request for any other revision gets the
hub's 404 (`X-Error-Code: RevisionNotFound`). LFS files (parquet) are not served by the hub
itself: `resolve` answers 302 to a second server on another port (the hub's CDN), which serves
the bytes and the ranges, so clients must follow the redirect.

Faults are deterministic: `Fault("00001.parquet", "reset", nth=2)` resets the connection halfway
through the body of the second request whose path contains "00001.parquet"; `times=2, every=3`
makes it the 2nd and 3rd of every 3 such requests, `times=None` every one from the nth on. A
fault that falls due on a request another (earlier) rule already took fires on the next matching
request instead, so none is lost. A redirect is never faulted: the request it leads to is.
Kinds:
- "reset": headers and half of the body, then the connection is closed;
- "corrupt": the whole body, every byte zero (a transfer that went wrong silently);
- "429": Too Many Requests with `Retry-After: 1`;
- "ratelimit": Too Many Requests as the hub's API sends it, with no Retry-After but
  `RateLimit: "api";r=0;t=2` (none left; the window resets in 2 s);
- "500": Internal Server Error;
- "stall": nothing is sent for `stall_s` seconds (clients time out), then the request is dropped;
- "blackhole": the request is read and never answered, the connection held open until the client
  gives up (or the server stops): a firewall or a hung proxy, which only a timeout ends;
- "trickle": headers, then the body a few bytes at a time, too slowly to ever finish (each piece
  arrives well within a read timeout);
- "norange": the whole file with 200 OK, whatever the Range asked for (a proxy that ignores Range);
- "stop": the servers shut down (new connections are refused and open ones closed until
  `start()` is called again, on the same ports) and drop this request.

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
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

LFS_SUFFIXES = (".parquet",)  # stored in LFS, as the hub's default .gitattributes does
TRICKLE_BYTES, TRICKLE_EVERY_S = 16, 0.2


@dataclass
class Fault:
    path_contains: str
    kind: str  # reset | corrupt | 429 | ratelimit | 500 | stall | blackhole | trickle | norange | stop
    nth: int = 1       # the first matching request (counted from 1) that gets the fault
    times: int | None = 1  # that many in a row (None: all from the nth on) ...
    every: int | None = None  # ... repeated every `every` matching requests
    stall_s: float = 3.0

    def due(self, count):
        """Does the `count`th matching request get this fault?"""
        since = count - self.nth
        if since < 0:
            return False
        if self.every:
            since %= self.every
        return self.times is None or since < self.times


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path):
    return path.endswith(LFS_SUFFIXES)


class HubServer:
    def __init__(self, repos, faults=(), port=0, tree_page_size=3):
        self.repos = repos
        self.shas = {name: hashlib.sha1(json.dumps(sorted(
            (path, git_blob_sha1(data)) for path, data in files.items())).encode()).hexdigest()
            for name, files in repos.items()}
        self.tree_page_size = tree_page_size
        self.cdn_host = "127.0.0.1"  # where LFS files are redirected to: a name that may not resolve
        self.faults = list(faults)
        self.requests = []  # (method, path, Range, Authorization, time.monotonic()) of each, in order
        self._lock = threading.Lock()
        self._counts, self._owed = {}, {}
        self._ports = {"hub": port, "cdn": 0}
        self._servers = {}
        self._connections = set()  # open keep-alive connections, closed by stop()
        self.connections_opened = 0
        self._lifetime = threading.Lock()  # a start waits for a stop under way

    def inject(self, *faults):
        """Replace the faults; counting (`nth`), the request log and connection count start again."""
        with self._lock:
            self.faults = list(faults)
            self._counts.clear()
            self._owed.clear()
            self.requests.clear()
            self.connections_opened = 0

    # ------------------------------------------------------------------------------------------
    # lifetime

    def start(self):
        with self._lifetime:
            for role in ("hub", "cdn"):
                if role not in self._servers:
                    handler = type("Handler", (_Handler,), {"hub": self, "role": role})
                    server = _QuietServer(("127.0.0.1", self._ports[role]), handler)
                    self._ports[role] = server.server_address[1]  # a restart reuses the port
                    self._servers[role] = server
                    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                     daemon=True).start()
        return self

    def stop(self):
        with self._lifetime:
            for server in self._servers.values():
                server.shutdown()
                server.server_close()
            self._servers.clear()
            with self._lock:
                connections, self._connections = list(self._connections), set()
            for connection in connections:  # keep-alive: clients would still be answered
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._ports['hub']}"

    @property
    def cdn_url(self):
        return f"http://{self.cdn_host}:{self._ports['cdn']}"

    def client_env(self, home):
        """Environment for a child process whose hub clients must use this server (read when
        they are imported), with caches in `home` and short timeouts so a stalled response fails
        in a second. HF_HUB_OFFLINE / HF_DATASETS_OFFLINE must not be set beside it."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(home / "hf_home"),
                "HF_DATASETS_CACHE": str(home / "hf_datasets"), "HF_HUB_DOWNLOAD_TIMEOUT": "1",
                "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def fault_for(self, path):
        """The fault this request gets: the first rule, in order, that owes one."""
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.path_contains in path:
                    self._counts[index] = self._counts.get(index, 0) + 1
                    if fault.due(self._counts[index]):
                        self._owed[index] = self._owed.get(index, 0) + 1
            for index, fault in enumerate(self.faults):
                if self._owed.get(index) and fault.path_contains in path:
                    self._owed[index] -= 1
                    return fault
        return None

    def track(self, connection, opened):
        with self._lock:
            (self._connections.add if opened else self._connections.discard)(connection)
            self.connections_opened += opened


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a dropped connection is the point of a fault, not news


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    role: str  # "hub", or "cdn": the host LFS files are redirected to
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub
    fault = None

    def setup(self):
        super().setup()
        self.hub.track(self.connection, opened=True)

    def finish(self):
        self.hub.track(self.connection, opened=False)
        super().finish()

    def log_message(self, *args):  # keep pytest's output clean; hub.requests has the record
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def do_POST(self):
        self.answer(head=False)

    def answer(self, head):
        length = int(self.headers.get("Content-Length") or 0)
        self.form = parse_qs(self.rfile.read(length).decode()) if length else {}
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range"),
                                  self.headers.get("Authorization"), time.monotonic()))
        self.fault = None if self.redirected(path) else self.hub.fault_for(path)
        kind = self.fault.kind if self.fault else None
        if kind == "stop":  # down before the client can try again; this connection too
            self.hub.stop()
            self.close_connection = True
            return
        if kind == "stall":
            threading.Event().wait(self.fault.stall_s)
            return self.drop()
        if kind == "blackhole":
            return self.hold()
        if kind in ("429", "500"):
            return self.send_json({"error": "injected"}, status=int(kind),
                                  headers={"Retry-After": "1"} if kind == "429" else {})
        if kind == "ratelimit":
            return self.send_json({"error": "injected"}, status=429, headers={
                "RateLimit": '"api";r=0;t=2', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'})
        if self.role == "cdn":
            return self.cdn(path, head)
        self.route(path, head)

    def redirected(self, path):
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        return self.role == "hub" and m is not None and is_lfs(m.group(2))

    def route(self, path, head):
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self.dataset_info(m.group(1), m.group(2) or "main")
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path):
            return self.tree(m.group(1), m.group(2), m.group(3))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path):
            return self.paths_info(m.group(1), m.group(2))
        if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.resolve(m.group(1), m.group(2), m.group(3), head)
        self.send_json({"error": f"unknown route {path}"}, status=404)

    def repo(self, name, revision):
        """The repository's files at `revision` (its sha or "main"), else the hub's 404, None."""
        if name not in self.hub.repos:
            self.send_json({"error": "Repository not found"}, status=404,
                           headers={"X-Error-Code": "RepoNotFound"})
            return None
        if revision not in ("main", self.hub.shas[name]):
            self.send_json({"error": f"Invalid rev id: {revision}"}, status=404,
                           headers={"X-Error-Code": "RevisionNotFound"})
            return None
        return self.hub.repos[name]

    def dataset_info(self, name, revision):
        files = self.repo(name, revision)
        if files is not None:
            self.send_json({"id": name, "sha": self.hub.shas[name], "private": False,
                            "siblings": [{"rfilename": p} for p in sorted(files)], "cardData": {}})

    @staticmethod
    def entry(path, files):
        """A tree / paths-info entry, as the hub writes it."""
        if path not in files:
            return {"type": "directory", "path": path, "size": 0,
                    "oid": git_blob_sha1(path.encode())}
        data = files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                            "pointerSize": 132}
        return entry

    def tree(self, name, revision, folder):
        """The entries right below `folder` (with recursive=true, every entry below it), a page
        at a time: `Link: <...cursor=N>; rel="next"` points at the next page, as on the hub."""
        files = self.repo(name, revision)
        if files is None:
            return
        query = parse_qs(urlparse(self.path).query)
        recursive = query.get("recursive", [""])[0].lower() == "true"
        folder = folder.strip("/")
        prefix = folder + "/" if folder else ""
        paths = {}
        for path in sorted(files):
            if path.startswith(prefix):
                parts = path[len(prefix):].split("/")
                depths = range(1, len(parts) + 1) if recursive else [1]
                paths.update(dict.fromkeys(prefix + "/".join(parts[:d]) for d in depths))
        if not paths and folder:
            return self.send_json({"error": "Entry not found"}, status=404,
                                  headers={"X-Error-Code": "EntryNotFound"})
        start = int(query.get("cursor", ["0"])[0])
        end = start + self.hub.tree_page_size
        headers = {}
        if end < len(paths):
            next_page = (f"{self.hub.url}/api/datasets/{name}/tree/{revision}/{quote(folder)}"
                         f"?recursive={str(recursive).lower()}&cursor={end}")
            headers["Link"] = f'<{next_page}>; rel="next"'
        self.send_json([self.entry(p, files) for p in list(paths)[start:end]], headers=headers)

    def paths_info(self, name, revision):
        files = self.repo(name, revision)
        if files is not None:  # paths that do not exist are left out, as on the hub
            folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
            wanted = [p.strip("/") for p in self.form.get("paths", [])]
            self.send_json([self.entry(p, files) for p in wanted if p in files or p in folders])

    def resolve(self, name, revision, path, head):
        files = self.repo(name, revision)
        if files is None:
            return
        if path not in files:
            return self.send_json({"error": "Entry not found"}, status=404,
                                  headers={"X-Error-Code": "EntryNotFound"})
        data = files[path]
        headers = {"X-Repo-Commit": self.hub.shas[name], "Accept-Ranges": "bytes"}
        if is_lfs(path):  # to the CDN, which serves the bytes; the size and hash are told here
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"Location": f"{self.hub.cdn_url}/lfs/{sha256}/{name}/{quote(path)}",
                            "ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"',
                            "X-Linked-Size": str(len(data))})
            return self.send_bytes(302, b"", headers, head)
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self.send_range(data, headers, head)

    def cdn(self, path, head):
        m = re.fullmatch(r"/lfs/([0-9a-f]{64})/([^/]+/[^/]+)/(.+)", path)
        data = self.hub.repos.get(m.group(2), {}).get(m.group(3)) if m else None
        if data is None or hashlib.sha256(data).hexdigest() != m.group(1):
            return self.send_bytes(404, b"NoSuchKey", {}, head)
        self.send_range(data, {"ETag": f'"{m.group(1)}"', "Accept-Ranges": "bytes"}, head)

    def send_range(self, data, headers, head):
        status, body = 200, data
        ranged = self.fault is None or self.fault.kind != "norange"
        if ranged and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_bytes(status, body, {"Content-Type": "application/octet-stream", **headers}, head)

    def send_json(self, obj, status=200, headers=None):
        self.send_bytes(status, json.dumps(obj).encode(),
                        {"Content-Type": "application/json", **(headers or {})},
                        head=self.command == "HEAD")

    def send_bytes(self, status, body, headers, head):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.write_body(body)

    def write_body(self, body):
        kind = self.fault.kind if self.fault else None
        if kind == "reset":  # half of it, then the connection breaks
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.drop()
        elif kind == "trickle":  # until the client gives up (or, after minutes, the body ends)
            for i in range(0, len(body), TRICKLE_BYTES):
                self.wfile.write(body[i:i + TRICKLE_BYTES])
                self.wfile.flush()
                time.sleep(TRICKLE_EVERY_S)
        else:
            self.wfile.write(bytes(len(body)) if kind == "corrupt" else body)

    def hold(self):
        """Say nothing until the client closes the connection (or stop() shuts it down)."""
        try:
            while self.connection.recv(4096):
                pass
        except OSError:
            pass
        self.close_connection = True

    def drop(self):
        """Close the connection abruptly (RST, not a clean FIN): a network failure."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
