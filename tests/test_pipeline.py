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
from shared_data import SHARED_DIR

ROOT = Path(__file__).resolve().parents[1]
WEBTEXT = SHARED_DIR / "data/webtext"
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


def test_parquet_folder_stream_and_text_field(tmp_path, monkeypatch):
    import pipeline.readers
    monkeypatch.setattr(pipeline.readers, "PARQUET_BATCH_ROWS", 7)  # several batches a row group
    docs = make_docs(200, seed=1)
    folder = tmp_path / "pq"
    folder.mkdir()
    for i, part in enumerate([docs[:120], docs[120:]]):  # files are read in sorted name order
        table = pa.table({"content": part, "n": list(range(len(part)))})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=50)
    args = ["--source", folder, "--out", tmp_path / "out", "--shard-tokens", 5000,
            "--text-field", "content", "--workers", 1]
    run_ok(*args, "--max-tokens", 25000)  # the resume starts batches into a row group
    run_ok(*args)
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
    not_parquet = tmp_path / "bad.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet PAR1")
    latin1 = write_jsonl(tmp_path / "latin1.jsonl", ["naïve text " * 100] * 30)
    data = latin1.read_bytes()  # a Latin-1 byte past the decoder's first block (8 KB)
    at = data.index(b"\n", len(data) * 2 // 3) + 20
    latin1.write_bytes(data[:at] + b"\xe9" + data[at + 1:])
    line = data[:at].count(b"\n") + 1
    latin1_array = tmp_path / "latin1.json"
    latin1_array.write_bytes(b'[{"text": "caf\xe9"}]')
    return [
        ([latin1], f"latin1.jsonl:{line}: not UTF-8 text (invalid continuation byte at byte "
                   f"{at:,} of the file)"),
        ([latin1_array], "latin1.json:1: not UTF-8 text (invalid continuation byte at byte 14 "),
        ([tmp_path / "missing.jsonl"], "no such file or folder"),
        ([no_field], "no field 'text' (fields: id, body)"),
        ([bad_line], "bad.jsonl:2: bad JSON line"),
        ([empty], "no documents"),
        ([no_column], "no column 'text' (columns: body)"),
        ([not_parquet], "bad.parquet: not a readable parquet file"),
        ([tmp_path / "*.csv"], "glob matches no"),
    ]


def test_bad_inputs_fail_cleanly(tmp_path):
    for args, message in bad_inputs(tmp_path):
        out = tmp_path / "out"
        error = run("--source", *args, "--out", out, "--shard-tokens", 500)
        assert error and message in error and "\n" not in error, (args, error)
        assert not out.exists(), f"{args}: left {list(out.iterdir())}"


def test_bad_input_after_finished_shards_keeps_them(tmp_path):
    """Bad input met late (a bad line in the second file) stops the run, but never deletes a
    finished shard: they are good, and a corrected source is another run's business."""
    docs = make_docs(600)  # more than the tokenizer pool reads ahead: shards are finished first
    src = tmp_path / "late"
    write_jsonl(src / "a.jsonl", docs)
    (src / "b.jsonl").write_text('{"text": "ok"}\nnot json\n')
    out = tmp_path / "out"
    error = run("--source", src, "--out", out, "--shard-tokens", 500)
    assert error and "b.jsonl:2: bad JSON line" in error
    kept = read_manifest(out)["shards"]
    assert len(kept) >= 2 and not read_manifest(out)["complete"]
    assert stream(out)[0] == expected_stream(docs)[:sum(s["tokens"] for s in kept)]


def test_damaged_shards_are_rebuilt_on_resume(tmp_path, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(200, seed=6))
    out = tmp_path / "out"
    args = ["--source", src, "--out", out, "--shard-tokens", 2000, "--max-shards", 5]
    run_ok(*args)
    good = stream(out)[1]
    names = [s["name"] for s in read_manifest(out)["shards"]]
    short = out / names[3]
    short.write_bytes(short.read_bytes()[:-2])  # one token short; the header still says 2000
    capsys.readouterr()
    run_ok(*args)
    said = capsys.readouterr().err
    assert f"{names[3]}: header says 2000 tokens (5024 bytes) but the file has 5022 bytes" in said
    assert "rebuilding it and the shard after it" in said
    assert stream(out)[1] == good

    header = out / names[1]
    header.write_bytes(b"\0" * 4 + header.read_bytes()[4:])  # magic gone
    run_ok(*args)
    said = capsys.readouterr().err
    assert f"{names[1]}: not a token shard" in said and "rebuilding it and the 3 shards after it" in said
    assert stream(out)[1] == good


def test_local_txt_with_a_document_separator(tmp_path):
    stories = ["Once upon a time there was a cat.", "Tom had a <red> ball.\n\nIt rolled.", "The end."]
    src = tmp_path / "TinyStories-train.txt"
    src.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n")
    out = tmp_path / "out"
    run_ok("--source", src, "--out", out, "--shard-tokens", 7, "--doc-separator", "<|endoftext|>")
    assert stream(out)[0] == expected_stream(stories)  # separators became EOT tokens, not text
    run_ok("--source", src, "--out", tmp_path / "whole", "--shard-tokens", 7)
    assert stream(tmp_path / "whole")[0] == expected_stream([src.read_text()])  # one document
    error = run("--source", src, "--out", out, "--shard-tokens", 7)
    assert error and "fingerprint" in error  # a different reading of the same file: refused
    for source, message in [("hf:me/stories", "--doc-separator is for local .txt files"),
                            (write_jsonl(tmp_path / "d.jsonl", ["x"]), "splits .txt files; "
                                                                       "--source")]:
        error = run("--source", source, "--out", tmp_path / "o2", "--doc-separator", "<|x|>")
        assert error and message in error


def test_txt_separator_split_across_read_blocks(tmp_path, monkeypatch):
    import pipeline.readers
    monkeypatch.setattr(pipeline.readers, "TXT_BLOCK_CHARS", 5)  # separators straddle blocks
    stories = [f"story number {i} " * (i % 4 + 1) for i in range(30)]
    src = tmp_path / "stories.txt"
    src.write_text("<|endoftext|>".join(stories))
    run_ok("--source", src, "--out", tmp_path / "out", "--shard-tokens", 100,
           "--doc-separator", "<|endoftext|>")
    assert stream(tmp_path / "out")[0] == expected_stream([s.strip() for s in stories])


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for source, message in [(tmp_path / "nope", "no such file or folder"),
                            ("hf:nobody/no-such-dataset", "HF_HUB_OFFLINE is set")]:
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
    lengths = np.load(out / "parts/part_000001.lengths.npy")  # tokens of each document
    assert lengths.tolist() == [len(expected_stream([d])) for d in docs[80:200]]
    (out / "parts/part_000002.lengths.npy").unlink()  # a task killed before it finished the part:
    (out / "parts/.part_000002.bin.tmp-node7-123").write_bytes(b"killed mid-write")  # --pack makes it
    run_ok("--source", src, "--out", out, "--shard-tokens", 4000, "--pack", "--keep-parts")
    assert stream(out)[1] == stream(tmp_path / "stream")[1]
    assert read_manifest(out)["shards"] == read_manifest(tmp_path / "stream")["shards"]
    assert stream(out)[0] == expected_stream(docs)
    assert not list((out / "parts").glob(".*tmp*"))
    assert len(list((out / "parts").glob("part_*.bin"))) == 4  # --keep-parts


def test_pack_resumes_mid_part(tmp_path):
    src, docs = split_corpus(tmp_path, files=2)
    out = tmp_path / "out"
    run_ok("--source", src, "--out", out, "--shard-tokens", 3000, "--max-shards", 3, "--pack")
    assert (out / "parts").is_dir(), "parts of an unfinished pack are still needed"
    run_ok("--source", src, "--out", out, "--shard-tokens", 3000, "--pack")
    assert not (out / "parts").exists(), "packed parts are deleted"
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
    assert sorted(p.name for p in (tmp_path / "o2/parts").iterdir()) == [
        "part_000000.bin", "part_000000.lengths.npy", "parts.json"]
    assert "different fingerprint" in run("--source", src, "--out", out, "--pack")
    latin1 = tmp_path / "latin1.json"  # bad input in a task: one line naming the file too
    latin1.write_bytes(b'[{"text": "caf\xe9"}]')
    assert f"{latin1}:1: not UTF-8 text" in run("--source", latin1, "--out", tmp_path / "o3",
                                                "--num-tasks", 1, "--task-index", 0)
