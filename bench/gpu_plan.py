"""The rows of bench/gpu.py in the order they run, each with the work its estimate prices
(bench/gpu_estimate.py). The parent plans them to print the estimate; its worker plans the same
rows to run the ones it is sent by name."""

from dataclasses import dataclass, field

import torch

from bench import gpu_estimate
from bench.gpu_hellaswag import hellaswag_agreement
from bench.gpu_rows import checkpoint, fp16, memory, probe, throughput
from models.gpt2 import GPT, GPTConfig
from trainer.batch_size import sequences_per_rank
from trainer.memory import checkpoint_bytes

KINDS = ("throughput", "memory", "probe", "checkpoint", "fp16", "hellaswag")
HELLASWAG_S_PER_EXAMPLE = 0.05  # tokenise and score in bf16 and fp32, batches of 8


@dataclass
class Row:
    name: str
    function: object
    args: tuple
    work: gpu_estimate.Work = field(default_factory=gpu_estimate.Work)


@dataclass
class Model:
    """What the estimate needs of the model of some flags (built on meta: no memory)."""

    flags: list
    cfg: object  # its TrainConfig
    micro_batch: int  # the rows' micro-batch: the fit table's for this GPU
    flops_per_token: float  # of training (forward and backward)
    parameters: int

    @classmethod
    def of(cls, s, flags):
        cfg = s.config(flags)
        with torch.device("meta"):
            model = GPT(GPTConfig(**cfg.model_config()))
        return cls(flags, cfg, s.micro_batch or s.fit_table_micro_batch(cfg) or 1,
                   model.flops_per_token(cfg.seq_len), model.num_params())

    def training(self, micro_batches, recompute=False):
        """FLOPs of that many micro-batches' forward and backward (recompute: the forward twice,
        under activation checkpointing)."""
        tokens = micro_batches * self.micro_batch * self.cfg.seq_len
        return tokens * self.flops_per_token * (4 / 3 if recompute else 1)

    def compiled_as(self, recompute=False):
        """Which compilation it needs: the same key, the same graphs (a warm cache)."""
        return " ".join(self.flags) + " +ac" * recompute


def throughput_rows(s):
    model, rows = Model.of(s, s.model), []
    for compiled in (False, True):
        for fsdp in (False, True):
            for ac in (False, True):
                name = (f"throughput {'compiled' if compiled else 'eager'} {'fsdp' if fsdp else 'ddp'}"
                        f"{' +ac' * ac}")
                work = gpu_estimate.Work(model.training((s.warmup + s.steps) * 2, ac),  # 2 micro-steps
                                         model.compiled_as(ac) if compiled else "")
                rows.append(Row(name, throughput, (s, compiled, fsdp, ac), work))
    return rows


def memory_rows(s):
    rows = []
    for compiled in (False, True):
        for preset, flags in s.presets.items():
            model = Model.of(s, flags)
            work = gpu_estimate.Work(model.training(3), model.compiled_as() if compiled else "",
                                     0 if compiled else model.cfg.n_layer)  # traced once, for both
            mode = "compiled" if compiled else "eager"
            rows.append(Row(f"memory {mode} {preset}", memory, (s, preset, compiled), work))
    return rows


def probe_rows(s):
    rows = []
    for fsdp in (False, True):
        for name in s.probe_presets:
            model = Model.of(s, s.presets[name])
            share = sequences_per_rank(model.cfg.total_batch_size, model.cfg.seq_len, 1)
            tries = max(share.bit_length() - model.micro_batch.bit_length(), 0) + 1  # halving to it
            # each try: two steps of two micro-steps (a failed one stops early: priced alike); then a step
            work = gpu_estimate.Work(model.training(4 * tries + 2))
            rows.append(Row(f"probe {'fsdp ' * fsdp}{name}", probe, (s, name, fsdp), work))
    return rows


def checkpoint_rows(s):
    rows = []
    for fsdp in (False, True):
        for name in s.probe_presets if fsdp else s.presets:
            model = Model.of(s, s.presets[name])
            written = checkpoint_bytes(model.parameters)
            work = gpu_estimate.Work(model.training(1), written_bytes=written, read_bytes=written * fsdp,
                                     fixed_s=gpu_estimate.ROW_START_S * fsdp)  # the run it loads into
            rows.append(Row(f"checkpoint {'fsdp ' * fsdp}{name}", checkpoint, (s, name, fsdp), work))
    return rows


def fp16_rows(s):
    return [Row("fp16 GradScaler step", fp16, (s,), gpu_estimate.Work(Model.of(s, s.model).training(1)))]


def hellaswag_rows(s):
    work = gpu_estimate.Work(fixed_s=HELLASWAG_S_PER_EXAMPLE * s.hellaswag_examples)
    return [Row("hellaswag bf16 vs fp32", hellaswag_agreement, (s,), work)]


def plan_rows(s, kinds):
    """[Row] of these kinds, in KINDS' order: the probe rows before the checkpoint rows, whose
    writes may run past the budget."""
    rows_of = {"throughput": throughput_rows, "memory": memory_rows, "probe": probe_rows,
               "checkpoint": checkpoint_rows, "fp16": fp16_rows, "hellaswag": hellaswag_rows}
    return [row for kind in KINDS if kind in kinds for row in rows_of[kind](s)]
