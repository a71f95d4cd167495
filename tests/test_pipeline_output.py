"""The output side on a shared cluster: a folder shared by a group, a full or read-only disk, a
folder the user made, a rerun on a node without network. Each ends in one clear line (with exit
75 where freeing space and running again is the cure) or in the bytes of an uninterrupted run.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

import pipeline.lock
from pipeline.lock import LOCK, FolderLock
from test_pipeline import ROOT, make_docs, run, stream, write_jsonl

NOBODY = 65534  # uid and gid of Debian's nobody/nogroup


def run_as_another_user(cwd, *args):
    """The CLI in a forked child, in folder `cwd`, as user nobody when we are root (a fork, not a
    new interpreter: this one lives in /root, which nobody cannot read; so this process must have
    run the CLI once already, for its lazy imports). Not root, the test makes the files of "the
    other user" read-only instead, which is what they are to us."""
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
            os.write(write, (run(*args) or "").encode())
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        error = f.read()
    os.waitpid(pid, 0)
    return error or None


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
                               " print('held', flush=True); time.sleep(60)", project / "out" / LOCK],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        if os.geteuid() != 0:
            (project / "out" / LOCK).chmod(0o444)
        error = run_as_another_user(project, *flags)
        assert error and re.fullmatch(
            rf"error: out is in use by a pipeline run \(host {os.uname().nodename}, pid "
            rf"{holder.pid}, since .* UTC\); wait for it to end, or stop it, then run this "
            "command again", error), error
        assert not list((project / "out").glob("*.bin"))
    finally:
        holder.kill()
        holder.wait()
    assert run_as_another_user(project, *flags) is None  # once the first is gone: its turn
    assert stream(project / "out")[1] == stream(project / "ours")[1]


def test_node_local_locks_are_said_once(tmp_path, monkeypatch, capsys):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nmds:/proj {tmp_path} lustre rw,localflock 0 0\n")
    monkeypatch.setattr(pipeline.lock, "MOUNTS", mounts)
    monkeypatch.setattr(pipeline.lock, "_warned", set())
    with FolderLock(tmp_path / LOCK, "a pipeline run"), FolderLock(tmp_path / ".part.lock", "x"):
        pass
    assert capsys.readouterr().err == (
        f"warning: {tmp_path} is mounted with localflock: its locks hold on this node only, so "
        "make sure no run on another node writes to the folder\n")
