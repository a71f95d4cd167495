"""--compile in every parallel mode: the whole training forward compiled (embeddings, each block,
head and loss; trainer/distributed.py compile_regions), with no graph break and no
recompilation over steps with accumulation and evaluations in between, and the losses of the
eager run. 2 gloo ranks; the aot_eager backend (TRAIN_COMPILE_BACKEND) keeps it fast: graph
breaks and recompilations are Dynamo's, whatever the backend."""

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_train_flags
from test_train import REPO, read_log

MODES = {"ddp": [], "fsdp": ["--fsdp"], "fsdp-ac": ["--fsdp", "--activation-checkpointing"]}


@pytest.fixture(scope="module")
def runs(char_shards, tmp_path_factory):
    """Each mode compiled and eager, all in one torchrun launch (tests/dynamo_counters.py):
    4 steps of 2 accumulation micro-steps on each of 2 ranks, validation and a sample every 2."""
    tmp = tmp_path_factory.mktemp("compile")
    argvs = {}
    for mode, flags in MODES.items():
        for compiled in ("true", "false"):
            name = f"{mode}-{'compiled' if compiled == 'true' else 'eager'}"
            argvs[name] = tiny_train_flags(4, 512, 2) + flags + [
                "--device", "cpu", "--dtype", "float32", "--compile", compiled,
                "--data", str(char_shards), "--out-dir", str(tmp / name)]
    # a 768-wide block (28 MB of fp32 weights, GPT-2's width) is more than one of DDP's 25 MB buckets
    argvs["ddp-wide-compiled"] = tiny_train_flags(2, 512, 0) + [
        "--n-layer", "1", "--n-embd", "768", "--device", "cpu", "--dtype", "float32", "--compile",
        "true", "--data", str(char_shards), "--out-dir", str(tmp / "ddp-wide-compiled")]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "tests/dynamo_counters.py", str(tmp / "counters.json"),
                          json.dumps(argvs)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRAIN_COMPILE_BACKEND": "aot_eager"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp, json.loads((tmp / "counters.json").read_text())


@pytest.mark.parametrize("mode", MODES)
def test_compiled_training_has_no_graph_break_nor_recompile(runs, mode):
    tmp, results = runs
    compiled, eager = results[f"{mode}-compiled"], results[f"{mode}-eager"]
    assert compiled["status"] == 0 and eager["status"] == 0
    counters = compiled["counters"]
    assert not counters.get("graph_break") and not counters.get("unimplemented"), counters
    assert not counters.get("recompiles"), counters["recompiles"]
    # three graphs: the embeddings, one shared by every block, the head with the loss
    assert counters["stats"]["unique_graphs"] == 3, counters["stats"]
    assert not eager["counters"].get("stats")  # the eager run compiles nothing
    train, val = read_log(tmp / f"{mode}-compiled")
    ref_train, ref_val = read_log(tmp / f"{mode}-eager")
    assert sorted(train) == [0, 1, 2, 3] and sorted(val) == [0, 2, 4]
    assert train == pytest.approx(ref_train, rel=1e-6) and val == pytest.approx(ref_val, rel=1e-6)


def test_ddp_does_not_split_the_compiled_regions_at_its_buckets(runs):
    """Dynamo's DDPOptimizer would cut a region's graph where DDP's 25 MB gradient buckets end
    (the wide block's graph in two): the regions stay whole, DDP's hooks outside them."""
    _, results = runs
    wide = results["ddp-wide-compiled"]
    assert wide["status"] == 0
    counters = wide["counters"]
    # DDPOptimizer splits inside Dynamo's graph: the backend then compiles each piece
    assert counters["stats"]["unique_graphs"] == 3 and counters["aot_autograd"]["total"] == 3, counters
