"""The output side on a shared cluster: a folder shared by a group, a full or read-only disk, a
folder the user made, a rerun on a node without network. Each ends in one clear line (with exit
75 where freeing space and running again is the cure) or in the bytes of an uninterrupted run.
"""

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.lock
import pipeline.make_shards
import pipeline.pool
from pipeline.lock import LOCK, FolderLock
from test_pipeline import ROOT, expected_stream, make_docs, run, stream, write_jsonl

NOBODY = 65534  # uid and gid of Debian's nobody/nogroup


def run_as_another_user(cwd, *args):
    """The CLI in a forked child, in folder `cwd`, as user nobody when we are root (a fork, not a
    new interpreter: this one lives in /root, which nobody cannot read; so this process must have
    run the CLI once already, for its lazy imports). Not root, the test makes the files of "the
    other user" read-only instead, which is what they are to us. Returns (error, stderr)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.chdir(cwd)
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setgroups([])
                os.setuid(NOBODY)
            sys.stderr = io.StringIO()
            result = [run(*args), sys.stderr.getvalue()]
        except BaseException:
            result = [traceback.format_exc(), ""]
        finally:
            os.write(write, json.dumps(result).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result = json.load(f)
    os.waitpid(pid, 0)
    return tuple(result)


@pytest.fixture
def project():
    """A group's folder, setgid and group-writable, in the temporary folder (pytest's own is
    private to us, so the other user could not reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="project-"))
    yield folder
    shutil.rmtree(folder)


def test_a_second_user_of_a_group_folder_is_refused_while_the_first_runs(project):
    if os.geteuid() == 0:
        os.chown(project, -1, NOBODY)
    project.chmod(0o2775)
    write_jsonl(project / "docs.jsonl", make_docs(20))
    (project / "out").mkdir()
    (project / "out").chmod(0o2775)
    flags = ["--source", "docs.jsonl", "--out", "out", "--shard-tokens", 500, "--workers", 1]
    run("--source", project / "docs.jsonl", "--out", project / "ours", *flags[4:])  # as ours
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.lock import "
                               "FolderLock\nwith FolderLock(sys.argv[1], 'a pipeline run'):\n"
                               " print('held', flush=True); time.sleep(60)",
                               project / "out" / LOCK], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        if os.geteuid() != 0:
            (project / "out" / LOCK).chmod(0o444)
        error, _ = run_as_another_user(project, *flags)
        assert error and re.fullmatch(
            rf"error: out is in use by a pipeline run \(host {os.uname().nodename}, pid "
            rf"{holder.pid}, since .* UTC\); wait for it to end, or stop it, then run this "
            "command again", error), error
        assert not list((project / "out").glob("*.bin"))
    finally:
        holder.kill()
        holder.wait()
    assert run_as_another_user(project, *flags)[0] is None  # once the first is gone: its turn
    assert stream(project / "out")[1] == stream(project / "ours")[1]
    for folder in ("ours", "theirs"):  # folders the other user may not write
        (project / folder).mkdir(exist_ok=True)
        (project / folder).chmod(0o555)
    error, said = run_as_another_user(project, *flags[:3], "ours", *flags[4:])
    assert error is None and "ours is already complete" in said  # finished: said as ever
    error, said = run_as_another_user(project, *flags[:3], "theirs", *flags[4:])
    assert error == "1" and said == (  # to be written: one line, before the source is read
        "error: theirs: Permission denied (EACCES); you may not write there: use another --out, "
        "or ask its owner for write access (a group's folder wants mode g+ws and umask 002)\n")


def test_lock_warnings_are_said_once_a_process(tmp_path, monkeypatch, capsys):
    """Not once per part of an array task: a node-local lock, or a file system without locks."""
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nmds:/proj {tmp_path} lustre rw,localflock 0 0\n")
    monkeypatch.setattr(pipeline.lock, "MOUNTS", mounts)
    monkeypatch.setattr(pipeline.lock, "_warned", set())
    with FolderLock(tmp_path / LOCK, "a pipeline run"), FolderLock(tmp_path / ".part.lock", "x"):
        pass
    assert capsys.readouterr().err == (
        f"warning: {tmp_path} is mounted with localflock: its locks hold on this node only, so "
        "make sure no run on another node writes to the folder\n")

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(pipeline.lock.fcntl, "flock", no_locks)
    with FolderLock(tmp_path / LOCK, "a pipeline run"), FolderLock(tmp_path / ".part.lock", "x"):
        pass
    assert capsys.readouterr().err == (
        f"warning: cannot lock {tmp_path / LOCK} (No locks available): this file system has no "
        "locks; make sure no other process writes to the folder at the same time\n")


def in_own_mounts(script):
    """A shell script in a mount namespace of its own, where it may mount a tmpfs (as root, or as
    any user where user namespaces are allowed, as on Debian and Ubuntu)."""
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-euc", script],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_full_disk_is_one_line_and_exit_75_and_the_rerun_is_identical(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(200, seed=9))
    flags = f"--source {src} --shard-tokens 5000 --workers 1"
    run(*flags.split(), "--out", tmp_path / "clean")
    disk, cli = tmp_path / "disk", f"{sys.executable} -m pipeline.fineweb {flags} --out"
    disk.mkdir()
    # 8 pages of 4 KB: room for a shard of 11 KB or two, not all 8; then the folder goes
    # read-only, and the resume must say so before it reads the source; then there is room
    in_own_mounts(f"""
        mount -t tmpfs -o size=32k tmpfs {disk}
        {cli} {disk}/out 2> {tmp_path}/full.err || echo $? > {tmp_path}/full.status
        cp -r {disk}/out {tmp_path}/kept
        mount -o remount,ro {disk}
        {cli} {disk}/out 2> {tmp_path}/ro.err || echo $? > {tmp_path}/ro.status
        mount -o remount,rw,size=1m {disk}
        {cli} {disk}/out 2> {tmp_path}/rerun.err
        cp -r {disk}/out {tmp_path}/rerun
    """)
    full = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.status").read_text() == "75\n" and "Traceback" not in full, full
    assert re.fullmatch(rf"error: {disk}/out/[^ ]+: no space left on "
                        r"device \(ENOSPC\); every finished shard is kept: free some space \(or "
                        r"raise the quota\), then run the same command again to resume",
                        full.strip().splitlines()[-1]), full
    kept, clean = stream(tmp_path / "kept")[1], stream(tmp_path / "clean")[1]
    assert kept and kept == {name: clean[name] for name in kept}
    assert not list((tmp_path / "kept").glob(".*tmp*"))
    assert stream(tmp_path / "rerun")[1] == clean
    assert (tmp_path / "ro.status").read_text() == "1\n"
    assert (tmp_path / "ro.err").read_text() == (
        f"error: {disk}/out: Read-only file system (EROFS); the file system is mounted read-only: "
        "use another --out\n")


def test_a_failed_first_run_leaves_the_folder_the_user_made(tmp_path, capsys, monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(20))
    mine = tmp_path / "mine"  # made by the user: mode, setgid group (ACLs, striping) must stay
    mine.mkdir()
    mine.chmod(0o2770)
    error = run("--source", src, "--out", mine, "--text-field", "txet")
    assert error and "no field 'txet'" in error
    assert mine.is_dir() and mine.stat().st_mode & 0o7777 == 0o2770 and not any(mine.iterdir())
    error = run("--source", src, "--out", tmp_path / "new/deeper/out", "--text-field", "txet")
    assert error and not (tmp_path / "new").exists()  # all of it made by the run: all gone

    def ctrl_c(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline.make_shards, "write_shards", ctrl_c)
    capsys.readouterr()
    assert run("--source", src, "--out", mine) == "130"
    assert capsys.readouterr().err == "error: interrupted; run the same command again to resume\n"
    assert mine.is_dir() and not any(mine.iterdir())


def test_bad_data_is_found_before_the_first_shard_and_null_text_is_a_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.pool, "CHUNK_DOCS", 4)  # shards are written before file 4 is read
    docs = make_docs(150, seed=11)
    folder = tmp_path / "pq"
    folder.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"text": docs[50 * i:50 * (i + 1)]}), folder / f"{i}.parquet",
                       row_group_size=20)
    pq.write_table(pa.table({"body": ["x"]}), folder / "3.parquet")  # file 4 of 4: no text column
    out = tmp_path / "out"
    flags = ["--source", folder, "--out", out, "--shard-tokens", 5000, "--workers", 1]
    error = run(*flags)
    assert error and "3.parquet: no column 'text' (columns: body)" in error
    assert not out.exists(), "nothing written before the check"
    assert "3.parquet: no column" in run("--source", folder, "--out", tmp_path / "tasks",
                                         "--num-tasks", 4, "--task-index", 3)

    with_nulls = [None if i in (7, 43) else doc for i, doc in enumerate(docs[100:])]
    pq.write_table(pa.table({"text": with_nulls}), folder / "3.parquet", row_group_size=20)
    error = run(*flags)  # NULLs in row groups 0 and 2: the first's bytes are read to name its row
    assert error == (f"error: {folder}/3.parquet: row 7: column 'text' is NULL; fix the data, or "
                     "pass --null-text empty to read NULLs as empty documents")
    assert not out.exists()
    assert run(*flags, "--null-text", "empty") is None
    assert stream(out)[0] == expected_stream(docs + ["" if d is None else d for d in with_nulls])
    error = run(*flags)  # the same folder read the other way: another token stream
    assert error and "different settings (--null-text: empty there, refuse now)" in error


def test_default_workers_leave_a_shared_machine_room_and_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # a login node
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert pipeline.pool.default_workers()[0] == 8
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # a job's allocation: all of it
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert pipeline.pool.default_workers()[0] == 12

    monkeypatch.delenv("SLURM_JOB_ID")  # a 2-core machine of one's own: one worker, and why
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    src = write_jsonl(tmp_path / "d.jsonl", ["a"])
    assert run("--source", src, "--out", tmp_path / "o") is None
    assert capsys.readouterr().err.splitlines()[0] == (
        "tokenizer workers: 1 (half of this machine's 2 cores, at most 8: outside a Slurm job the "
        "machine may be shared); --workers N sets it")
