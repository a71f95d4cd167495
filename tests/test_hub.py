"""hf: sources against a local hub (tests/hub_server.py) that the real huggingface_hub and datasets
clients talk to, fault-free and failing the way real networks fail: the shards must be the bytes
of a fault-free run, and a run that gives up must keep every finished shard and resume.

The CLI runs in a child process: HF_ENDPOINT is read when the hub libraries are imported.
"""

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tqdm import tqdm

from hub_server import Fault, HubServer
from pipeline.retry import FIRST_DELAY_S
from test_pipeline import expected_stream, make_docs, stream
from shards.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = [make_docs(400, seed=20 + i) for i in range(3)]
EXTRA = make_docs(30, seed=30)
LINES = ["first line", "", "  indented <|endoftext|> line", "last line without a break"]

# Like FineWeb-Edu's card: `default` first (datasets picks the builder from the first config),
# then samples; `reversed` lists its patterns out of alphabetical order.
README = b"""---
license: odc-by
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
- config_name: reversed
  data_files:
  - split: train
    path:
    - extra/*
    - sample/10BT/000_*
---
# A FineWeb-Edu look-alike
"""
FLAGS = ["--shard-tokens", "4000", "--workers", "1"]


def parquet_bytes(docs):
    """Uncompressed and in row groups of 100: every row group is a ranged request of its own."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), buffer,
                   row_group_size=100, compression="none")
    return buffer.getvalue()


def edu_repo():
    files = {"README.md": README, "extra/x_00000.parquet": parquet_bytes(EXTRA)}
    for i, docs in enumerate(SAMPLE):
        files[f"sample/10BT/{i:03d}_00000.parquet"] = parquet_bytes(docs)
        files[f"data/CC-MAIN-2024-10/{i:03d}_00000.parquet"] = parquet_bytes(docs)
    return files


def csv_repo():
    rows = "".join(f'{i},"{doc}"\n' for i, doc in enumerate(d.replace('"', "'") for d in EXTRA))
    return {"README.md": b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                         b"    path: data/*.csv\n---\n", "data/a.csv": ("id,text\n" + rows).encode()}


def lines_repo():
    return {"README.md": b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                         b"    path: data/*.txt\n---\n", "data/a.txt": "\n".join(LINES).encode()}


@pytest.fixture(scope="module")
def hub():
    with HubServer({"me/edu": edu_repo(), "me/csv": csv_repo(), "me/lines": lines_repo()}) as server:
        yield server


@pytest.fixture
def faults(hub):
    """Set this test's faults; afterwards none, and the hub running again if a test stopped it."""
    yield hub.inject
    hub.inject()
    hub.start()


def fineweb(hub, home, *args, retry_for="20s", timeout=120, **extra_env):
    """The CLI against `hub`, with no HF_* setting of ours (no HF_TOKEN: the note must show);
    subprocess.TimeoutExpired after `timeout` seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(hub.client_env(home), **extra_env)
    return subprocess.run([sys.executable, "-m", "pipeline.fineweb", *map(str, args),
                           "--retry-for", retry_for], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def clean_run(hub, tmp_path_factory):
    """sample-10BT through the fault-free hub: the bytes every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("clean")
    ok(fineweb(hub, tmp, "--source", "hf:me/edu:sample-10BT", "--out", tmp / "out", *FLAGS))
    return tmp / "out"


def test_hub_source_reads_the_config_files_and_pins_the_revision(hub, faults, clean_run, tmp_path):
    faults()
    assert stream(clean_run)[0] == expected_stream([d for docs in SAMPLE for d in docs])
    manifest = read_manifest(clean_run)
    assert manifest["revision"] == hub.shas["me/edu"] and "@" + manifest["revision"] in manifest["fingerprint"]

    out = tmp_path / "out"
    first = ok(fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out", out, *FLAGS,
                       "--max-tokens", 9000))
    assert first.stderr.count("HF_TOKEN is not set") == 1
    resumed = ok(fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out", out, *FLAGS))
    assert stream(out)[1] == stream(clean_run)[1]
    # the bar: bytes read of the known total (hence an ETA), documents, tokens, shards
    total = tqdm.format_sizeof(sum(len(d) for p, d in edu_repo().items() if p.startswith("sample/")),
                               divisor=1024)
    tokens = sum(s["tokens"] for s in manifest["shards"])
    assert re.search(rf"100%\|.*\| {re.escape(total)}/{re.escape(total)} \[.*B/s, docs=1,200, "
                     rf"shards=\d+, tokens={tokens:,}\]", resumed.stderr), resumed.stderr
    asked_for_the_latest = [r for r in hub.requests if r[:2] == ("GET", "/api/datasets/me/edu")]
    assert len(asked_for_the_latest) == 1, "the resume must read the commit the output started at"

    result = fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out", tmp_path / "o2",
                     "--split", "test")
    assert result.returncode == 1 and "no split 'test'" in result.stderr
    result = fineweb(hub, tmp_path, "--source", "hf:me/missing", "--out", tmp_path / "o3")
    assert result.returncode == 1 and "cannot read dataset 'me/missing'" in result.stderr
    assert "retry" not in result.stderr, "a 404 is bad input, not a network failure"
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_hub_token_note_only_without_a_token(hub, faults, tmp_path):
    faults()
    result = ok(fineweb(hub, tmp_path, "--source", "hf:me/lines", "--out", tmp_path / "out", *FLAGS,
                        HF_TOKEN="hf_test"))
    assert "HF_TOKEN" not in result.stderr
    assert any(r[3] == "Bearer hf_test" for r in hub.requests), "the token is sent"


@pytest.fixture(scope="module")
def reversed_run(hub, tmp_path_factory):
    """The `reversed` config through the fault-free hub: its output, and how long it took."""
    tmp = tmp_path_factory.mktemp("reversed")
    hub.inject()
    started = time.monotonic()
    ok(fineweb(hub, tmp, "--source", "hf:me/edu:reversed", "--out", tmp / "out", *FLAGS))
    return tmp / "out", time.monotonic() - started


def test_hub_file_order_is_the_configs(reversed_run):
    assert stream(reversed_run[0])[0] == expected_stream(EXTRA + SAMPLE[0])


def test_hub_txt_is_a_document_per_line_as_in_datasets(hub, faults, tmp_path):
    import datasets

    faults(Fault("data/a.txt", "reset"))  # a text file's reads are retried request by request too
    result = ok(fineweb(hub, tmp_path, "--source", "hf:me/lines", "--out", tmp_path / "out", *FLAGS))
    assert re.search(r"retry 1: reading hf://datasets/me/lines@\w+/data/a.txt \(bytes 0-\d+\): "
                     "ReadError", result.stderr), result.stderr
    local = tmp_path / "a.txt"
    local.write_bytes(lines_repo()["data/a.txt"])
    rows = datasets.load_dataset("text", data_files=str(local), split="train",
                                 cache_dir=str(tmp_path / "cache"))["text"]
    assert rows == LINES
    assert stream(tmp_path / "out")[0] == expected_stream(rows)


def test_hub_dataset_in_other_formats_is_streamed_by_datasets(hub, faults, tmp_path):
    faults(Fault("data/a.csv", "500"))  # retried by reopening the stream where it stopped
    out = tmp_path / "out"
    first = ok(fineweb(hub, tmp_path, "--source", "hf:me/csv", "--out", out, "--shard-tokens", 3000,
                       "--max-tokens", 7000))
    assert "retry 1: streaming hf:me/csv: HfHubHTTPError: Server error '500" in first.stderr
    ok(fineweb(hub, tmp_path, "--source", "hf:me/csv", "--out", out, "--shard-tokens", 3000))
    assert stream(out)[0] == expected_stream([d.replace('"', "'") for d in EXTRA])


def test_faults_are_retried_and_the_bytes_are_a_clean_runs(hub, faults, clean_run, tmp_path):
    faults(Fault("/api/datasets/me/edu", "500"),                 # dataset info
           Fault("/tree/", "reset", nth=2),                      # a listing
           Fault("sample/10BT/000_00000.parquet", "500", nth=3),  # a row group
           Fault("sample/10BT/001_00000.parquet", "corrupt"),     # its footer
           Fault("sample/10BT/001_00000.parquet", "reset", nth=4),
           Fault("sample/10BT/002_00000.parquet", "429"),        # the footer
           Fault("sample/10BT/002_00000.parquet", "stall", nth=4, stall_s=2.5))
    result = ok(fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out",
                        tmp_path / "out", *FLAGS))
    assert stream(tmp_path / "out")[1] == stream(clean_run)[1]
    assert read_manifest(tmp_path / "out")["shards"] == read_manifest(clean_run)["shards"]
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
    assert len(retries) == 7, result.stderr
    for what, why in [("dataset info of me/edu", "500"), ("config of me/edu", "reset"),
                      ("000_00000.parquet", "500"), ("001_00000.parquet", "unreadable parquet bytes"),
                      ("001_00000.parquet", "reset"),
                      ("002_00000.parquet", "429"), ("002_00000.parquet", "timed out")]:
        assert any(what in line and why in line for line in retries), (what, why, retries)
    assert any("429" in line and "next attempt in 1.0 s" in line for line in retries), "Retry-After"


def test_stopped_server_ends_the_run_keeping_its_shards_then_it_resumes(hub, faults, clean_run,
                                                                        tmp_path):
    # nth=3: the footer is read twice (a request and its LFS redirect) before the first shard
    faults(Fault("sample/10BT/001_00000.parquet", "stop", nth=3))
    out = tmp_path / "out"
    args = ["--source", "hf:me/edu:sample-10BT", "--out", out, *FLAGS]
    result = fineweb(hub, tmp_path, *args, retry_for="3s")
    assert result.returncode == 75, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: reading hf://") and "001_00000.parquet" in last, last
    assert "still failing after 3s" in last and "run the same command again" in last
    kept = read_manifest(out)["shards"]
    assert len(kept) >= 2 and not read_manifest(out)["complete"]
    clean = stream(clean_run)[1]
    assert all((out / s["name"]).read_bytes() == clean[s["name"]] for s in kept)

    hub.start()  # the same port: the hub is back
    ok(fineweb(hub, tmp_path, *args))
    assert stream(out)[1] == clean


def test_array_task_and_pack_survive_a_stopped_server(hub, faults, clean_run, tmp_path):
    out = tmp_path / "out"
    args = ["--source", "hf:me/edu:sample-10BT", "--out", out, *FLAGS]
    faults(Fault("sample/10BT/002_00000.parquet", "stop", nth=3))  # task 0 of 2: files 0 and 2
    result = fineweb(hub, tmp_path, *args, "--num-tasks", 2, "--task-index", 0, retry_for="3s")
    assert result.returncode == 75 and "002_00000.parquet" in result.stderr.splitlines()[-1]
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "part_000000.bin", "part_000000.lengths.npy", "parts.json"]

    hub.start()
    faults()
    assert "1 already done" in ok(fineweb(hub, tmp_path, *args, "--num-tasks", 2,
                                          "--task-index", 0)).stderr
    # task 1 never ran: --pack makes part 1 itself, and the hub stops while it does
    faults(Fault("sample/10BT/001_00000.parquet", "stop", nth=3))  # after its footer's check
    result = fineweb(hub, tmp_path, *args, "--pack", retry_for="3s")
    assert result.returncode == 75, result.stderr
    kept = read_manifest(out)["shards"]
    assert kept and all((out / s["name"]).read_bytes() == stream(clean_run)[1][s["name"]]
                        for s in kept)

    hub.start()
    faults()
    result = ok(fineweb(hub, tmp_path, *args, "--pack"))
    assert stream(out)[1] == stream(clean_run)[1]
    assert read_manifest(out)["shards"] == read_manifest(clean_run)["shards"]
    assert not (out / "parts").exists() and "deleted" in result.stderr


def test_the_test_hub_answers_as_the_hub_does(hub, faults):
    """In this process, through the real client: revisions, pages, paths-info, LFS redirects,
    keep-alive, and faults that never go missing."""
    import httpx2
    from huggingface_hub import HfApi, HfFileSystem
    from huggingface_hub.errors import RevisionNotFoundError

    faults()
    api, sha, repo = HfApi(endpoint=hub.url), hub.shas["me/edu"], edu_repo()
    assert api.dataset_info("me/edu", revision=sha).sha == sha
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("me/edu", revision="0" * 40)

    tree = list(api.list_repo_tree("me/edu", repo_type="dataset", revision=sha, recursive=True))
    assert sorted(e.path for e in tree if type(e).__name__ == "RepoFile") == sorted(repo)
    assert sum("/tree/" in r[1] for r in hub.requests) == -(-len(tree) // hub.tree_page_size)

    parquet = "sample/10BT/001_00000.parquet"
    info = api.get_paths_info("me/edu", ["README.md", "sample/10BT", parquet, "missing.txt"],
                              repo_type="dataset", revision=sha)
    assert [i.path for i in info] == ["README.md", "sample/10BT", parquet]
    assert info[2].lfs.sha256 == hashlib.sha256(repo[parquet]).hexdigest() and info[0].lfs is None

    hub.inject()  # LFS bytes come from the CDN the hub redirects to, ranges and all
    fs = HfFileSystem(endpoint=hub.url, skip_instance_cache=True)
    with fs.open(f"datasets/me/edu@{sha}/{parquet}", "rb", cache_type="none") as f:
        f.seek(1000)
        assert f.read(500) == repo[parquet][1000:1500]
    resolve, cdn = [r for r in hub.requests if r[0] == "GET"][-2:]
    assert resolve[1].endswith(f"/resolve/{sha}/{parquet}") and cdn[1].startswith("/lfs/")
    assert resolve[2] == cdn[2] == "bytes=1000-1499"
    assert hub.connections_opened < len(hub.requests), "keep-alive: connections are reused"

    # two rules due on the first request: the second fires on the next one, not never
    faults(Fault("README.md", "500"), Fault("README.md", "429"))
    url = f"{hub.url}/datasets/me/edu/resolve/main/README.md"
    assert [httpx2.get(url).status_code for _ in range(3)] == [500, 429, 200]


# ----------------------------------------------------------------------------------------------
# A flaky network: progress at the pace of the requests that succeed

def test_most_data_requests_failing_only_slows_the_run_down(hub, faults, reversed_run, tmp_path):
    # two of every three requests for parquet bytes (at the CDN the hub redirects to) fail
    faults(Fault("/lfs/", "reset", every=3), Fault("/lfs/", "500", nth=2, every=3))
    started = time.monotonic()
    result = ok(fineweb(hub, tmp_path, "--source", "hf:me/edu:reversed", "--out", tmp_path / "out",
                        *FLAGS))
    took = time.monotonic() - started
    clean_out, clean_took = reversed_run
    assert stream(tmp_path / "out")[1] == stream(clean_out)[1]
    data = [r for r in hub.requests if r[1].startswith("/lfs/")]
    assert len(data) >= 3 * 7 - 2, "7 ranged reads, each failing twice"
    delays = [float(m) for m in re.findall(r"next attempt in ([\d.]+) s", result.stderr)]
    assert len(delays) >= 2 * 7 - 1 and max(delays) <= 2 * FIRST_DELAY_S, \
        "the backoff starts again whenever bytes arrive"
    assert took < 4 * clean_took + 10, (took, clean_took)  # + 10 s: a busy machine's noise


def test_a_trickle_is_cut_and_retried(hub, faults, clean_run, tmp_path):
    # the second ranged read of the first file (after the three files' footers are checked)
    # sends 80 bytes/s: each piece within the 1 s read timeout, the whole never
    faults(Fault("/lfs/", "trickle", nth=5))
    result = ok(fineweb(hub, tmp_path, "--source", "hf:me/edu:sample-10BT", "--out",
                        tmp_path / "out", *FLAGS))
    assert stream(tmp_path / "out")[1] == stream(clean_run)[1]
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
    assert len(retries) == 1 and "000_00000.parquet" in retries[0] and \
        "ReadTimeout: the body arrived at under 1024 bytes/s for 3 s" in retries[0], result.stderr


def test_a_complete_folder_needs_no_network(hub, faults, clean_run, tmp_path):
    """A rerun, or a requeued array task, on a compute node without internet: done at once."""
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    args = ["--source", "hf:me/edu:sample-10BT", "--out", out, *FLAGS]
    offline = ok(fineweb(hub, tmp_path, *args, HF_HUB_OFFLINE="1"))
    assert "is already complete" in offline.stderr
    hub.stop()
    started = time.monotonic()
    for task in (["--num-tasks", 2, "--task-index", 1], ["--pack"]):
        assert "is already complete" in ok(fineweb(hub, tmp_path, *args, *task)).stderr
    assert time.monotonic() - started < 20, "no retrying of a hub that is not needed"
    assert stream(out)[1] == stream(clean_run)[1]


def test_a_full_hub_cache_is_told_as_a_full_disk(hub, faults, tmp_path):
    home = tmp_path / "hf_home"  # on a 4 KB tmpfs, in a mount namespace of the run's own
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(hub.client_env(tmp_path))
    script = (f"mount -t tmpfs -o size=4k tmpfs {home} && exec {sys.executable} -m pipeline.fineweb "
              f"--source hf:me/edu:sample-10BT --out {tmp_path / 'out'} --retry-for 5s")
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 75, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {home} (HF_HOME, the hub's cache: it may point to any disk with room): no space "
        "left on device (ENOSPC); every finished shard is kept: free some space (or raise the "
        "quota), then run the same command again to resume")
