"""How long each row of bench/gpu.py should take, before it runs: from the model's FLOPs and the
GPU's peak (trainer.metrics' table) at an expected utilisation, the checkpoint's bytes over a
disk's speed, and fixed costs (compilation, the memory trace, start-up). The figures below are
assumptions, not measurements of this project (no GPU was lent to it): the row's limit allows for
their error (limit_s), and a row run on a GPU reports its real seconds beside its estimate.
"""

from dataclasses import dataclass

EXPECTED_MFU = 0.35  # of the bf16 peak, a 124M-1.5B GPT-2 training step (nanoGPT: ~0.4 compiled)
CPU_FLOPS = 20e9  # --smoke: a shared CPU core's fp32 FLOP/s, roughly
DISK_WRITE_BYTES_PER_S = 1.0e9  # gather to CPU, pickle and write a checkpoint (local NVMe)
DISK_READ_BYTES_PER_S = 2.0e9  # read it back (mostly from the page cache, just written)
COMPILE_COLD_S = 45.0  # inductor's first compilation of a model shape, cache cold
COMPILE_WARM_S = 15.0  # the same shape again (FX graph and AOTAutograd caches warm)
# FakeTensorMode trace of two steps, on the CPU, per transformer block: gpt2-124m's 12 took 12 s
# on this project's 2-core machine while 8 busy sessions shared it; a GPU host's idle core is faster
TRACE_S_PER_LAYER = 0.5
ROW_START_S = 3.0  # build the model on the GPU, the loaders, free the last row's memory
WORKER_START_S = 15.0  # import torch, join the one-rank process group
LIMIT_FACTOR, LIMIT_SLACK_S = 3.0, 60.0  # a row is stopped past max(3 x estimate, estimate + 60 s)


@dataclass
class Work:
    """What a row does, in the units the estimate prices."""

    train_flops: float = 0.0  # forward+backward FLOPs of its training steps
    compile_shape: str = ""  # the model compiled (its preset), or "" when eager
    trace_layers: int = 0  # blocks of the model whose memory is traced
    written_bytes: int = 0
    read_bytes: int = 0
    fixed_s: float = 0.0  # anything else (HellaSwag's tokenizer and scoring)


def seconds(work, peak_flops, compiled_before):
    """The row's estimated seconds; compiled_before: the model shapes already compiled by earlier
    rows (their caches are warm)."""
    compile_s = 0.0
    if work.compile_shape:
        compile_s = COMPILE_WARM_S if work.compile_shape in compiled_before else COMPILE_COLD_S
    return (ROW_START_S + work.train_flops / (EXPECTED_MFU * peak_flops) + compile_s
            + TRACE_S_PER_LAYER * work.trace_layers + work.written_bytes / DISK_WRITE_BYTES_PER_S
            + work.read_bytes / DISK_READ_BYTES_PER_S + work.fixed_s)


def estimate_rows(rows, peak_flops):
    """{row name: estimated seconds}, in order (each row's compilation priced by what the rows
    before it compiled)."""
    compiled, estimates = set(), {}
    for row in rows:
        estimates[row.name] = seconds(row.work, peak_flops, compiled)
        compiled.add(row.work.compile_shape)
    return estimates


def limit_s(estimate):
    """The most a row may run before it is stopped: the estimate's error allowed for, and a
    hung collective caught long before NCCL's own timeout (minutes)."""
    return max(LIMIT_FACTOR * estimate, estimate + LIMIT_SLACK_S)


def fits(estimates, budget_s):
    """{row name: whether it runs}: in order, a row runs when the estimates of the rows that run
    before it plus its own stay within the budget (a cheaper row after a skipped one still runs)."""
    planned, chosen = WORKER_START_S, {}
    for name, estimate in estimates.items():
        chosen[name] = planned + estimate <= budget_s
        planned += estimate if chosen[name] else 0
    return chosen
