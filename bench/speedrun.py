"""The speedrun recipe's gain, measured honestly on CPU: for each arm, the tokens the faithful
recipe needs to reach that arm's end-of-schedule loss, divided by the tokens the arm used.

    python bench/speedrun.py                      # ../shared/data/tinyshakespeare, 0.5M tokens a run
    python bench/speedrun.py --tokens 131072      # a quicker, noisier version

Arms, on char-level Tiny Shakespeare (the lecture's 90/10 split), a 4-layer, 64-wide, 4-head
model, T=64, 16 sequences (1,024 tokens) a step:
    faithful   GPT-2 (models/gpt2.py) with AdamW, decay 0.1 on matrices and embeddings
    muon       GPT-2 with Muon (trainer/muon.py, fp32) on the blocks' matrices, AdamW on the rest
    modern     the speedrun's model (models/modern.py) with AdamW
    speedrun   the modern model with Muon and AdamW, grouped as --recipe speedrun groups them
Fair by construction: every arm sees the same windows (a seeded generator per seed), the same
warmup-stable-decay schedule (5% warmup, flat, linear to 0.1x over the last 40%) and clipping at
1.0; each arm's learning rate is swept over the same number of points (the Muon arms' AdamW lr is
1e-2, as the pilot's); only end-of-schedule validation losses count (the whole val split); the
best learning rate of each arm is run again with a second seed. The faithful arm's best learning
rate also runs 2x and 4x the tokens: the curve tokens -> loss (mean of the seeds at 1x) on which
each arm's loss is placed (linear in log tokens; beyond 4x extrapolated, and marked so).
Runs go two at a time, one thread each.
"""

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models.gpt2 import GPT, GPTConfig  # noqa: E402
from models.modern import ModernConfig, ModernGPT  # noqa: E402
from trainer.muon import Muon  # noqa: E402
from trainer.recipes import speedrun_groups  # noqa: E402

SHAPE = dict(block_size=64, n_layer=4, n_head=4, n_embd=64)
BATCH = 16
SWEEPS = {  # learning rates: AdamW's for faithful and modern, Muon's for the Muon arms
    "faithful": (3e-3, 6e-3, 1e-2, 2e-2),
    "muon": (0.01, 0.02, 0.03, 0.05),
    "modern": (3e-3, 6e-3, 1e-2, 2e-2),
    "speedrun": (0.01, 0.02, 0.03, 0.05),
}
MUON_ARMS_ADAMW_LR = 1e-2
DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def load_text(path):
    text = Path(path).read_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


def build(arm, lr, vocab_size):
    """(model, optimizers) of an arm; each param group remembers its peak lr as base_lr."""
    if arm in ("faithful", "muon"):
        model = GPT(GPTConfig(vocab_size=vocab_size, bias=True, **SHAPE))
    else:
        model = ModernGPT(ModernConfig(vocab_size=vocab_size, **SHAPE))
    if arm in ("faithful", "modern"):
        params = list(model.parameters())
        adamw = torch.optim.AdamW([dict(params=[p for p in params if p.dim() >= 2], weight_decay=0.1),
                                   dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)],
                                  lr=lr, betas=(0.9, 0.95))
        optimizers = [adamw]
    else:
        if arm == "speedrun":
            groups = speedrun_groups(model)
            matrices = groups.pop("matrices")
            rest = [p for params in groups.values() for p in params]
        else:  # GPT-2's blocks' matrices; the tied embedding/output matrix stays with AdamW
            matrices = [p for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2]
            rest = [p for n, p in model.named_parameters() if not (n.startswith("transformer.h.") and p.dim() == 2)]
        muon = Muon(matrices, lr=lr, weight_decay=0.0, momentum=0.95, ns_dtype=torch.float32)
        adamw = torch.optim.AdamW(rest, lr=MUON_ARMS_ADAMW_LR, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
        optimizers = [muon, adamw]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]
    return model, optimizers


def schedule(step, steps):
    warmup, decay_start = max(1, steps // 20), int(0.6 * steps)
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    return 1.0 - 0.9 * (step - decay_start) / max(1, steps - decay_start)


def train(job):
    """End-of-schedule val loss of one run: (arm, lr, tokens, seed, data) -> loss."""
    arm, lr, tokens, seed, (train_ids, val_ids, vocab_size) = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, optimizers = build(arm, lr, vocab_size)
    T = SHAPE["block_size"]
    windows = torch.Generator().manual_seed(10_000 + seed)  # the same windows for every arm
    steps = tokens // (BATCH * T)
    for step in range(steps):
        starts = torch.randint(len(train_ids) - T - 1, (BATCH,), generator=windows)
        x = torch.stack([train_ids[s:s + T] for s in starts])
        y = torch.stack([train_ids[s + 1:s + T + 1] for s in starts])
        multiplier = schedule(step, steps)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * multiplier
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    usable = (len(val_ids) - 1) // T * T
    x, y = val_ids[:usable].view(-1, T), val_ids[1:usable + 1].view(-1, T)
    with torch.no_grad():
        losses = [model(x[i:i + 256], y[i:i + 256])[1] * len(x[i:i + 256]) for i in range(0, len(x), 256)]
    return (sum(losses) / len(x)).item()


def tokens_to_reach(loss, curve):
    """Tokens at which the faithful curve [(tokens, loss), ...] (tokens increasing) reaches
    `loss`, linear in log tokens between its points, else extended from its end segment; returns
    (tokens, whether it was extrapolated)."""
    segments = list(zip(curve, curve[1:]))
    inside = [(a, b) for a, b in segments if b[1] <= loss <= a[1]]
    (t0, l0), (t1, l1) = inside[0] if inside else segments[0 if loss > curve[0][1] else -1]
    frac = (l0 - loss) / (l0 - l1)
    return math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))), not inside


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DEFAULT_INPUT), help="Tiny Shakespeare's input.txt")
    p.add_argument("--tokens", type=int, default=524_288, help="tokens per run (x2, x4 for the curve)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if not os.path.exists(args.input):
        print(f"error: {args.input}: no such file; pass --input PATH of Tiny Shakespeare's input.txt",
              file=sys.stderr)
        return 2
    data = load_text(args.input)
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        def run(jobs):
            return dict(zip(jobs, pool.map(train, [(*job, data) for job in jobs])))

        sweep = run([(arm, lr, args.tokens, 0) for arm, lrs in SWEEPS.items() for lr in lrs])
        best = {arm: min(lrs, key=lambda lr: sweep[(arm, lr, args.tokens, 0)]) for arm, lrs in SWEEPS.items()}
        more = run([(arm, best[arm], args.tokens, 1) for arm in SWEEPS] +
                   [("faithful", best["faithful"], k * args.tokens, 0) for k in (2, 4)])
    results = {**sweep, **more}
    print(f"{len(results)} runs in {time.time() - t0:.0f} s; val loss (nats/char) at the end of each schedule\n")
    for arm, lrs in SWEEPS.items():
        cells = [f"{lr:g}: {results[(arm, lr, args.tokens, 0)]:.4f}" for lr in lrs]
        print(f"  {arm:9s} lr sweep at {args.tokens:,} tokens (seed 0): " + ", ".join(cells))
    mean = {arm: (results[(arm, best[arm], args.tokens, 0)] + results[(arm, best[arm], args.tokens, 1)]) / 2
            for arm in SWEEPS}
    curve = [(args.tokens, mean["faithful"])] + [
        (k * args.tokens, results[("faithful", best["faithful"], k * args.tokens, 0)]) for k in (2, 4)]
    print("\n  faithful curve: " + ", ".join(f"{t:,} tokens {l:.4f}" for t, l in curve))
    print(f"\n  {'arm':9s} {'best lr':>8s} {'seed 0':>7s} {'seed 1':>7s}  tokens the faithful recipe needs / tokens used")
    for arm in SWEEPS:
        needed, beyond = tokens_to_reach(mean[arm], curve)
        seeds = [results[(arm, best[arm], args.tokens, s)] for s in (0, 1)]
        print(f"  {arm:9s} {best[arm]:>8g} {seeds[0]:7.4f} {seeds[1]:7.4f}  {needed / args.tokens:.2f}x"
              + (" (beyond the curve: extrapolated)" if beyond else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
