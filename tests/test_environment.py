"""trainer.environment (what a run ran on) and requirements/lock.txt (what the suite runs on)."""

import importlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from trainer.environment import git_state, software_versions

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "lock.txt"


def test_versions_are_those_the_libraries_report():
    versions = software_versions()
    assert versions["python"] == platform.python_version()
    for name in ("torch", "numpy", "tiktoken", "datasets", "huggingface_hub", "transformers", "wandb"):
        assert versions[name] == importlib.import_module(name).__version__, name


def git(directory, *args):
    return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_git_commit_and_dirty_flag(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("lr = 6e-4\n")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    commit = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "log.jsonl").write_text("{}\n")  # a run's output is not a code change
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "train.py").write_text("lr = 1e-3\n")
    assert git_state(tmp_path) == (commit, True)
    assert software_versions(tmp_path)["git_commit"] == commit
    assert software_versions(tmp_path)["git_dirty"] is True


def test_no_git_or_no_checkout_gives_none(tmp_path, monkeypatch):
    assert git_state(tmp_path) == (None, None)  # not a checkout (a folder under /tmp)
    monkeypatch.setenv("PATH", str(tmp_path))  # git not installed
    assert git_state(REPO) == (None, None)
    versions = software_versions(REPO)
    assert (versions["git_commit"], versions["git_dirty"]) == (None, None)
    assert versions["torch"] is not None


def test_installed_versions_equal_the_lock():
    """The environment the suite runs in is the locked one: every locked package that applies
    to this machine and is installed has the locked version, and every dependency the project
    declares (dev extra included) is locked and installed."""
    locked = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                locked[canonicalize_name(requirement.name)] = requirement.specifier
    assert len(locked) > 50 and "torch" in locked

    wrong = []
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        # 2.13.0+cpu satisfies ==2.13.0: the lock fixes versions, the machine picks the build
        if name in locked and not locked[name].contains(distribution.version, prereleases=True):
            wrong.append(f"{name} {distribution.version} (locked {locked[name]})")
    assert not wrong, f"installed versions differ from {LOCK.name}: {', '.join(wrong)}; run `make setup`"

    declared = {canonicalize_name(Requirement(r).name) for r in metadata.requires("gpt2-fineweb")}
    assert declared - locked.keys() == set(), "declared but not locked: run `make lock`"
    installed = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
    assert declared - installed == set(), "declared but not installed: run `make setup`"
