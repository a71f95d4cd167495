"""What a run ran on: package versions, Python, and the project's git commit.

Recorded in the `{"setup": ...}` record of log.jsonl (and the run report), so a result can be
traced to the code and the libraries that produced it, and rerun with them.
"""

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent

# import name -> distribution name: the libraries whose versions can change a run's numbers
PACKAGES = {
    "torch": "torch",
    "numpy": "numpy",
    "tiktoken": "tiktoken",
    "datasets": "datasets",
    "huggingface_hub": "huggingface-hub",
    "transformers": "transformers",
    "wandb": "wandb",
}


def git_state(directory=PROJECT_DIR):
    """(commit sha, dirty) of the git checkout holding `directory`; (None, None) when git is
    not installed or the code is not a git checkout (e.g. installed from a wheel or a tarball).
    Dirty means a tracked file differs from the commit: untracked files (runs, data written
    inside the checkout) do not count."""
    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def software_versions(directory=PROJECT_DIR):
    """{"python", "torch", "numpy", "tiktoken", "datasets", "huggingface_hub", "transformers",
    "wandb": version string, or None when not installed; "git_commit": sha or None,
    "git_dirty": bool or None}: plain JSON values, for log.jsonl."""
    versions = {"python": platform.python_version()}
    for name, distribution in PACKAGES.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["git_commit"], versions["git_dirty"] = git_state(directory)
    return versions
