"""Generate text from a training checkpoint, OpenAI's GPT-2 or a Hugging Face folder.

    python sample.py --checkpoint runs/gpt2/ckpt_0019073.pt --prompt "Hello, I'm a language model,"
    python sample.py --checkpoint runs/shakespeare-char          # newest checkpoint in a run folder
    python sample.py --model gpt2 --num-samples 5 --top-k 50      # OpenAI's weights (hub id or folder)
    python sample.py --model hf_out/                              # a hf_gpt2.py export (GPT-2 or Qwen3)

A checkpoint is decoded with the tokenizer its shards were made with (GPT-2 BPE or char-level):
the checkpoint's config names the shard folder; --tokenizer overrides it (e.g. when the shards
are not on this machine). Sampling uses a KV cache, so each new token costs one position, not the
whole prefix. The same --seed gives the same samples. A Hugging Face model samples through
transformers' generate, the same way (temperature, top-k, one draw per row from the seeded
generator): an export gives its checkpoint's samples when their vocabularies are equally wide
(a padded vocabulary is cropped on export, which changes the draws; greedy output still agrees).
"""

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from models.checkpoint import load_model
from models.device import pick_device_type
from models.hf import load_hf_causal_lm


def load(checkpoint=None, model_name=None, tokenizer=None, device="cpu"):
    """(model in eval mode, tokenizer) for a checkpoint or a Hugging Face causal LM."""
    from pipeline.tokenizer import load_tokenizer

    if checkpoint is not None:
        model, data_dir = load_model(checkpoint, device)
        if tokenizer is None:
            if data_dir is None or not Path(data_dir).is_dir():
                raise ValueError(
                    f"{checkpoint}: the shard folder it was trained on ({data_dir}) is not here, so "
                    f"its tokenizer is unknown: pass --tokenizer gpt2 or --tokenizer SHARD_DIR"
                )
            tokenizer = data_dir
    else:
        model = load_hf_causal_lm(model_name).to(device)
        tokenizer = tokenizer or "gpt2"
    try:
        tok = load_tokenizer(tokenizer)
    except RuntimeError as e:  # e.g. GPT-2's BPE files neither cached nor downloadable
        raise ValueError(str(e)) from None
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tok.name} has {tok.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}: wrong --tokenizer?"
        )
    return model.eval(), tok


def prompt_tokens(tok, prompt):
    """Token ids of the prompt. An empty prompt starts from GPT-2's end-of-text token (as an
    unconditional sample does), or from a newline for a char vocabulary (which has no EOT)."""
    if prompt:
        return tok.encode(prompt)
    if tok.eot is not None:
        return [tok.eot]
    try:
        return tok.encode("\n")
    except ValueError:  # no newline in this char vocabulary
        return [0]


def generate_samples(model, tok, prompt="", num_samples=1, max_new_tokens=100, temperature=1.0,
                     top_k=None, seed=1337, device="cpu", use_kv_cache=True):
    """Sampled texts (prompt + continuation), cut at the first generated end-of-text token."""
    ids = prompt_tokens(tok, prompt)
    if max(ids) >= model.config.vocab_size:
        raise ValueError(f"prompt token {max(ids)} is outside the model's vocabulary")
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    with amp:
        if hasattr(model, "generation_config"):  # a transformers model
            out = generate_hf(model, idx, max_new_tokens, temperature, top_k, seed, use_kv_cache,
                              tok.vocab_size)
        else:
            generator = torch.Generator(device=device).manual_seed(seed)
            out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                 generator=generator, use_kv_cache=use_kv_cache,
                                 vocab_size=tok.vocab_size)
    texts = []
    for row in out.tolist():
        new = row[len(ids):]
        if tok.eot is not None and tok.eot in new:
            new = new[: new.index(tok.eot)]
        shown = ids if prompt else []  # an empty prompt's start token is not part of the text
        texts.append(tok.decode(shown + new))
    return texts


def generate_hf(hf, idx, max_new_tokens, temperature, top_k, seed, use_kv_cache, vocab_size):
    """transformers' generate, sampling as our models' generate does: ids >= vocab_size
    suppressed, then temperature, then top-k, then one multinomial draw per row, from the global
    generator seeded with `seed` (forked, so the caller's random state is left as it was). It
    stops once every row has ended with end-of-text, which only cuts what is dropped anyway."""
    context = hf.config.max_position_embeddings
    if idx.size(1) + max_new_tokens > context:  # our models crop the context; transformers' do not
        raise ValueError(f"the prompt's {idx.size(1)} tokens and --max-new-tokens {max_new_tokens} "
                         f"do not fit the model's context of {context} tokens: ask for fewer tokens")
    sampling = ({"do_sample": True, "temperature": temperature, "top_k": top_k or 0} if temperature
                else {"do_sample": False})
    with torch.random.fork_rng(devices=[idx.device] if idx.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=max_new_tokens,
                           use_cache=use_kv_cache, **sampling,
                           suppress_tokens=list(range(vocab_size, hf.config.vocab_size)) or None,
                           pad_token_id=hf.generation_config.eos_token_id or 0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a ckpt_*.pt file, or a run folder (its newest checkpoint)")
    src.add_argument("--model", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, a hub id, or a local "
                                     "folder of a causal LM transformers ships (e.g. one written by "
                                     "hf_gpt2.py export: GPT-2 or the speedrun's Qwen3)")
    p.add_argument("--tokenizer", default=None,
                   help="gpt2 or a shard folder (default: the checkpoint's shards; gpt2 for --model)")
    p.add_argument("--prompt", default="",
                   help="text to continue; FILE:path reads it from a file (default: unconditional)")
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k filtering")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, mps (auto: cuda, else Apple's mps, else cpu)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the prefix every token")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = pick_device_type("auto")
    for flag in ("num_samples", "max_new_tokens"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.temperature < 0:
        p.error("--temperature must be >= 0")
    if args.prompt.startswith("FILE:"):
        try:
            args.prompt = Path(args.prompt[5:]).read_text(encoding="utf-8")
        except OSError as e:
            p.error(f"--prompt {args.prompt}: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        model, tok = load(args.checkpoint, args.model, args.tokenizer, args.device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{args.checkpoint or args.model}: {n_params:,} parameters, "
              f"tokenizer {tok.name}, device {args.device}", file=sys.stderr)
        texts = generate_samples(model, tok, args.prompt, args.num_samples, args.max_new_tokens,
                                 args.temperature, args.top_k or None, args.seed, args.device,
                                 use_kv_cache=not args.no_kv_cache)
    except ValueError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    for i, text in enumerate(texts):
        print(f"---------- sample {i + 1} ----------")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
