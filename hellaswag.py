"""HellaSwag accuracy of OpenAI's GPT-2, a training checkpoint or a Hugging Face folder (a GPT-2 or
the speedrun's Qwen3 export), beside OpenAI GPT-2's.

    python hellaswag.py --download                         # once, where there is internet
    python hellaswag.py --model gpt2                       # OpenAI's 124M through transformers
    python hellaswag.py --checkpoint runs/x/ckpt_0019000.pt --style harness
    python hellaswag.py --model hf_out/                    # a hf_gpt2.py export folder
    torchrun --standalone --nproc_per_node=8 hellaswag.py --model gpt2-xl --dtype bfloat16

The data, the two scoring styles and the scoring itself live in evaluation/ (hellaswag.py,
scoring.py); this is the command line over them.
"""

import argparse
import json
import sys

import torch

from evaluation.hellaswag import (DEFAULT_CACHE_DIR, NUM_VAL_EXAMPLES, STYLES, URL,
                                  HellaSwagUnavailable, download, evaluate, load_examples,
                                  reference_table)
from evaluation.models import add_model_arguments, load_checkpoint_fn, load_hf_model_fn, start_ranks, stop_ranks
from pipeline.tokenizer import get_gpt2_encoding


def load_inputs(args, device):
    """(encoding, examples, (model_fn, context length)) for the command line; data first, as it
    fails fastest."""
    examples = load_examples(args.data, args.cache_dir, args.limit, args.url)
    enc = get_gpt2_encoding()
    if args.model:
        return enc, examples, load_hf_model_fn(args.model, device)
    return enc, examples, load_checkpoint_fn(args.checkpoint, device)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="HellaSwag accuracy of GPT-2 models and checkpoints")
    add_model_arguments(parser, "only fetch the validation set into --cache-dir, then exit: training "
                                "never downloads it, so do this once before training on compute nodes")
    parser.add_argument("--style", choices=STYLES, default="default",
                        help="default: build-nanogpt's scoring; harness: lm-evaluation-harness's")
    parser.add_argument("--data", help="local HellaSwag jsonl (skips the download)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="where the download is cached")
    parser.add_argument("--url", default=URL, help="where to download hellaswag_val.jsonl from")
    parser.add_argument("--limit", type=int, help="score only the first N examples")
    parser.add_argument("--skip-too-long", action="store_true",
                        help="leave out the examples with an ending longer than the model's context "
                             "(a short-context model) and score the others; the count is reported")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass (4 rows each)")
    parser.add_argument("--json", action="store_true", help="print only one JSON object: acc, acc_norm, n, ...")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.download:
        try:
            path = download(args.cache_dir, args.url)
        except HellaSwagUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"HellaSwag validation set ({NUM_VAL_EXAMPLES} examples): {path}")
        return 0

    device, distributed, master = start_ranks(args.device)
    result = None
    try:
        enc, examples, (model_fn, max_length) = load_inputs(args, device)
    except (HellaSwagUnavailable, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
    else:
        autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
        try:
            result = evaluate(model_fn, examples, enc, args.style, args.batch_size, device,
                              autocast_dtype=autocast_dtype, progress=master and not args.json,
                              max_length=max_length, skip_too_long=args.skip_too_long)
        except ValueError as e:  # an ending longer than the model's context: refused before work
            print(f"error: {e}", file=sys.stderr)
    finally:
        stop_ranks(distributed)
    if result is None:
        return 2

    if master:
        del result["predictions"]
        if args.json:
            print(json.dumps(result))
        else:
            left_out = f" ({result['left_out']} left out: ending longer than the context)" if result["left_out"] else ""
            print(f"HellaSwag ({args.style} style) {args.model or args.checkpoint}: "
                  f"{result['n']} examples{left_out}, acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}")
            print("\n".join(reference_table(result, args.style)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
