"""The fit table's search (trainer/fit_table.py) picks what tracing every micro-batch picks, from
fewer traces, and one trace serves the DDP cells of every world size."""

from dataclasses import replace

from trainer.config import parse_config
from trainer.fit_table import _key, search, shape
from trainer.memory_trace import trace_training_step

# 2 layers, 128 wide, vocab 512: a trace takes about a second; 16 sequences of 64 tokens a step
TINY = parse_config(["--preset", "cpu-smoke", "--vocab-size", "512", "--n-layer", "2", "--n-head", "2",
                     "--n-embd", "128", "--block-size", "64", "--seq-len", "64", "--dtype", "bfloat16",
                     "--total-batch-size", str(16 * 64)])


def test_a_ddp_trace_depends_on_the_world_size_only_through_the_micro_steps():
    cfg = replace(TINY, micro_batch_size=2)
    assert shape(cfg, 4) == shape(cfg, 2) and shape(cfg, 4)[1] == 2
    peak = trace_training_step(cfg, 4, "cuda")["peak_bytes"]
    assert peak == trace_training_step(*shape(cfg, 4), "cuda")["peak_bytes"]
    assert shape(replace(cfg, fsdp=True), 4)[1] == 4


def test_the_search_picks_the_largest_traced_fit_from_fewer_traces():
    fsdp = replace(TINY, fsdp=True)
    # every micro-batch traced: one process (B up to 16, two micro-steps below 16) and FSDP on 2
    # ranks (up to 8: one micro-step); a tiny FSDP model peaks higher at B=1 than at B=2
    modes = {"one": (TINY, 1), "fsdp": (fsdp, 2)}
    every = {name: {} for name in modes}
    traces = {}
    for name, (cfg, n) in modes.items():
        for b in (1, 2, 4, 8, 16)[:6 - n]:  # up to a rank's share
            key = _key(*shape(replace(cfg, micro_batch_size=b), n))
            traces[key] = every[name][b] = \
                trace_training_step(replace(cfg, micro_batch_size=b), n, "cuda")["peak_bytes"]
    cells = {}
    for name, peaks in every.items():
        cfg, n = modes[name]
        bs = sorted(peaks)
        # memories between each pair of traced peaks, below the smallest and above the largest
        ordered = sorted(peaks.values())
        usables = [ordered[0] - 1] + [(a + b) / 2 for a, b in zip(ordered, ordered[1:])] + [ordered[-1]]
        for k, usable in enumerate(usables):
            expected = max((b for b in bs if peaks[b] <= usable), default=0)
            cells[name, n, k] = (cfg, n, usable, expected)
    asked = []

    def trace_all(shapes):
        asked.extend(_key(*s) for s in shapes)
        return [traces[_key(*s)] for s in shapes]

    picks, peaks = search({cell: c[:3] for cell, c in cells.items()}, trace_all)
    assert picks == {cell: c[3] for cell, c in cells.items()}
    assert len(asked) == len(set(asked)) == len(peaks) == len(traces)  # each shape traced once
    # one cell where B=4 fits and 8 does not: the line's two traces decide it (8 is over the line;
    # 16, one micro-step, is larger still)
    asked.clear()
    middle = (every["one"][4] + every["one"][8]) / 2
    assert search({"one": (TINY, 1, middle)}, trace_all)[0] == {"one": 4} and len(asked) == 2
