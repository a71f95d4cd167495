"""Recipes (--recipe): which model a run trains, and how it optimises it.

faithful (the default): GPT-2 (models/gpt2.py) with AdamW, decay on matrices and embeddings,
    linear warmup then cosine to min_lr: build-nanogpt's reproduction of GPT-2 124M.
speedrun: the modern block (models/modern.py) with Muon on the blocks' matrices and AdamW on the
    embedding, the output layer and the RMSNorm gains, each with its own learning rate, on a
    warmup-stable-decay schedule with Muon's momentum warmed up: modded-nanogpt's and nanochat's
    simple, well-understood gains (README, "The speedrun recipe").

The schedules are pure functions of the step, set on the optimizers before every step, so a
resumed run continues them exactly. The optimizers of a run are one `Optimizers` list: saved and
loaded by parameter name as one state (torch.distributed.checkpoint takes a list), stepped,
zeroed and unscaled (GradScaler) together.
"""

import math
from collections import ChainMap

import torch

from models import build_model
from trainer.muon import Muon, ns_dtype_for

RECIPES = ("faithful", "speedrun")

# --recipe speedrun: what it changes in any preset. modded-nanogpt's optimizer track at 124M
# (records/track_3_optimization, record #36): Muon lr 0.025, momentum 0.95 (Nesterov), weight
# decay 0.05; AdamW betas (0.8, 0.95), eps 1e-10, no weight decay; no warmup, then the learning
# rate flat for 30% of the steps and linear to 0 over the last 70% (modded's cooldown_frac 0.7).
SPEEDRUN = dict(lr=0.025, weight_decay=0.05, beta1=0.8, beta2=0.95, eps=1e-10, warmup_steps=0,
                min_lr=0.0, bias=False)
# ... and per size: heads of 128 channels (modded's 124M has 6), and at 124M the track's budget,
# 3,250 steps x 524,288 tokens = 1.70B tokens (the faithful recipe: 10B). The larger sizes keep
# their faithful token budgets: the literature expects the gain to shrink with size (~1.1x at
# 1.2B, arXiv 2509.02046), so a shorter budget there is a claim to measure on GPUs first.
SPEEDRUN_SIZES = {
    "gpt2-124m": dict(n_head=6, max_steps=3_250),
    "gpt2-350m": dict(n_head=8),
    "gpt2-774m": dict(n_head=10),
    "gpt2-1558m": dict(n_head=25),  # 1,600 channels: heads of 64
}
MUON_MOMENTUM_START = 0.85  # modded-nanogpt's warmup: 0.85 -> --muon-momentum


def recipe_overrides(recipe, preset):
    """The TrainConfig values --recipe sets on top of --preset (a --config file and flags come
    after, and win)."""
    if recipe != "speedrun":
        return {}
    return {**SPEEDRUN, **SPEEDRUN_SIZES.get(preset, {})}


def build_model_for(cfg):
    """The run's model, on the current default device (meta under FSDP)."""
    return build_model(cfg.model_config())


# ----------------------------------------------------------------------------------------------
# Schedules: pure functions of the step

def get_lr(step, cfg):
    """Linear warmup for warmup_steps, then cosine decay from lr to min_lr at lr_decay_steps (0:
    max_steps; a resumed run keeps its own, see trainer/run_folder.py), then min_lr."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    decay_ratio = (step - cfg.warmup_steps) / max(decay_steps - cfg.warmup_steps, 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def wsd_multiplier(step, cfg):
    """Warmup-stable-decay, as a multiplier of each group's own learning rate: linear warmup over
    warmup_steps, 1 until the last decay_fraction of the horizon (lr_decay_steps, 0: max_steps),
    then linear to min_lr / lr, which it keeps after the horizon."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    horizon = cfg.lr_decay_steps or cfg.max_steps
    decay_start = horizon * (1 - cfg.decay_fraction)
    if step < decay_start:
        return 1.0
    left = max(horizon - step, 0) / max(horizon - decay_start, 1)  # 1 -> 0
    return floor + (1 - floor) * left


def scheduled_lr(step, cfg):
    """The learning rate `step` runs at (the speedrun's: Muon's), as logged."""
    return get_lr(step, cfg) if cfg.recipe == "faithful" else cfg.lr * wsd_multiplier(step, cfg)


def muon_momentum(step, cfg):
    """Muon's momentum: linear from 0.85 to --muon-momentum over --muon-momentum-warmup steps."""
    if step >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    frac = step / cfg.muon_momentum_warmup
    return (1 - frac) * MUON_MOMENTUM_START + frac * cfg.muon_momentum


def set_schedule(optimizer, step, cfg):
    """Set every group's learning rate (and Muon's momentum) for `step`; returns the lr to log
    (the speedrun's: Muon's)."""
    if cfg.recipe == "faithful":
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
    multiplier = wsd_multiplier(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier
        if "ns_steps" in group:  # a Muon group
            group["momentum"] = muon_momentum(step, cfg)
    return cfg.lr * multiplier


# ----------------------------------------------------------------------------------------------
# Optimizers

class Optimizers(list):
    """The optimizers of one model, used as one: `param_groups` and `state` span them all,
    `step` and `zero_grad` run each."""

    @property
    def param_groups(self):
        return [group for optimizer in self for group in optimizer.param_groups]

    @property
    def state(self):
        return _States(*(optimizer.state for optimizer in self))

    def step(self):
        for optimizer in self:
            optimizer.step()

    def zero_grad(self, set_to_none=True):
        for optimizer in self:
            optimizer.zero_grad(set_to_none=set_to_none)


class _States(ChainMap):
    """The optimizers' states as one mapping. Each is a defaultdict: reading a key of one
    optimizer through another (ChainMap tries each in turn) would plant an empty state there."""

    def __getitem__(self, param):
        for states in self.maps:
            if param in states:
                return states[param]
        raise KeyError(param)

    def clear(self):  # ChainMap's clears the first map only
        for states in self.maps:
            states.clear()


def build_optimizer(model, cfg, device, verbose=False):
    """The run's Optimizers, over `model`'s parameters as they are now (under FSDP: this rank's
    shards, so build after wrapping)."""
    if cfg.recipe == "faithful":
        return Optimizers([model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                                     cfg.eps, device.type, verbose=verbose)])
    groups = speedrun_groups(model)
    adamw_groups = [dict(params=groups[name], base_lr=lr, lr=lr) for name, lr in
                    (("embedding", cfg.embedding_lr), ("head", cfg.head_lr), ("scalars", cfg.scalar_lr))
                    if groups[name]]
    adamw = torch.optim.AdamW(adamw_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                              weight_decay=0.0, fused=device.type in ("cuda", "cpu"))
    ns_dtype = ns_dtype_for(cfg.muon_ns_dtype, device)
    muon = Muon([dict(params=groups["matrices"], base_lr=cfg.lr)], lr=cfg.lr,
                weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, nesterov=True,
                ns_dtype=ns_dtype)
    if verbose:
        count = {name: sum(p.numel() for p in params) for name, params in groups.items()}
        print(f"optimizer: Muon ({str(ns_dtype).removeprefix('torch.')} Newton-Schulz) on "
              f"{len(groups['matrices'])} matrices ({count['matrices']:,} params); AdamW on the "
              f"embedding ({count['embedding']:,}), the output layer ({count['head']:,}) and "
              f"{len(groups['scalars'])} gains ({count['scalars']:,})")
    return Optimizers([muon, adamw])


def speedrun_groups(model):
    """{"matrices": the blocks' 2-D weights (Muon), "embedding", "head", "scalars": the rest
    (AdamW)}, in the model's parameter order."""
    groups = {"matrices": [], "embedding": [], "head": [], "scalars": []}
    for name, p in model.named_parameters():
        if name == "transformer.wte.weight":
            groups["embedding"].append(p)
        elif name == "lm_head.weight":
            groups["head"].append(p)
        elif name.startswith("transformer.h.") and p.dim() == 2:
            groups["matrices"].append(p)
        else:
            groups["scalars"].append(p)
    return groups
