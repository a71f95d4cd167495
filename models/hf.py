"""Our models to and from Hugging Face transformers: OpenAI's GPT-2 weights in, any checkpoint out
(GPT-2 as GPT2LMHeadModel, the speedrun's modern block as Qwen3ForCausalLM).

    model = gpt_from_hf("gpt2")                    # OpenAI's 124M (or gpt2-medium..xl, a hub id, a folder)
    export_hf(model, "hf_out/")                    # a GPT2LMHeadModel folder, GPT-2's tokenizer included

models/gpt2.py's parameter names are Hugging Face's, so both directions are a name-for-name
copy, plus a transpose: HF keeps the attention and MLP projections as Conv1D, whose weight is the
transpose of nn.Linear's.
"""

import errno
import os
import socket
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch.nn import functional as F

from models.gpt2 import MODEL_ALIASES, MODEL_CONFIGS, GPT, GPTConfig
from models.modern import RMS_NORM_EPS
from pipeline.tokenizer import GPT2_VOCAB_SIZE, save_hf_tokenizer

# HF's GPT-2 keeps these as Conv1D layers, whose weight is (in, out): transposed vs nn.Linear
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
OPENAI_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def gpt_from_hf(name_or_dir):
    """Our GPT with the weights of OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or
    124m..1558m), any hub id of a GPT-2 model, or a local GPT2LMHeadModel folder."""
    config, state = hf_weights(name_or_dir)
    model = GPT(config)
    model.load_state_dict(state)
    return model


def hf_weights(name_or_dir):
    """(GPTConfig, state dict in models/gpt2.py's names) of a Hugging Face GPT-2 (as gpt_from_hf)."""
    hf = load_hf_gpt2(str(name_or_dir))
    config = _gpt_config(hf.config, name_or_dir)
    with torch.device("meta"):  # only the names and shapes
        expected = GPT(config).state_dict()
    sd_hf, state = hf.state_dict(), {}
    for k, p in expected.items():
        src = sd_hf.get(k)
        if src is None and k == "lm_head.weight":
            src = sd_hf["transformer.wte.weight"]  # tied
        if src is None:
            raise ValueError(f"{name_or_dir!r}: no weight {k!r} in the Hugging Face model")
        if k.endswith(CONV1D):
            src = src.t()
        if src.shape != p.shape:
            raise ValueError(f"{name_or_dir!r}: {k} has shape {tuple(src.shape)}, expected {tuple(p.shape)}")
        state[k] = src.contiguous()
    return config, state


def hf_config(name_or_dir):
    """The GPTConfig of a Hugging Face GPT-2 without its weights: OpenAI's four sizes by name,
    else the folder's (or hub id's) config.json."""
    key = MODEL_ALIASES.get(str(name_or_dir).lower(), str(name_or_dir).lower())
    if key in OPENAI_SIZES:  # known shapes: no download to plan or resume a run
        return replace(MODEL_CONFIGS[key], vocab_size=GPT2_VOCAB_SIZE)
    from transformers import AutoConfig  # seconds to import: only for folders and hub ids

    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(str(name_or_dir)), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not read the GPT-2 config of {str(name_or_dir)!r} "
                         f"({str(e).strip().splitlines()[0]}): pass gpt2, gpt2-medium, gpt2-large, "
                         f"gpt2-xl or a folder written by save_pretrained") from None
    if config.model_type != "gpt2":  # GPT2Config would read another's config.json and only warn
        raise ValueError(f"{str(name_or_dir)!r} is a {config.model_type} model, not a GPT-2: only GPT-2 "
                         f"weights convert to models/gpt2.py's GPT")
    return _gpt_config(config, name_or_dir)


def _gpt_config(c, source):
    """GPTConfig of a transformers GPT2Config: 50257 tokens stay unpadded, GPT-2 has biases."""
    if c.activation_function != "gelu_new" or getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        raise ValueError(f"{str(source)!r} is not a standard GPT-2 (activation/width differ)")
    return GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                     n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=True)


def export_hf(model, out_dir, vocab_size=50257):
    """Write a transformers GPT2LMHeadModel folder: config.json, the weights and, for a GPT-2
    vocabulary, GPT-2's tokenizer files, so that transformers and lm-evaluation-harness load it
    offline with no extra arguments.

    A padded vocabulary is cropped to `vocab_size` rows (50257, GPT-2's, by default; a model with
    fewer rows keeps its own).
    """
    cfg = model.config
    if not cfg.bias:
        raise ValueError("cannot export: Hugging Face's GPT2LMHeadModel has biases, and this model "
                         "was trained with --bias false")
    _check_folder(out_dir)
    from transformers import GPT2Config, GPT2LMHeadModel  # seconds to import: after the checks
    vocab_size = min(vocab_size, cfg.vocab_size)
    eot = 50256 if vocab_size == 50257 else None  # GPT-2's <|endoftext|>; none for others
    hf_config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot)
    hf = GPT2LMHeadModel(hf_config)
    sd_hf = hf.state_dict()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k not in sd_hf:
                continue
            v = v.detach().to("cpu", torch.float32)
            if k in ("transformer.wte.weight", "lm_head.weight"):
                v = v[:vocab_size]
            if k.endswith(CONV1D):
                v = v.t()
            sd_hf[k].copy_(v)
    _save(hf, out_dir)
    if vocab_size == GPT2_VOCAB_SIZE:
        save_hf_tokenizer(out_dir, model_max_length=cfg.block_size)
    return out_dir


# The modern block (models/modern.py) is Qwen3's: the same projections, per-head QK RMSNorm,
# half-split rotary, gated SiLU MLP and untied head, under Hugging Face's names with `model.`
# for `transformer.` and `layers` for `h`
QWEN3_NAMES = (("transformer.h.", "model.layers."), (".norm_1.", ".input_layernorm."),
               (".norm_2.", ".post_attention_layernorm."), (".attn.", ".self_attn."),
               ("transformer.norm_f.", "model.norm."), ("transformer.wte.", "model.embed_tokens."))


def export_qwen3(model, out_dir, vocab_size=50257):
    """Write a transformers Qwen3ForCausalLM folder of a models/modern.py model (config.json, the
    weights and, for a GPT-2 vocabulary, GPT-2's tokenizer): it loads with no remote code and
    gives the model's logits. Qwen3 has no RMSNorm after the embedding; it acts on each embedding
    row alone, so the exported embedding rows are the normalised ones. A padded vocabulary is
    cropped to `vocab_size` rows."""
    _check_folder(out_dir)
    from transformers import Qwen3Config, Qwen3ForCausalLM  # seconds to import

    cfg = model.config
    vocab_size = min(vocab_size, cfg.vocab_size)
    eot = 50256 if vocab_size == GPT2_VOCAB_SIZE else None
    hf_config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
        max_position_embeddings=cfg.block_size, rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        tie_word_embeddings=False, attention_bias=False, attention_dropout=cfg.dropout,
        bos_token_id=eot, eos_token_id=eot)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    gain = state.pop("transformer.norm_e.weight")
    state["transformer.wte.weight"] = F.rms_norm(state["transformer.wte.weight"], (cfg.n_embd,),
                                                 gain, RMS_NORM_EPS)
    hf = Qwen3ForCausalLM(hf_config)
    sd_hf = hf.state_dict()
    for name, value in state.items():
        for ours, theirs in QWEN3_NAMES:
            name = name.replace(ours, theirs)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:vocab_size]
        sd_hf[name].copy_(value)
    _save(hf, out_dir)
    if vocab_size == GPT2_VOCAB_SIZE:
        save_hf_tokenizer(out_dir, model_max_length=cfg.block_size)
    return out_dir


def _check_folder(out_dir):
    if Path(out_dir).exists() and not Path(out_dir).is_dir():  # transformers would only log it
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", str(out_dir))


def _save(hf, out_dir):
    hf.save_pretrained(out_dir)
    # transformers writes the weights through a private temporary file (mode 0600): give them the
    # mode of the other files, so that an export in a shared folder is readable by its readers
    mode = 0o666 & ~current_umask()
    for weights in Path(out_dir).glob("*.safetensors"):
        weights.chmod(mode)


def current_umask():
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def load_hf_gpt2(name_or_dir):
    """transformers' GPT2LMHeadModel from a local folder, the local HF cache, or the hub (as
    load_hf_causal_lm): what gpt_from_hf converts. Another architecture is refused, as
    GPT2LMHeadModel would read its folder with freshly initialised weights and only warn."""
    hf = load_hf_causal_lm(name_or_dir)
    if type(hf).__name__ != "GPT2LMHeadModel":
        raise ValueError(f"{name_or_dir!r} is a {type(hf).__name__}, not a GPT-2 (GPT2LMHeadModel): "
                         f"only GPT-2 weights convert to models/gpt2.py's GPT")
    return hf


def load_hf_causal_lm(name_or_dir):
    """A transformers causal LM from a local folder, the local HF cache, or the hub: any
    architecture transformers ships (GPT2LMHeadModel, the speedrun export's Qwen3ForCausalLM, ...),
    never a repository's own code (trust_remote_code=False).

    Offline, transformers retries the hub for ~25 s before failing; we look in the cache first
    and probe the hub once, so a missing model fails in a second with one clear line.
    """
    hub_id = MODEL_ALIASES.get(name_or_dir.lower(), name_or_dir)

    def fail(reason):
        raise ValueError(
            f"could not load the Hugging Face model {hub_id!r} ({reason}): put a local copy (a folder "
            f"written by `python hf_gpt2.py export` or save_pretrained) and pass its path, or go online"
        ) from None

    def short(e):
        return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]

    looks_local = os.path.isdir(hub_id) or hub_id.startswith((".", "/", "~")) or hub_id.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(hub_id)):
        fail("no such folder")
    from transformers import AutoModelForCausalLM  # seconds to import: after the checks

    def load(source, **kwargs):
        return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False, **kwargs)

    if looks_local:
        try:
            return load(os.path.expanduser(hub_id))
        except Exception as e:
            fail(short(e))
    try:
        return load(hub_id, local_files_only=True)  # the HF cache
    except Exception:
        pass
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        fail("not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        host = urlparse(constants.ENDPOINT).hostname
        try:
            socket.create_connection((host, 443), timeout=5).close()
        except OSError as e:
            fail(f"not in the Hugging Face cache and {host} is unreachable: {e}")
    try:
        return load(hub_id)
    except Exception as e:
        fail(short(e))
