import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.fineweb import main as fineweb
from pipeline.tokenizer import get_gpt2_encoding, load_tokenizer
from shards.format import read_shard
from shards.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
WEBTEXT = ROOT.parent / "shared/data/webtext"
EOT = 50256


def make_docs(n, seed=0):
    """Varied documents: lengths from empty to a few KB, unicode, and special-token look-alikes."""
    rng = np.random.default_rng(seed)
    words = ["the", "data", "école", "naïve", "🙂", "<|endoftext|>", "1234", "\n\n", "  ", "GPT-2",
             "tokens", "shard", "résumé", "'s", "don't", "x"]
    return [" ".join(rng.choice(words, size=int(rng.integers(0, 300)))) for _ in range(n)]


def write_jsonl(path, docs, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, field: doc}) + "\n")
    return path


def expected_stream(docs):
    enc = get_gpt2_encoding()
    return [t for doc in docs for t in [EOT] + enc.encode_ordinary(doc)]


def stream(out):
    """All tokens of a shard folder in manifest order, and the shard files' bytes."""
    manifest = read_manifest(out)
    paths = [out / s["name"] for s in manifest["shards"]]
    return [t for p in paths for t in read_shard(p).tolist()], {p.name: p.read_bytes() for p in paths}


def run(*args):
    """The CLI in-process; returns the error line of a failure or None."""
    try:
        fineweb([str(a) for a in args])
    except SystemExit as e:
        return str(e.code)
    return None


def run_ok(*args):
    error = run(*args)
    assert error is None, error


def test_jsonl_stream_equals_direct_encoding(tmp_path):
    docs = make_docs(300)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    run_ok("--source", src, "--out", tmp_path / "out", "--shard-tokens", 3000, "--workers", 2)
    tokens, files = stream(tmp_path / "out")
    assert tokens == expected_stream(docs)
    manifest = read_manifest(tmp_path / "out")
    sizes = [s["tokens"] for s in manifest["shards"]]
    assert all(n == 3000 for n in sizes[:-1]) and 0 < sizes[-1] <= 3000
    assert manifest["shards"][0]["name"] == "edu_fineweb_val_000000.bin"
    assert manifest["shards"][1]["name"] == "edu_fineweb_train_000001.bin"
    assert manifest["complete"] and manifest["tokenizer"] == "gpt2" and manifest["eot"] == EOT
    # every shard starts where its manifest entry says: a resume can seek there
    enc = get_gpt2_encoding()
    for shard in manifest["shards"]:
        doc_tokens = [EOT] + enc.encode_ordinary(docs[shard["doc_start"]])
        assert read_shard(tmp_path / "out" / shard["name"])[0] == doc_tokens[shard["doc_offset"]]


def test_parquet_folder_stream_and_text_field(tmp_path):
    docs = make_docs(200, seed=1)
    folder = tmp_path / "pq"
    folder.mkdir()
    for i, part in enumerate([docs[:120], docs[120:]]):  # files are read in sorted name order
        table = pa.table({"content": part, "n": list(range(len(part)))})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=50)
    run_ok("--source", folder, "--out", tmp_path / "out", "--shard-tokens", 5000,
           "--text-field", "content", "--workers", 1)
    assert stream(tmp_path / "out")[0] == expected_stream(docs)


def test_json_array_and_gzipped_jsonl(tmp_path):
    import gzip
    docs = make_docs(60, seed=5)
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([{"text": d} for d in docs[:30]], indent=2))
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[30:])
    run_ok("--source", folder, "--out", tmp_path / "out", "--shard-tokens", 2000)
    assert stream(tmp_path / "out")[0] == expected_stream(docs)


@pytest.mark.skipif(not WEBTEXT.exists(), reason="../shared/data/webtext not present")
def test_real_webtext_and_npy_format(tmp_path):
    docs = [json.loads(line)["text"] for f in sorted(WEBTEXT.glob("*.jsonl")) for line in f.open()]
    run_ok("--source", WEBTEXT, "--out", tmp_path / "out", "--shard-tokens", 5000, "--format", "npy")
    tokens, files = stream(tmp_path / "out")
    assert tokens == expected_stream(docs)
    assert all(name.endswith(".npy") for name in files)
    first = np.load(tmp_path / "out/edu_fineweb_val_000000.npy")
    assert first.dtype == np.uint16 and len(first) == 5000


def test_same_bytes_for_one_and_two_workers(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(400, seed=2))
    run_ok("--source", src, "--out", tmp_path / "w1", "--shard-tokens", 2000, "--workers", 1)
    run_ok("--source", src, "--out", tmp_path / "w2", "--shard-tokens", 2000, "--workers", 2)
    assert stream(tmp_path / "w1")[1] == stream(tmp_path / "w2")[1]
    assert read_manifest(tmp_path / "w1")["shards"] == read_manifest(tmp_path / "w2")["shards"]


def test_limits_take_a_prefix_and_a_rerun_extends_it_exactly(tmp_path):
    docs = make_docs(200, seed=3)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    run_ok("--source", src, "--out", out, "--shard-tokens", 1500, "--max-tokens", 4000)
    assert [s["tokens"] for s in read_manifest(out)["shards"]] == [1500, 1500, 1000]
    assert stream(out)[0] == expected_stream(docs)[:4000]
    run_ok("--source", src, "--out", out, "--shard-tokens", 1500, "--max-shards", 5)
    assert stream(out)[0] == expected_stream(docs)[:7500]
    run_ok("--source", src, "--out", tmp_path / "full", "--shard-tokens", 1500)
    full = stream(tmp_path / "full")[1]
    assert stream(out)[1] == {name: full[name] for name in stream(out)[1]}


def test_kill_9_then_rerun_gives_identical_bytes(tmp_path):
    docs = make_docs(3000, seed=4)  # ~1M tokens: 40 shards, so the kill lands mid-run
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.fineweb", "--source", str(src), "--out", str(out),
               "--shard-tokens", "25000", "--workers", "2"]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not (out / "manifest.json").exists() and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, like a node failure
    proc.wait()
    interrupted = read_manifest(out)
    assert not interrupted["complete"], "run finished before the kill; make the test data larger"
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tokens, files = stream(out)
    assert tokens == expected_stream(docs)
    run_ok("--source", src, "--out", tmp_path / "clean", "--shard-tokens", 25000)
    assert files == stream(tmp_path / "clean")[1]
    assert not list(out.glob(".*tmp*"))


def test_char_tokenizer_on_txt_files(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("First Citizen:\nBefore we proceed")
    (folder / "b.txt").write_text("All:\nSpeak, speak.\n")
    out = tmp_path / "out"
    run_ok("--source", folder, "--out", out, "--tokenizer", "char", "--shard-tokens", 20)
    manifest = read_manifest(out)
    assert manifest["tokenizer"] == "char" and manifest["eot"] is None
    tokenizer = load_tokenizer(out)
    text = "First Citizen:\nBefore we proceedAll:\nSpeak, speak.\n"  # one document per .txt file
    assert manifest["vocab_size"] == len(set(text))
    assert tokenizer.decode(stream(out)[0]) == text


def test_rerun_with_different_settings_refuses(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(50))
    out = tmp_path / "out"
    run_ok("--source", src, "--out", out, "--shard-tokens", 1000)
    assert run("--source", src, "--out", out, "--shard-tokens", 1000) is None  # same settings: done
    for args, what in [(["--shard-tokens", 999], "shard_tokens"),
                       (["--shard-tokens", 1000, "--format", "npy"], "format"),
                       (["--shard-tokens", 1000, "--tokenizer", "char"], "tokenizer")]:
        error = run("--source", src, "--out", out, *args)
        assert error and "different settings" in error and what in error
    write_jsonl(src, make_docs(51))
    error = run("--source", src, "--out", out, "--shard-tokens", 1000)
    assert error and "fingerprint" in error


def bad_inputs(tmp_path):
    no_field = write_jsonl(tmp_path / "nofield.jsonl", ["a", "b"], field="body")
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "fine"}\n{"text": broken\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    no_column = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_column)
    # shards get written before the bad line is reached: they must be removed again
    late = tmp_path / "late"
    write_jsonl(late / "a.jsonl", make_docs(100))
    (late / "b.jsonl").write_text('{"text": "ok"}\nnot json\n')
    return [
        ([tmp_path / "missing.jsonl"], "no such file or folder"),
        ([no_field], "no field 'text' (fields: id, body)"),
        ([bad_line], "bad.jsonl:2: bad JSON line"),
        ([empty], "no documents"),
        ([no_column], "no column 'text' (columns: body)"),
        ([late], "b.jsonl:2: bad JSON line"),
        ([tmp_path / "*.csv"], "glob matches no"),
    ]


def test_bad_inputs_fail_cleanly(tmp_path):
    for args, message in bad_inputs(tmp_path):
        out = tmp_path / "out"
        error = run("--source", *args, "--out", out, "--shard-tokens", 500)
        assert error and message in error and "\n" not in error, (args, error)
        assert not out.exists(), f"{args}: left {list(out.iterdir())}"


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for source, message in [(tmp_path / "nope", "no such file or folder"),
                            ("hf:nobody/no-such-dataset", "cannot read dataset")]:
        result = subprocess.run([sys.executable, "-m", "pipeline.fineweb", "--source", str(source),
                                 "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and message in result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()


def test_refuses_foreign_shards_without_manifest(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "edufineweb_train_000001.npy").write_bytes(b"x")
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(5))
    error = run("--source", src, "--out", out)
    assert error and "no manifest.json" in error


# ----------------------------------------------------------------------------------------------
# Slurm job arrays: parts per file, then --pack; the result must be the streaming run's bytes

def split_corpus(tmp_path, files=4):
    docs = [make_docs(80 + 40 * i, seed=10 + i) for i in range(files)]
    for i, part in enumerate(docs):
        write_jsonl(tmp_path / "src" / f"f{i}.jsonl", part)
    return tmp_path / "src", [d for part in docs for d in part]


def test_array_tasks_then_pack_equal_a_streaming_run(tmp_path):
    src, docs = split_corpus(tmp_path)
    run_ok("--source", src, "--out", tmp_path / "stream", "--shard-tokens", 4000)
    out = tmp_path / "array"
    for task in range(3):
        run_ok("--source", src, "--out", out, "--num-tasks", 3, "--task-index", task)
    assert sorted(p.name for p in (out / "parts").glob("part_*.bin")) == [
        f"part_{i:06d}.bin" for i in range(4)]
    (out / "parts/part_000002.bin").unlink()  # a task that never ran: --pack makes its part
    (out / "parts/.part_000002.bin.tmp-node7-123").write_bytes(b"killed mid-write")
    run_ok("--source", src, "--out", out, "--shard-tokens", 4000, "--pack")
    assert stream(out)[1] == stream(tmp_path / "stream")[1]
    assert read_manifest(out)["shards"] == read_manifest(tmp_path / "stream")["shards"]
    assert stream(out)[0] == expected_stream(docs)
    assert not list((out / "parts").glob(".*tmp*"))


def test_pack_resumes_mid_part(tmp_path):
    src, docs = split_corpus(tmp_path, files=2)
    out = tmp_path / "out"
    run_ok("--source", src, "--out", out, "--shard-tokens", 3000, "--max-shards", 3, "--pack")
    run_ok("--source", src, "--out", out, "--shard-tokens", 3000, "--pack")
    assert stream(out)[0] == expected_stream(docs)
    run_ok("--source", src, "--out", tmp_path / "stream", "--shard-tokens", 3000)
    assert read_manifest(out)["shards"] == read_manifest(tmp_path / "stream")["shards"]


def test_array_mode_errors(tmp_path):
    src, _ = split_corpus(tmp_path, files=1)
    out = tmp_path / "out"
    assert "go together" in run("--source", src, "--out", out, "--task-index", 0)
    assert "must be in [0, 2)" in run("--source", src, "--out", out, "--num-tasks", 2, "--task-index", 2)
    assert "needs --tokenizer gpt2" in run("--source", src, "--out", out, "--tokenizer", "char", "--pack")
    run_ok("--source", src, "--out", out, "--num-tasks", 1, "--task-index", 0)
    write_jsonl(src / "f0.jsonl", make_docs(3))  # the source changed under the parts
    (src / "f1.jsonl").write_text('{"text": "ok"}\n{oops\n')
    assert "f1.jsonl:2: bad JSON line" in run("--source", src, "--out", tmp_path / "o2",
                                              "--num-tasks", 1, "--task-index", 0)
    assert sorted(p.name for p in (tmp_path / "o2/parts").iterdir()) == ["part_000000.bin", "parts.json"]
    assert "different fingerprint" in run("--source", src, "--out", out, "--pack")


# ----------------------------------------------------------------------------------------------
# hf: sources, offline: the hub's answers are replaced by local files

@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """hf:me/corpus resolves to commit "c0ffee" whose train split is two local jsonl files."""
    import datasets
    import huggingface_hub
    from types import SimpleNamespace

    src, docs = split_corpus(tmp_path, files=2)
    files = sorted(str(p) for p in src.glob("*.jsonl"))
    calls = []
    load_local = datasets.load_dataset

    def dataset_info(self, name, timeout=None):
        calls.append(name)
        return SimpleNamespace(sha="c0ffee")

    def load_dataset_builder(name, subset, revision):
        assert (name, subset, revision) == ("me/corpus", "sub", "c0ffee")
        return SimpleNamespace(info=SimpleNamespace(splits=None),
                               config=SimpleNamespace(data_files={"train": hub.files}))

    def load_dataset(name, subset, split, streaming, revision):
        return load_local("json", data_files=files, split="train", streaming=True)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = SimpleNamespace(files=files, docs=docs, calls=calls)
    return hub


def test_hub_source_reads_its_files_and_pins_the_revision(tmp_path, fake_hub):
    out = tmp_path / "out"
    run_ok("--source", "hf:me/corpus:sub", "--out", out, "--shard-tokens", 3000, "--max-tokens", 7000)
    manifest = read_manifest(out)
    assert manifest["revision"] == "c0ffee" and "@c0ffee" in manifest["fingerprint"]
    run_ok("--source", "hf:me/corpus:sub", "--out", out, "--shard-tokens", 3000)
    assert fake_hub.calls == ["me/corpus"]  # the resume reused the pinned commit
    assert stream(out)[0] == expected_stream(fake_hub.docs)
    assert "no split 'test'" in run("--source", "hf:me/corpus:sub", "--out", tmp_path / "o2",
                                   "--split", "test")


def test_hub_dataset_in_other_formats_is_streamed_by_datasets(tmp_path, fake_hub):
    fake_hub.files = ["hf://datasets/me/corpus@c0ffee/data.arrow"]  # not a format we read ourselves
    out = tmp_path / "out"
    run_ok("--source", "hf:me/corpus:sub", "--out", out, "--shard-tokens", 3000, "--max-tokens", 7000)
    run_ok("--source", "hf:me/corpus:sub", "--out", out, "--shard-tokens", 3000)  # resume: skip()
    assert stream(out)[0] == expected_stream(fake_hub.docs)
    assert "needs a source made of files" in run("--source", "hf:me/corpus:sub", "--out", out,
                                                 "--pack")
