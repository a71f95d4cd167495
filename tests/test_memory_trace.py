"""The traced memory plan (trainer/memory_trace.py) against the live bytes of the same steps run
for real on CPU (tests/memory_live.py: the CPU allocator's own count): one process, DDP and FSDP
on 2 gloo ranks, FSDP with activation checkpointing; fp32 and bf16 autocast."""

import json
import subprocess
import sys

import pytest

from test_train import REPO
from trainer.config import parse_config
from trainer.memory_trace import trace_training_step

# 2 layers, 128 wide, vocab 512; micro-batch 8 x 64 tokens, 2 micro-steps a step on every rank:
# activations are about half of the peak, weights, gradients and AdamW state the rest
TINY = ["--preset", "cpu-smoke", "--vocab-size", "512", "--n-layer", "2", "--n-head", "2",
        "--n-embd", "128", "--block-size", "64", "--seq-len", "64", "--micro-batch-size", "4",
        "--device", "cpu"]
MODES = {"one": [], "ddp": [], "fsdp": ["--fsdp"], "fsdp_ac": ["--fsdp", "--activation-checkpointing"]}
DTYPES = ("float32", "bfloat16")


def flags(mode, dtype):
    world = 1 if mode == "one" else 2
    return TINY + MODES[mode] + ["--dtype", dtype, "--total-batch-size", str(2 * 4 * 64 * world)]


def measure_live(cases, nproc):
    """{case: live peak bytes} of rank 0, measured for real in one launch."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    with_out = subprocess.run(
        launcher + ["tests/memory_live.py", "/dev/stdout", json.dumps(cases)], cwd=REPO,
        capture_output=True, text=True, timeout=300)
    assert with_out.returncode == 0, with_out.stderr[-3000:]
    return json.loads(with_out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def live():
    one = {f"one {d}": flags("one", d) for d in DTYPES}
    ranks = {f"{m} {d}": flags(m, d) for m in MODES if m != "one" for d in DTYPES}
    return {**measure_live(one, 1), **measure_live(ranks, 2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_traced_peak_is_within_10_percent_of_the_live_peak(live, mode, dtype):
    world = 1 if mode == "one" else 2
    trace = trace_training_step(parse_config(flags(mode, dtype)), world, device_type="cpu")
    measured = live[f"{mode} {dtype}"]
    assert abs(trace["peak_bytes"] / measured - 1) <= 0.10, (trace, measured)
    assert trace["micro_steps"] == 2 and sum(trace["parts"].values()) == trace["peak_bytes"]


def test_dry_run_json_takes_the_largest_traced_micro_batch_and_exits_2_when_none_fits(capsys, monkeypatch):
    import train_gpt2
    from trainer import memory

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    shape = TINY[:-2] + ["--total-batch-size", str(64 * 64), "--dtype", "bfloat16"]
    peak = {b: trace_training_step(parse_config(shape + ["--micro-batch-size", str(b)]), 1)["peak_bytes"]
            for b in (16, 32)}
    gpu_gb = (peak[16] + peak[32]) / 2 / (1 - memory.RESERVE) / 1e9  # B=16 fits, B=32 does not

    def dry_run(*extra):
        status = train_gpt2.main(shape + ["--device", "cuda", "--dry-run", "--json", "--gpu-memory",
                                          f"{gpu_gb:.6f}GB", *extra])
        return status, json.loads(capsys.readouterr().out)

    status, plan = dry_run("--micro-batch-size", "auto")
    assert status == 0 and plan["fits"] and plan["micro_batch_size"] == 16
    assert plan["peak_bytes"] == peak[16] and sum(plan["parts"].values()) == peak[16]
    formula = memory.memory_plan(parse_config(shape + ["--micro-batch-size", "16"]), 1)["total"]
    assert plan["formula_bytes"] == int(formula) and plan["micro_steps"] == 2
    status, plan = dry_run("--micro-batch-size", "32")
    assert status == 2 and plan["fits"] is False and plan["peak_bytes"] == peak[32]
    # on CPU the memory is the RAM available now: too little for even one sequence
    monkeypatch.setattr(memory, "host_memory_available", lambda: 1e6)
    assert train_gpt2.main(shape + ["--device", "cpu", "--micro-batch-size", "auto", "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "auto: even a micro-batch of 1 does not fit" in out
    assert "does NOT fit: try --fsdp, --activation-checkpointing, a machine with more RAM" in out


def test_a_shape_traces_the_same_first_in_a_process_and_again():
    """FSDP's first optimizer step in a process also runs DTensor's sharding propagation, on fake
    tensors of the unsharded size (once per op and shape, then cached): the trace counts the
    steady step alone, so the first trace of a shape equals the next. Weights dominate here (one
    sequence of 16 tokens), where the first step's extra copies would make the peak."""
    shape = TINY[:-6] + ["--seq-len", "16", "--micro-batch-size", "1", "--device", "cpu", "--fsdp",
                         "--dtype", "float32", "--total-batch-size", "32"]
    script = ("import json, sys; from trainer.config import parse_config; "
              "from trainer.memory_trace import trace_training_step; "
              "cfg = parse_config(json.loads(sys.argv[1])); "
              "print([trace_training_step(cfg, 2, 'cuda')['peak_bytes'] for _ in range(2)])")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(shape)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == again
