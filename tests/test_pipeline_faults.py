"""The pipeline in the field: a dead tokenizer worker, a kill at every step of writing, two writers
on one folder, array tasks racing a dataset commit, a rerun of a finished folder. Each ends in one
clear line or in the bytes of an uninterrupted run, never a hang, a traceback or a lost shard.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.inputs
from pipeline.lock import LOCK, FolderLock
from shards.manifest import read_manifest
from test_pipeline import ROOT, expected_stream, make_docs, run, run_ok, split_corpus, stream, write_jsonl

CLI = [sys.executable, "-m", "pipeline.fineweb"]


def children(pid):
    """Process ids whose parent is `pid` (the tokenizer workers of a run)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_dead_worker_stops_the_run_in_one_line_and_the_same_command_continues(tmp_path):
    docs = make_docs(3000, seed=4)  # ~1M tokens, 40 shards: the kill lands mid-run
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    args = ["--source", src, "--out", out, "--shard-tokens", 25000, "--workers", 2]
    proc = subprocess.Popen([*CLI, *map(str, args)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (
                (out / "manifest.json").exists() and read_manifest(out)["shards"]):
            time.sleep(0.01)
        os.kill(children(proc.pid)[0], signal.SIGKILL)  # as the kernel's OOM killer does
        killed = time.time()
        _, err = proc.communicate(timeout=30)  # before the fix: no progress and no exit, ever
    finally:
        proc.kill()
    assert time.time() - killed < 10
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"error: tokenizer worker [12] of 2 \(pid \d+\) was killed by SIGKILL: likely "
                        r"the kernel's OOM killer \(out of memory\); .* fewer --workers \(now 2\).*",
                        last), last
    kept = read_manifest(out)["shards"]
    assert kept and not read_manifest(out)["complete"]
    run_ok(*args)
    assert stream(out)[0] == expected_stream(docs)
    assert read_manifest(out)["shards"][:len(kept)] == kept


@pytest.mark.parametrize("step", ["started", "shard-renamed", "manifest", "shard-renamed:3",
                                  "manifest:3", "finish"])
def test_killed_at_any_step_the_same_command_continues(tmp_path, step):
    """kill -9 (or a Slurm requeue's SIGTERM) at each step of writing the first and a later shard."""
    docs = make_docs(120, seed=7)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    args = ["--source", src, "--out", out, "--shard-tokens", 2000, "--workers", 1]
    killed = subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PIPELINE_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    listed = read_manifest(out)["shards"]
    if step.startswith("shard-renamed"):  # the shard is in place, the manifest does not list it
        assert len(list(out.glob("*.bin"))) == len(listed) + 1
    run_ok(*args)
    tokens, files = stream(out)
    assert tokens == expected_stream(docs)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "manifest.json"])


def test_one_writer_per_folder(tmp_path):
    src, docs = split_corpus(tmp_path, files=2)
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--source", src, "--out", out, "--shard-tokens", 3000]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.lock import "
                               "FolderLock\nwith FolderLock(sys.argv[1], 'a pipeline run'):\n"
                               " print('held', flush=True); time.sleep(60)", out / LOCK],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        theirs = out / ".edu_fineweb_val_000000.bin.tmp-node7-1"  # its shard being written
        theirs.write_bytes(b"not ours to delete")
        host = os.uname().nodename
        for extra in ([], ["--pack"], ["--num-tasks", 2, "--task-index", 0]):
            error = run(*flags, *extra)
            assert error and re.fullmatch(
                rf"error: {out} is in use by a pipeline run \(host {host}, pid {holder.pid}, since "
                r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to end, or stop it, then run "
                r"this command again", error), error
        assert theirs.read_bytes() == b"not ours to delete"
    finally:
        holder.kill()
        holder.wait()
    theirs.unlink()

    # array tasks share the folder; a --pack waits for all of them; a duplicate task is refused
    with FolderLock(out / LOCK, "array task 1 of 2", shared=True):
        run_ok(*flags, "--num-tasks", 2, "--task-index", 0)
        error = run(*flags, "--pack")
        assert error and "is in use by array task 1 of 2 (host" in error
    with FolderLock(out / "parts/.part_000001.lock", "array task 1 of 2"):
        error = run(*flags, "--num-tasks", 2, "--task-index", 1)
        assert error and f"part {out}/parts/part_000001.bin is in use by array task 1 of 2" in error
    run_ok(*flags, "--num-tasks", 2, "--task-index", 1)
    run_ok(*flags, "--pack")
    assert stream(out)[0] == expected_stream(docs)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".bin")) == ["manifest.json"]


def test_array_tasks_racing_a_dataset_commit_read_one_revision(tmp_path, monkeypatch):
    """Task B reads the dataset's latest commit (rev1); a commit lands (rev2); task A starts, reads
    rev2 and records its pin first. B must read rev2 too, not mix revisions or fail."""
    src, docs = split_corpus(tmp_path, files=2)
    out = tmp_path / "out"
    flags = ["--source", "hf:me/growing", "--out", out, "--shard-tokens", 3000]
    real_open = pipeline.inputs.open_source
    latest, opened = ["rev1"], []

    def open_hub(spec, text_field, split, revision=None, **_):
        """The local files as a hub dataset; B's first request lets task A run in between."""
        source = real_open(str(src), text_field)
        source.revision = revision or latest[0]
        source.spec, source.fingerprint = spec, f"hf:me/growing@{source.revision}"
        opened.append(source.revision)
        if len(opened) == 1:  # task B has its revision; now the commit, and task A
            latest[0] = "rev2"
            run_ok(*flags, "--num-tasks", 2, "--task-index", 0)
        return source

    monkeypatch.setattr(pipeline.inputs, "open_source", open_hub)
    run_ok(*flags, "--num-tasks", 2, "--task-index", 1)
    assert opened == ["rev1", "rev2", "rev2"]  # B, A, then B again at A's pin
    assert json.loads((out / "parts/parts.json").read_text())["revision"] == "rev2"
    run_ok(*flags, "--pack")
    assert read_manifest(out)["revision"] == "rev2" and opened[-1] == "rev2"
    assert stream(out)[0] == expected_stream(docs)


def test_a_complete_folder_says_so_and_does_nothing(tmp_path, capsys):
    src, docs = split_corpus(tmp_path, files=2)
    out = tmp_path / "out"
    flags = ["--source", src, "--out", out, "--shard-tokens", 3000]
    run_ok(*flags, "--num-tasks", 1, "--task-index", 0)
    killed = subprocess.run([*CLI, *map(str, flags), "--pack"], cwd=ROOT, capture_output=True,
                            env={**os.environ, "PIPELINE_KILL_AT": "pack-done"})
    assert killed.returncode == -signal.SIGKILL and (out / "parts").exists()
    packed = stream(out)[1]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    run_ok(*flags, "--pack")  # finishes the killed pack's last step: deleting the parts
    assert "is already complete" in capsys.readouterr().err and not (out / "parts").exists()
    for again in (["--pack"], ["--num-tasks", 1, "--task-index", 0], []):
        run_ok(*flags, *again)
        assert "is already complete" in capsys.readouterr().err
        assert not (out / "parts").exists()
    assert stream(out)[1] == packed and stream(out)[0] == expected_stream(docs)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == {  # and the killed run's lock
        k: v for k, v in mtimes.items() if k != "parts" and not k.startswith(LOCK)}  # is swept


def test_progress_bar_and_summary_agree_and_a_big_whole_txt_is_announced(tmp_path, capsys,
                                                                         monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(100, seed=8))
    run_ok("--source", src, "--out", tmp_path / "out", "--shard-tokens", 2000)
    err = capsys.readouterr().err
    shards = len(read_manifest(tmp_path / "out")["shards"])
    assert f"wrote {shards} shards" in err and re.findall(r"shards=(\d+)", err)[-1] == str(shards)

    monkeypatch.setattr(pipeline.inputs, "WHOLE_DOCUMENT_WARNING_BYTES", 1000)
    book = tmp_path / "book.txt"
    book.write_text("All the world's a stage. " * 100)
    run_ok("--source", book, "--out", tmp_path / "book", "--tokenizer", "char")
    err = capsys.readouterr().err
    warning = (f"warning: {book} (0 MB) is read as ONE document, held whole in memory; if it "
               "holds many, pass --doc-separator TEXT (TinyStories: '<|endoftext|>')")
    assert warning in err.splitlines() and err.index(warning) < err.index("char tokenizer: reading")
    run_ok("--source", book, "--out", tmp_path / "split", "--doc-separator", ".")
    assert "ONE document" not in capsys.readouterr().err
