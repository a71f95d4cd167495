"""The speedrun recipe's gain, measured honestly on CPU: for each arm, the tokens the faithful
recipe needs to reach that arm's end-of-schedule loss, divided by the tokens the arm used.

    python bench/speedrun.py                      # ../shared/data/tinyshakespeare, 0.5M tokens a run
    python bench/speedrun.py --tokens 131072 --curve 2,4,8,16   # 4x quicker; the curve to 2 epochs
    python bench/speedrun.py --data gpt2          # GPT-2 BPE tokens of the same text, 128K a run

Arms, on Tiny Shakespeare (the lecture's 90/10 split), a 4-layer, 64-wide, 4-head model, T=64,
16 sequences (1,024 tokens) a step:
    faithful   GPT-2 (models/gpt2.py) with AdamW, decay 0.1 on matrices and embeddings
    muon       GPT-2 with Muon (trainer/muon.py, fp32) on the blocks' matrices, AdamW on the rest
    modern     the speedrun's model (models/modern.py) with AdamW
    speedrun   the modern model with Muon and AdamW, grouped as --recipe speedrun groups them
--data chars reads characters (65 of them); --data gpt2 GPT-2's BPE tokens (~338K), remapped to
the ~11K ids that occur: a 50,257-wide embedding would dwarf a 64-wide model, and ids that never
occur would only be pushed down, the same in every arm.
Fair by construction: every arm sees the same windows (a seeded generator per seed), the same
warmup-stable-decay schedule (5% warmup, flat, linear to 0.1x over the last 40%) and clipping at
1.0; each arm's learning rate is swept over 4 points, widened past an edge while the best
lands on one (the Muon arms' AdamW lr is 1e-2, as the pilot's); only
end-of-schedule validation losses count (the whole val split); the best learning rate of each arm
is run again with a second seed. The faithful arm also runs --curve times the tokens, its
learning rate swept again there (the 1x best and its neighbours, widened likewise), the best for
both seeds: each seed's curve tokens -> loss, on which that seed's arm losses are placed (linear
in log tokens). A loss below the curve's last point is reported as "> Nx",
never extrapolated. Runs go --workers at a time, one thread each.
"""

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
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
MAX_WIDENINGS = 3  # extra sweep points per arm, at most, past the edge its best lr sits on
MUON_ARMS_ADAMW_LR = 1e-2
DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
DEFAULT_TOKENS = {"chars": 524_288, "gpt2": 131_072}  # 0.5 and 0.4 epochs of the training split


def split(ids):
    """The lecture's split: the first 90% to train on, the rest to validate."""
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:]


def load_chars(text):
    """(train ids, val ids, vocab size) of the text's characters (sorted set of the whole text)."""
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    return (*split(torch.tensor([index[c] for c in text])), len(index))


def load_gpt2(text):
    """(train ids, val ids, vocab size) of the text's GPT-2 BPE tokens, renumbered 0.. in the order
    of their GPT-2 ids over the ids that occur in the whole text."""
    from pipeline.tokenizer import get_gpt2_encoding

    ids = np.array(get_gpt2_encoding().encode_ordinary(text))
    occurring, compact = np.unique(ids, return_inverse=True)
    return (*split(torch.from_numpy(compact.astype(np.int64))), len(occurring))


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
    with torch.no_grad():  # chunks of 64 windows: a GPT-2-vocabulary logit tensor stays small
        losses = [model(x[i:i + 64], y[i:i + 64])[1] * len(x[i:i + 64]) for i in range(0, len(x), 64)]
    return (sum(losses) / len(x)).item()


def widened(lrs, best):
    """The sweep with one more point past the edge `best` sits on, at the sweep's own spacing
    there (two significant digits); None when `best` is inside."""
    if best == lrs[0]:
        return (float(f"{lrs[0] ** 2 / lrs[1]:.2g}"), *lrs)
    if best == lrs[-1]:
        return (*lrs, float(f"{lrs[-1] ** 2 / lrs[-2]:.2g}"))
    return None


def tokens_ratio(loss, tokens, curve):
    """(ratio, bound) of the tokens at which the faithful curve [(tokens, loss), ...] (tokens
    increasing, starting at `tokens`) reaches `loss`, over `tokens`: linear in log tokens between
    the first pair of points that brackets it. Outside the curve nothing is made up: ">" with the
    last point's ratio when `loss` is below every point, "<" with 1 when above the first."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l1 <= loss <= l0:
            frac = (l0 - loss) / (l0 - l1) if l0 > l1 else 0.0
            return math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))) / tokens, ""
    if loss > curve[0][1]:
        return 1.0, "<"
    return curve[-1][0] / tokens, ">"


def measure(data, tokens, curve_multiples=(2, 4), workers=2, sweeps=SWEEPS, results=None, log=print):
    """Every run of the bench; returns {"sweeps", "best", "runs": {(arm, lr, tokens, seed): loss},
    "losses": {arm: [seed 0, seed 1]}, "curves": [seed 0's, seed 1's], "ratios": {arm: [(ratio,
    bound) per seed]}}. `results`, a JSON-lines file, keeps every finished run: a bench stopped
    and started again with the same file (and the same data) runs only what is missing."""
    sweeps, runs = dict(sweeps), {}
    if results and os.path.exists(results):
        with open(results) as f:
            runs.update((tuple(r["job"]), r["loss"]) for r in map(json.loads, f))
    with ProcessPoolExecutor(workers) as pool:
        def run(jobs):  # the longest first, so that no worker waits alone at the end
            jobs = sorted(set(jobs) - set(runs), key=lambda job: -job[2])
            t0 = time.time()
            futures = {pool.submit(train, (*job, data)): job for job in jobs}
            for future in as_completed(futures):
                runs[futures[future]] = future.result()
                if results:
                    with open(results, "a") as f:
                        f.write(json.dumps(dict(job=futures[future], loss=runs[futures[future]])) + "\n")
            log(f"  {len(jobs)} runs in {time.time() - t0:.0f} s")

        def best_lr(arm):
            return min(sweeps[arm], key=lambda lr: runs[(arm, lr, tokens, 0)])

        run([(arm, lr, tokens, 0) for arm, lrs in sweeps.items() for lr in lrs])
        for _ in range(MAX_WIDENINGS):
            wider = {arm: widened(lrs, best_lr(arm)) for arm, lrs in sweeps.items()}
            wider = {arm: lrs for arm, lrs in wider.items() if lrs}
            if not wider:
                break
            log(f"  best lr at its sweep's edge: {', '.join(wider)}; widening")
            sweeps.update(wider)
            run([(arm, lr, tokens, 0) for arm, lrs in wider.items() for lr in lrs])
        best = {arm: best_lr(arm) for arm in sweeps}

        # each curve point at its own best lr: a longer run may want another (3x more runs a
        # point, the 1x best and its sweep neighbours, widened as the sweeps are)
        def curve_best(k):
            return min(curve_lrs[k], key=lambda lr: runs[("faithful", lr, k * tokens, 0)])

        i = sweeps["faithful"].index(best["faithful"])
        curve_lrs = {k: sweeps["faithful"][max(0, i - 1):i + 2] for k in curve_multiples}
        run([(arm, best[arm], tokens, 1) for arm in sweeps] +
            [("faithful", lr, k * tokens, 0) for k, lrs in curve_lrs.items() for lr in lrs])
        for _ in range(MAX_WIDENINGS):
            wider = {k: lrs for k in curve_lrs if (lrs := widened(curve_lrs[k], curve_best(k)))}
            if not wider:
                break
            curve_lrs.update(wider)
            run([("faithful", lr, k * tokens, 0) for k, lrs in wider.items() for lr in lrs])
        curve_lr = {1: best["faithful"], **{k: curve_best(k) for k in curve_multiples}}
        run([("faithful", curve_lr[k], k * tokens, 1) for k in curve_multiples])
    losses = {arm: [runs[(arm, best[arm], tokens, seed)] for seed in (0, 1)] for arm in sweeps}
    curves = [[(k * tokens, runs[("faithful", curve_lr[k], k * tokens, seed)]) for k in curve_lr]
              for seed in (0, 1)]
    ratios = {arm: [tokens_ratio(losses[arm][seed], tokens, curves[seed]) for seed in (0, 1)] for arm in sweeps}
    return dict(sweeps=sweeps, best=best, runs=runs, losses=losses, curves=curves, ratios=ratios,
                curve_lrs=curve_lrs, curve_lr=curve_lr)


def report(result, tokens, train_tokens, unit):
    """The bench's table: every sweep, each seed's faithful curve, each arm's losses and ratios."""
    sweeps, best, runs = result["sweeps"], result["best"], result["runs"]
    print(f"\nval loss ({unit}) at the end of each schedule; {tokens:,} tokens a run "
          f"= {tokens / train_tokens:.2f} epochs of the training split\n")
    for arm, lrs in sweeps.items():
        cells = [f"{lr:g}: {runs[(arm, lr, tokens, 0)]:.4f}" for lr in lrs]
        edge = " (best at the sweep's edge)" if best[arm] in (lrs[0], lrs[-1]) else ""
        print(f"  {arm:9s} lr sweep (seed 0): " + ", ".join(cells) + edge)
    for k, lrs in result["curve_lrs"].items():
        cells = [f"{lr:g}: {runs[('faithful', lr, k * tokens, 0)]:.4f}" for lr in lrs]
        print(f"  faithful  lr sweep at {k}x the tokens (seed 0): " + ", ".join(cells))
    for seed, curve in enumerate(result["curves"]):
        print(f"\n  faithful curve, seed {seed}: " + ", ".join(
            f"{t:,} tokens ({t / train_tokens:.1f} ep, lr {lr:g}) {loss:.4f}"
            for (t, loss), lr in zip(curve, result["curve_lr"].values())))
    print(f"\n  {'arm':9s} {'best lr':>8s} {'seed 0':>7s} {'seed 1':>7s}  "
          "tokens the faithful recipe needs / tokens used (seed 0, seed 1)")
    for arm in sweeps:
        losses = result["losses"][arm]
        ratios = " ".join(f"{bound}{ratio:.2f}x" for ratio, bound in result["ratios"][arm])
        print(f"  {arm:9s} {best[arm]:>8g} {losses[0]:7.4f} {losses[1]:7.4f}  {ratios}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DEFAULT_INPUT), help="Tiny Shakespeare's input.txt")
    p.add_argument("--data", choices=("chars", "gpt2"), default="chars",
                   help="characters, or GPT-2 BPE tokens remapped to those that occur")
    p.add_argument("--tokens", type=int, help="tokens per run (default: 524288 chars, 131072 gpt2)")
    p.add_argument("--curve", default="2,4", help="the faithful curve's token multiples (default 2,4)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--results", help="a JSON-lines file that keeps finished runs: run again to resume")
    args = p.parse_args(argv)
    if not os.path.exists(args.input):
        print(f"error: {args.input}: no such file; pass --input PATH of Tiny Shakespeare's input.txt",
              file=sys.stderr)
        return 2
    try:
        curve = tuple(sorted({int(k) for k in args.curve.split(",")}))
    except ValueError:
        curve = ()
    if not curve or curve[0] < 2:
        print(f"error: --curve {args.curve}: give integer multiples >= 2, comma-separated, e.g. 2,4,8",
              file=sys.stderr)
        return 2
    tokens = args.tokens or DEFAULT_TOKENS[args.data]
    text = Path(args.input).read_text()
    data = load_chars(text) if args.data == "chars" else load_gpt2(text)
    print(f"{args.data}: {len(data[0]):,} training and {len(data[1]):,} val tokens, vocabulary {data[2]:,}")
    t0 = time.time()
    result = measure(data, tokens, curve, args.workers, results=args.results)
    print(f"{len(result['runs'])} runs in {time.time() - t0:.0f} s")
    report(result, tokens, len(data[0]), "nats/char" if args.data == "chars" else "nats/GPT-2 token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
