"""CORE speed: examples per second of evaluation/core.py over every task present in the bundle, a
few dozen rows each, on a small GPT-2-vocabulary model (GPT-2's context of 1024 tokens) on CPU.
Baseline, measured in the same run on the same prepared rows: one example per forward (its
choices batched) and the output layer on every position, as before batching. Both must give the
same accuracies.

    python bench/core.py --bundle ../shared/core_bundle            # 24 rows a task, 2 threads
    python bench/core.py --max-per-task 48 --threads 1 --layers 4 --width 128
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import core  # noqa: E402
from evaluation.scoring import Logits  # noqa: E402
from models.gpt2 import GPT, GPTConfig  # noqa: E402
from pipeline.tokenizer import get_gpt2_encoding  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(core.DEFAULT_BUNDLE))
    parser.add_argument("--max-per-task", type=int, default=24, help="rows scored per task")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward, batched")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks, missing = core.load_tasks(args.bundle)
    torch.manual_seed(0)
    config = GPTConfig(block_size=1024, vocab_size=50304, n_layer=args.layers, n_head=2, n_embd=args.width)
    model = GPT(config).eval()
    start = time.perf_counter()
    prepared = core.prepare(tasks, get_gpt2_encoding(), 1024, args.max_per_task)
    print(f"{len(tasks)} tasks ({len(missing)} absent), {args.max_per_task} rows each, {args.threads} threads, "
          f"model {args.layers} x {args.width}, context 1024; rows, shots and tokens built once in "
          f"{time.perf_counter() - start:.1f} s")
    results = {}
    for name, model_fn, batch_size in (
            ("one example a forward", lambda idx: model(idx)[0], 1),  # the output layer on every position
            (f"{args.batch_size} examples a forward", Logits(model), args.batch_size)):  # on the scored ones
        start = time.perf_counter()
        result = core.evaluate(model_fn, prepared, batch_size=batch_size)
        seconds = time.perf_counter() - start
        n = sum(r["n"] for r in result["tasks"].values())
        results[name] = (n / seconds, {label: r["accuracy"] for label, r in result["tasks"].items()})
        print(f"{name:>22}: {n} examples in {seconds:.1f} s: {n / seconds:.2f} examples/s, CORE {result['core']:.4f}")
    (slow, slow_acc), (fast, fast_acc) = results.values()
    assert fast_acc == slow_acc, "batching changed an answer"
    print(f"ratio batched / one example a forward: {fast / slow:.2f}x examples/s (same accuracies on every task)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
