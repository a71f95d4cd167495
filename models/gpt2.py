"""GPT-2, readable top to bottom.

The module layout and parameter names follow OpenAI's GPT-2 as Hugging Face stores it
(transformer.wte, transformer.h.0.attn.c_attn, ..., lm_head), so loading OpenAI's weights and
exporting back to a `GPT2LMHeadModel` folder is a name-for-name copy: see hf_gpt2.py.

References:
1) OpenAI's GPT-2 TensorFlow code: https://github.com/openai/gpt-2/blob/master/src/model.py
2) nanoGPT: https://github.com/karpathy/nanoGPT/blob/master/model.py
"""

import inspect
import math
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum context length
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 (faster matmuls)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # 0 for pretraining; try 0.1+ for fine-tuning
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2

    @classmethod
    def from_dict(cls, d):
        """Build from a dict (e.g. a checkpoint's config["model"]); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self):
        return asdict(self)


# The four OpenAI GPT-2 sizes, plus a tiny one for tests. 50304 = 50257 padded (see above).
MODEL_CONFIGS = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=64),
}
MODEL_ALIASES = {"124m": "gpt2", "350m": "gpt2-medium", "774m": "gpt2-large", "1558m": "gpt2-xl"}


def get_config(name, **overrides):
    """A fresh GPTConfig for a named size ("gpt2", "124m", "tiny", ...), with field overrides."""
    key = MODEL_ALIASES.get(name.lower(), name.lower())
    if key not in MODEL_CONFIGS:
        choices = ", ".join(list(MODEL_CONFIGS) + list(MODEL_ALIASES))
        raise ValueError(f"unknown model size {name!r}: choose one of {choices}")
    return replace(MODEL_CONFIGS[key], **overrides)


def unwrap(model):
    """The plain GPT inside DDP (.module) and/or torch.compile (._orig_mod) wrappers.

    Save, evaluate and generate with unwrap(model): its state_dict keys carry no `module.` or
    `_orig_mod.` prefixes, and it runs eagerly (generation's ever-changing shapes would make
    a compiled model recompile).
    """
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):  # DistributedDataParallel
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding.

    One buffer per layer of shape (B, n_head, max_len, head_dim), allocated on first use with the
    keys' dtype and device (so it follows autocast). `pos` counts the positions already stored.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.pos = 0

    def update(self, layer, k, v):
        """Store the new keys/values (B, nh, T, hs) of `layer`; return all of them so far."""
        B, nh, T, hs = k.shape
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {T} positions > max_len {self.max_len}")
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        end = self.pos + T
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key, value projections for all heads, in one batched matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection: writes into the residual stream (see the scaled init in GPT)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, layer=0):
        B, T, C = x.size()  # batch, sequence length, embedding dim
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        start = 0
        if kv_cache is not None:
            start = kv_cache.pos
            k, v = kv_cache.update(layer, k, v)  # now (B, nh, start + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if start == 0:
            # plain causal attention (flash attention on GPU)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            # one new token attends to every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # T new tokens after `start` cached ones: query i sees keys 0 .. start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), kv_cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


def allocate(model, device):
    """Give a model built on the meta device uninitialised memory on `device`: new Parameters,
    each shared one (a tied weight) still shared. Not nn.Module.to_empty, which swaps tensors in
    place and so cannot run on the fake tensors of a memory trace (trainer/memory_trace.py)."""
    made = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                if id(p) not in made:
                    made[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                               requires_grad=p.requires_grad)
                module._parameters[name] = made[id(p)]
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return model


class GPT(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        config = config or GPTConfig()
        self.config = config
        device = torch.get_default_device()
        # built on the meta device, then allocated and initialised once (init_weights): each
        # module's default initialisation, which init_weights replaces, would be drawn for
        # nothing (a minute of CPU for gpt2-xl)
        with torch.device("meta"):
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                    wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
                    drop=nn.Dropout(config.dropout),
                    h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                    ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
                )
            )
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (as GPT-2): the output layer reuses the token embedding matrix
        self.transformer.wte.weight = self.lm_head.weight

        # recompute each block's activations in backward instead of storing them (set by the
        # trainer's --activation-checkpointing): ~1/3 more compute for a much larger micro-batch
        self.activation_checkpointing = False

        if device.type != "meta":  # on the meta device the trainer allocates each rank's part
            allocate(self, device)
            self.init_weights()

    def to_empty(self, *, device, recurse=True):
        """nn.Module.to_empty, the output layer still tied to the token embeddings (from the
        meta device each module gets a new Parameter)."""
        super().to_empty(device=device, recurse=recurse)
        if self.transformer.wte.weight is not self.lm_head.weight:
            self.transformer.wte.weight = self.lm_head.weight
        return self

    @torch.no_grad()
    def init_weights(self, fill=None):
        """GPT-2's initialisation: N(0, 0.02) for Linear and Embedding weights, the residual
        projections (c_proj) scaled down, zero biases, LayerNorms the identity. The values come
        from torch's global generator, each parameter drawn once, in the order of the modules.

        fill(param, init) gives `param` the values that `init` (an in-place function of
        torch.nn.init) draws for a tensor of the parameter's full shape; by default in place.
        A model sharded by FSDP passes one that draws each full tensor and keeps its shard."""
        fill = fill or (lambda param, init: init(param))
        # GPT-2 paper: scale the weights of residual projections by 1/sqrt(N), N = the number of
        # residual additions = 2 per layer (attention and MLP), so the stream's variance stays ~1
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        filled = set()  # the tied wte/lm_head weight is met twice
        for name, module in self.named_modules():
            for param, init in self._initialisers(name, module, residual_std):
                if id(param) not in filled:
                    filled.add(id(param))
                    fill(param, init)

    @staticmethod
    def _initialisers(name, module, residual_std):
        """(parameter, init) pairs of one module for init_weights."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = residual_std if name.endswith("c_proj") else 0.02
            yield module.weight, partial(torch.nn.init.normal_, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            yield module.weight, torch.nn.init.ones_
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
            yield module.bias, torch.nn.init.zeros_

    def num_params(self, non_embedding=False):
        """Number of parameters (the tied embedding/output matrix counted once).

        non_embedding=True leaves out the position embeddings (as nanoGPT does: the token
        embeddings stay in because, tied, they are also the output layer's weights).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward) for MFU, as in PaLM appendix B / nanoGPT:
        6N for the matmuls with the weights, plus 12*L*H*Q*T for attention scores and values."""
        cfg = self.config
        T = seq_len or cfg.block_size
        L, H, Q = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head
        return 6 * self.num_params(non_embedding=True) + 12 * L * H * Q * T

    def forward(self, idx, targets=None, kv_cache=None):
        """idx: (B, T) token ids -> (logits (B, T, vocab_size), loss or None).

        With `targets` (B, T) the loss is the mean cross-entropy over positions whose target is
        not -1. With a KVCache, idx holds only the new tokens, which sit at positions
        kv_cache.pos, kv_cache.pos + 1, ...; the cache is advanced past them.
        """
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's context "
                f"(block_size {self.config.block_size})"
            )
        x = self.embed(idx, start)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)  # restores the RNG: same dropout
            else:
                x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.head(x, targets)

    def embed(self, idx, start=0):
        """Token plus position embeddings of idx (B, T), whose first token sits at `start`."""
        pos = torch.arange(start, start + idx.size(1), dtype=torch.long, device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def head(self, x, targets=None):
        """The last LayerNorm, the output layer and, with targets, the loss: (logits, loss)."""
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    def configure_optimizer(
        self,
        weight_decay=0.1,
        learning_rate=6e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
        device_type="cpu",
        verbose=True,
    ):
        """AdamW with weight decay on the matrices and embeddings (dim >= 2) only: biases and
        LayerNorm gains are not decayed. The fused kernel wherever torch has it (CUDA, and CPU
        since torch 2.4), else foreach."""
        params = [p for p in self.parameters() if p.requires_grad]  # tied weight listed once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused_devices = ("cuda", "cpu", "mps")  # where torch 2.4+ implements fused AdamW
        use_fused = device_type in fused_devices and "fused" in inspect.signature(torch.optim.AdamW).parameters
        kind = {"fused": True} if use_fused else {"foreach": True}
        if verbose:
            print(
                f"optimizer: {len(decay)} decayed tensors ({sum(p.numel() for p in decay):,} params), "
                f"{len(no_decay)} non-decayed ({sum(p.numel() for p in no_decay):,} params); "
                f"AdamW {'fused' if use_fused else 'foreach'}"
            )
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **kind)

    @torch.no_grad()
    def generate(
        self,
        idx,
        max_new_tokens,
        temperature=1.0,
        top_k=None,
        generator=None,
        use_kv_cache=True,
        vocab_size=None,
        should_stop=None,
    ):
        """Continue the prompts idx (B, T) by max_new_tokens sampled tokens; returns (B, T + n).

        temperature 0 means greedy. top_k keeps the k most likely tokens. `generator` (a seeded
        torch.Generator) makes samples reproducible. `vocab_size` forbids ids >= vocab_size (the
        padding rows of a padded vocabulary, or a char vocabulary smaller than the model's).
        With use_kv_cache each step feeds only the new token; the tokens equal those of the
        recompute path. Once the sequence outgrows block_size, the context is cropped to the last
        block_size tokens and recomputed every step (positions shift, so the cache cannot serve).
        `should_stop()`, polled before each token, ends generation early: None is returned.
        """
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        cache = KVCache(self.config.n_layer, block_size) if use_kv_cache else None
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                self.train(was_training)
                return None
            if cache is not None and idx.size(1) <= block_size:
                logits, _ = self(idx[:, cache.pos :], kv_cache=cache)  # only the unseen tokens
            else:
                logits, _ = self(idx[:, -block_size:])
            logits = logits[:, -1, :].float()
            if vocab_size is not None and vocab_size < logits.size(-1):
                logits[:, vocab_size:] = -float("inf")
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                if generator is not None and generator.device != probs.device:
                    probs = probs.to(generator.device)  # sample where the generator lives
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next.to(idx.device)), dim=1)
        self.train(was_training)
        return idx
