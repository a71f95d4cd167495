"""Continuation scoring, shared by HellaSwag and CORE.

A benchmark renders each example as rows of token ids (context + one candidate continuation) and
masks (1 on the continuation's tokens); the model reads the rows and we add up the
log-likelihood it gives each continuation token, and whether its greedy choice was that token.

    rows, masks = crop_left(rows, masks, keep)               # the last `keep` tokens of each row
    scores = score_rows(model_fn, rows, masks, device, n_vocab)
    scores.loglik, scores.n_tokens, scores.greedy           # one value per row

`model_fn(idx (B, T)) -> logits (B, T, V)`; a Logits (our model or a transformers causal LM)
computes the logits of the scored positions only.

Ranks share the examples: rank r takes examples r, r + world_size, ... and the counts are summed
over ranks, so every rank ends with the totals of a single-process run.
"""

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F

from pipeline.tokenizer import GPT2_VOCAB_SIZE


class RowScores(NamedTuple):
    loglik: torch.Tensor  # float64 (rows,): summed log-likelihood of the continuation tokens
    n_tokens: torch.Tensor  # long (rows,): continuation tokens scored
    greedy: torch.Tensor  # bool (rows,): the argmax prediction was right at every one of them


def crop_left(rows, masks, keep):
    """Rows (and their masks) cut to their last `keep` tokens. The model reads all but a row's
    last token, so `keep` is the context + 1 to fill the context (lm-evaluation-harness), or the
    context itself to crop as nanochat does (it reads the last token too and ignores its output)."""
    return [row[-keep:] for row in rows], [m[-keep:] for m in masks]


def continuation_fits(mask, keep):
    """Whether a row's continuation can be scored in a window of `keep` tokens: its first token
    needs one token before it to be predicted from."""
    return sum(mask) <= keep - 1


@torch.no_grad()
def score_rows(model_fn, rows, masks, device, n_vocab, autocast_dtype=None):
    """Score the masked tokens of `rows` (lists of token ids) in one forward pass (see RowScores).

    The rows are right-padded to the longest; causal attention keeps the padding from touching
    real positions, and the mask leaves it unscored. The model reads each row but its last token
    (which is only ever a target), so a row of max_length + 1 tokens fits a context of max_length.
    """
    T = max(len(row) for row in rows) - 1
    inputs = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.zeros(len(rows), T, dtype=torch.long)
    scored = torch.zeros(len(rows), T, dtype=torch.bool)  # position t predicts a continuation token
    for i, (row, m) in enumerate(zip(rows, masks)):  # lists, or arrays (CORE keeps its rows so)
        inputs[i, : len(row) - 1] = torch.as_tensor(row[:-1])
        targets[i, : len(row) - 1] = torch.as_tensor(row[1:])
        scored[i, : len(row) - 1] = torch.as_tensor(m[1:]).bool()
    inputs, targets, scored = inputs.to(device), targets.to(device), scored.to(device)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        # only the positions that predict a continuation token, so the output layer and the
        # vocabulary-wide softmax run on a fraction of the rows
        logits = model_fn(inputs, scored) if isinstance(model_fn, Logits) else model_fn(inputs)[scored]
    # cropping to the tokenizer's vocabulary drops a padded vocabulary's never-seen ids (exported
    # HF models lack them)
    selected = logits[:, :n_vocab].float()
    wanted = targets[scored]
    token_ll = -F.cross_entropy(selected, wanted, reduction="none")
    row_of = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(scored)[scored]
    loglik = torch.zeros(len(rows), dtype=torch.float64, device=device)
    loglik.index_add_(0, row_of, token_ll.double())
    misses = torch.zeros(len(rows), dtype=torch.long, device=device)
    misses.index_add_(0, row_of, (selected.argmax(dim=-1) != wanted).long())
    return RowScores(loglik.cpu(), scored.sum(dim=1).cpu(), (misses == 0).cpu())


class Logits:
    """The model_fn of our models or a transformers causal LM (GPT2LMHeadModel, Qwen3ForCausalLM,
    ...: all name their output layer `lm_head`): `model_fn(idx)` -> logits (B, T, V), and
    `model_fn(idx, where)` -> the logits at the positions where `where` (B, T) is True only (N, V),
    in the order of logits[where]: a hook hands the output layer (a third of a 124M forward) just
    those positions' hidden states. `.shape` is (layers, width), which finds the OpenAI GPT-2 of
    the same size."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        # our configs name the shape n_layer and n_embd; transformers' (GPT-2's too, by alias)
        # num_hidden_layers and hidden_size
        layers = getattr(self.config, "n_layer", None) or self.config.num_hidden_layers
        self.shape = (layers, getattr(self.config, "n_embd", None) or self.config.hidden_size)

    def __call__(self, idx, where=None):
        hook = None
        if where is not None:
            hook = self.model.lm_head.register_forward_pre_hook(lambda module, args: (args[0][where],))
        try:
            out = self.model(idx)
        finally:
            if hook is not None:
                hook.remove()
        return out[0] if isinstance(out, tuple) else out.logits


def check_gpt2_vocab(model, what, benchmark):
    """The benchmarks are rendered in GPT-2 tokens: a char-level model cannot be scored."""
    if model.config.vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(f"{what}: vocabulary of {model.config.vocab_size} tokens, but {benchmark} "
                         f"needs a GPT-2-tokenizer model ({GPT2_VOCAB_SIZE}+)")


def rank_and_world(rank=None, world_size=None):
    """Explicit values win; otherwise take them from torch.distributed when it is running."""
    running = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if running else 0
    if world_size is None:
        world_size = dist.get_world_size() if running else 1
    if world_size > 1 and not running:
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialized")
    return rank, world_size


def sum_over_ranks(counts, device, world_size):
    """`counts` (a CPU tensor) summed over ranks, on the CPU again. The tensor travels on
    `device`: NCCL reduces CUDA tensors only."""
    if world_size == 1:
        return counts
    counts = counts.to(device)
    dist.all_reduce(counts)
    return counts.cpu()


def max_over_ranks(values, device, world_size):
    """`values` (a CPU tensor) maximised over ranks, on the CPU again."""
    if world_size == 1:
        return values
    values = values.to(device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.cpu()
