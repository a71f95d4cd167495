"""The speedrun recipe's model: GPT-2's decoder with today's block, readable top to bottom.

What changes from models/gpt2.py, and why (each one is in modded-nanogpt's and nanochat's models):
- rotary position embeddings instead of learned positions (RoFormer, arXiv 2104.09864);
- RMSNorm everywhere instead of LayerNorm, also right after the token embedding, and on each
  head's queries and keys before the rotation (QK-norm: attention logits stay bounded, so the
  large learning rates of Muon do not blow them up);
- no biases; separate q, k, v projections, so that Muon orthogonalises each of them rather than
  one fused (3C, C) matrix;
- a gated SiLU MLP (SwiGLU, arXiv 2002.05202) with the Llama width, 8/3 C rounded up to 64, so
  the MLP has GPT-2's parameter count;
- the attention and MLP output projections and an untied output layer start at zero: every block
  starts as the identity, and the first steps shape the residual stream instead of undoing noise.

The components are those of Qwen3, an architecture transformers ships: models/hf.py exports a
trained model to a Qwen3ForCausalLM folder that loads with no remote code. The RMSNorm after the
embedding is not in Qwen3, but it acts on each embedding row alone, so the export folds it into
the embedding rows. Left out on purpose (each would need its own measured gain): logit softcap,
value embeddings, U-net skips, sliding windows.
"""

import math
from dataclasses import asdict, dataclass, fields
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from models.gpt2 import GPT, allocate

RMS_NORM_EPS = 1e-6  # Qwen3's: the export must normalise exactly as training did


@dataclass
class ModernConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6  # head size 128, as modded-nanogpt's 124M
    n_embd: int = 768
    dropout: float = 0.0
    rope_base: float = 10000.0
    arch: str = "modern"  # models.build_model reads it from a checkpoint's config

    @property
    def mlp_hidden(self):
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self):
        return asdict(self)


def rotary(start, T, head_dim, base, device):
    """(cos, sin), each (T, head_dim / 2) in fp32, of positions start .. start + T - 1."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(start, start + T, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each pair (x[i], x[i + head_dim/2]) of x (B, nh, T, hs) by its position's angle
    (the half-split pairing of GPT-NeoX and Llama, so the weights export as they are)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=RMS_NORM_EPS)  # per head, one gain shared
        self.k_norm = nn.RMSNorm(self.head_dim, eps=RMS_NORM_EPS)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)  # zero at init
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, kv_cache=None, layer=0):
        B, T, C = x.size()
        # (B, T, C) -> (B, nh, T, hs); normalised per head, then rotated
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_head, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        start = 0
        if kv_cache is not None:
            start = kv_cache.pos
            k, v = kv_cache.update(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # T new tokens after `start` cached ones: query i sees keys 0 .. start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)  # zero at init
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm_1 = nn.RMSNorm(config.n_embd, eps=RMS_NORM_EPS)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = nn.RMSNorm(config.n_embd, eps=RMS_NORM_EPS)
        self.mlp = MLP(config)

    def forward(self, x, rope, kv_cache=None, layer=0):
        x = x + self.attn(self.norm_1(x), rope, kv_cache, layer)
        x = x + self.mlp(self.norm_2(x))
        return x


class ModernGPT(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        config = config or ModernConfig()
        self.config = config
        device = torch.get_default_device()
        with torch.device("meta"):  # then allocated and initialised once, as GPT
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                norm_e=nn.RMSNorm(config.n_embd, eps=RMS_NORM_EPS),  # after the embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                norm_f=nn.RMSNorm(config.n_embd, eps=RMS_NORM_EPS),
            ))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied, zero at init
        self.activation_checkpointing = False  # see GPT
        if device.type != "meta":  # on the meta device the trainer allocates each rank's part
            allocate(self, device)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, fill=None):
        """Embedding N(0, 1) (it is normalised next); input projections N(0, 0.5 / sqrt(C))
        (modded-nanogpt's); the projections into the residual stream and the output layer zero;
        RMSNorm gains one. `fill` as in GPT.init_weights (FSDP draws full tensors, keeps shards)."""
        fill = fill or (lambda param, init: init(param))
        std = 0.5 * self.config.n_embd ** -0.5
        for name, p in self.named_parameters():
            if name == "transformer.wte.weight":
                fill(p, partial(torch.nn.init.normal_, mean=0.0, std=1.0))
            elif name.endswith(("o_proj.weight", "down_proj.weight", "lm_head.weight")):
                fill(p, torch.nn.init.zeros_)
            elif name.endswith("proj.weight"):
                fill(p, partial(torch.nn.init.normal_, mean=0.0, std=std))
            else:  # RMSNorm gains
                fill(p, torch.nn.init.ones_)

    # The same as GPT's: they only call self(...) and read the config and module list
    generate = GPT.generate

    def num_params(self, non_embedding=False):
        """Number of parameters; non_embedding=True leaves out the token embedding (a lookup, no
        FLOPs; the untied output layer is a matmul and stays in)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token, as GPT.flops_per_token."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * T

    def forward(self, idx, targets=None, kv_cache=None):
        """As GPT.forward: (logits, loss or None); with a KVCache idx holds only the new tokens."""
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the model's context "
                             f"(block_size {self.config.block_size})")
        rope = rotary(start, T, self.config.n_embd // self.config.n_head, self.config.rope_base,
                      idx.device)
        x = self.embed(idx)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope, kv_cache, i)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.head(x, targets)

    def embed(self, idx, start=0):
        """Normalised token embeddings of idx (B, T); positions enter in attention (rotary)."""
        return self.transformer.drop(self.transformer.norm_e(self.transformer.wte(idx)))

    def head(self, x, targets=None):
        """The last RMSNorm, the output layer and, with targets, the loss: (logits, loss)."""
        logits = self.lm_head(self.transformer.norm_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

