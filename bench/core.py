"""CORE speed: examples per second of evaluation/core.py over every task present in the bundle, a
few dozen rows each, on a tiny GPT-2-vocabulary model (2 layers, 32 wide, GPT-2's context of 1024
tokens) on CPU. Baseline, measured in the same run on the same rows: each choice of an example in
a forward of its own (what putting an example's choices in one batch saves). Both must give the
same accuracies.

    python bench/core.py --bundle ../shared/core_bundle            # 24 rows a task, 2 threads
    python bench/core.py --max-per-task 48 --threads 1
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import core  # noqa: E402
from models.gpt2 import GPT, GPTConfig  # noqa: E402
from pipeline.tokenizer import get_gpt2_encoding  # noqa: E402


def one_row_at_a_time(model_fn):
    """The same model, fed each row of a batch in a forward of its own."""
    return lambda idx: torch.cat([model_fn(idx[i : i + 1]) for i in range(idx.shape[0])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(core.DEFAULT_BUNDLE))
    parser.add_argument("--max-per-task", type=int, default=24, help="rows scored per task")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks, missing = core.load_tasks(args.bundle)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=1024, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    batched = lambda idx: model(idx)[0]  # noqa: E731
    enc = get_gpt2_encoding()
    print(f"{len(tasks)} tasks ({len(missing)} absent), {args.max_per_task} rows each, "
          f"{args.threads} threads, model 2 x 32, context 1024")
    results = {}
    for name, model_fn in (("batched", batched), ("one row per forward", one_row_at_a_time(batched))):
        start = time.perf_counter()
        result = core.evaluate(model_fn, tasks, enc, 1024, args.max_per_task)
        seconds = time.perf_counter() - start
        n = sum(r["n"] for r in result["tasks"].values())
        results[name] = (n / seconds, {label: r["accuracy"] for label, r in result["tasks"].items()})
        print(f"{name:>20}: {n} examples in {seconds:.1f} s: {n / seconds:.2f} examples/s, CORE {result['core']:.4f}")
    (fast, fast_acc), (slow, slow_acc) = results.values()
    assert fast_acc == slow_acc, "batching the choices changed an answer"
    print(f"ratio batched / one row per forward: {fast / slow:.2f}x examples/s (same accuracies on every task)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
