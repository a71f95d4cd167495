"""Crash injection for tests: prove that a run killed at any step resumes.

`PIPELINE_KILL_AT=STEP` or `STEP:N` makes the process reaching STEP for the Nth time (default 1)
kill itself with SIGKILL, as a node failure or the OOM killer would: no cleanup, no `finally`.
Each process counts for itself (a forked tokenizer worker from its own first chunk). Steps:

    tokenize        a worker starts a chunk
    started         a fresh output's first manifest.json (no shards yet) is written
    shard-renamed   a shard is under its final name; manifest.json does not list it yet
    manifest        manifest.json lists the shard just written
    finish          every shard is written; the manifest does not say complete yet
    pack-done       a --pack run's manifest says complete; the parts are not deleted yet

Unset (always, outside tests) it costs one dictionary lookup per step.
"""

import os
import signal
from collections import Counter

_reached = Counter()


def kill_point(step):
    target = os.environ.get("PIPELINE_KILL_AT")
    if not target:
        return
    name, _, nth = target.partition(":")
    if name == step:
        _reached[step] += 1
        if _reached[step] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
