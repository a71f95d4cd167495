"""CORE of OpenAI's GPT-2, a training checkpoint or a Hugging Face folder (a GPT-2 or the speedrun's
Qwen3 export), per task beside OpenAI GPT-2's of the same size.

    python core_eval.py --download                        # once, where there is internet
    python core_eval.py --build-hellaswag                 # its hellaswag.jsonl from HellaSwag's val set
    python core_eval.py --model gpt2 --dtype bfloat16     # OpenAI's 124M: CORE 0.1139 in nanochat (bf16)
    python core_eval.py --checkpoint runs/x --max-per-task 500
    python core_eval.py --model hf_out/ --max-per-task 500   # a hf_gpt2.py export folder
    torchrun --standalone --nproc_per_node=8 core_eval.py --model gpt2-xl --json

CORE (the DCLM paper's 22 in-context tasks, centered accuracy averaged) is computed as nanochat
computes it: see evaluation/core.py. The bundle is nanochat's eval_bundle.zip, unpacked into
data/eval_bundle/ by --download; scoring never downloads.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from evaluation import core, core_hellaswag, hellaswag
from evaluation.download import fetch_zip_folder
from evaluation.models import add_model_arguments, load_checkpoint_fn, load_hf_model_fn, start_ranks, stop_ranks
from pipeline.tokenizer import get_gpt2_encoding


def parse_args(argv):
    parser = argparse.ArgumentParser(description="CORE of GPT-2 models and checkpoints, as nanochat computes it")
    which = add_model_arguments(
        parser, "only fetch nanochat's eval bundle into --bundle (and build its hellaswag.jsonl if absent, "
                "as --build-hellaswag), then exit: training and scoring never download it",
        dtype_help="bfloat16 runs the forward under autocast, as nanochat scored OpenAI's GPT-2: use it to "
                   "reproduce the published GPT-2 rows (the bundle's openai-community-gpt2*.csv)")
    which.add_argument("--build-hellaswag", action="store_true",
                       help="only write the bundle's eval_data/language_understanding/hellaswag.jsonl (CORE's "
                            "hellaswag and hellaswag_zeroshot) from HellaSwag's validation set (--hellaswag-data), "
                            "then exit")
    parser.add_argument("--hellaswag-data",
                        help="HellaSwag's hellaswag_val.jsonl for --build-hellaswag and --download; default: the copy "
                             "`python hellaswag.py --download` keeps in data/hellaswag/")
    parser.add_argument("--bundle", default=str(core.DEFAULT_BUNDLE),
                        help="the eval bundle folder (core.yaml, eval_meta_data.csv, eval_data/)")
    parser.add_argument("--url", default=core.BUNDLE_URL, help="where --download fetches eval_bundle.zip from")
    parser.add_argument("--max-per-task", type=int, default=0,
                        help="score the first K rows of each task after the shuffle (nanochat: 500 "
                             "during training); 0 = all")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="examples per forward pass (all their choices, right-padded)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object as the last line: {"tasks": {label: {"accuracy", '
                             '"centered", "n"}}, "core", "missing", ...}')
    args = parser.parse_args(argv)
    if args.max_per_task < 0:
        parser.error("--max-per-task must be 0 (all) or positive")
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    return args


def download(args):
    """The bundle, then its hellaswag.jsonl when the bundle lacks it (HellaSwag downloaded if needed)."""
    bundle = Path(args.bundle)
    if (bundle / "core.yaml").is_file():
        print(f"CORE eval bundle already at {bundle}")
    else:
        try:
            fetch_zip_folder(args.url, bundle, "eval_bundle")
        except Exception as e:  # network, a bad zip, a full disk: nothing was left behind
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            print(f"error: the CORE eval bundle could not be fetched from {args.url} ({type(e).__name__}: "
                  f"{reason}); with eval_bundle.zip fetched on a connected machine: python core_eval.py "
                  f"--download --url file:///path/to/eval_bundle.zip (or unzip it and move the "
                  f"eval_bundle/ folder it holds to {bundle})", file=sys.stderr)
            return 2
        print(f"CORE eval bundle: {bundle}")
    if (bundle / core_hellaswag.BUNDLE_PATH).is_file():
        return 0
    return build_hellaswag(args, download=True)


def build_hellaswag(args, download=False):
    """CORE's hellaswag.jsonl from HellaSwag's validation set: a local file (--hellaswag-data),
    else the cached download, fetched first when `download`."""
    try:
        examples = hellaswag.load_examples(args.hellaswag_data, download=download)
        source = args.hellaswag_data or hellaswag.DEFAULT_CACHE_DIR / hellaswag.VAL_FILE
        path = core_hellaswag.build(args.bundle, examples, source)
    except (hellaswag.HellaSwagUnavailable, OSError) as e:
        print(f"error: CORE's hellaswag.jsonl not built: {e}", file=sys.stderr)
        return 2
    print(f"CORE hellaswag and hellaswag_zeroshot: {path} ({len(examples)} rows from {source})")
    return 0


def print_table(result, reference):
    print(f"{'task':<33} {'n':>5} {'accuracy':>9} {'centered':>9} {reference['model'] + ' centered':>27}")
    for label, r in result["tasks"].items():
        theirs = reference["tasks"].get(label)
        theirs = f"{theirs:27.4f}" if theirs is not None else f"{'-':>27}"
        print(f"{label:<33} {r['n']:>5} {r['accuracy']:9.4f} {r['centered']:+9.4f} {theirs}")


def main(argv=None):
    args = parse_args(argv)
    if args.download:
        return download(args)
    if args.build_hellaswag:
        return build_hellaswag(args)
    device, distributed, master = start_ranks(args.device)
    result = None
    try:
        tasks, missing = core.load_tasks(args.bundle)
        if master and missing:
            print(f"CORE: {len(missing)} of {len(tasks) + len(missing)} tasks absent from {args.bundle} "
                  f"(left out): {', '.join(missing)}", file=sys.stderr)
        model_fn, context = (load_hf_model_fn(args.model, device, "CORE") if args.model else
                             load_checkpoint_fn(args.checkpoint, device, "CORE"))
        autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
        prepared = core.prepare(tasks, get_gpt2_encoding(), context, args.max_per_task or None)
        result = core.evaluate(model_fn, prepared, device, autocast_dtype=autocast_dtype, batch_size=args.batch_size,
                               report=print if master and not args.json else None)
    except (core.CoreUnavailable, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
    finally:
        stop_ranks(distributed)
    if result is None:
        return 2
    if master:
        name = core.gpt2_name_for(*model_fn.shape) or "gpt2"
        reference = core.gpt2_reference(list(result["tasks"]), args.bundle, name)
        if args.json:
            print(json.dumps({**result, "missing": missing, "reference": reference}))
        else:
            print()
            print_table(result, reference)
            print(core.core_line(result, missing, reference))
            print(f"{result['examples_per_second']:.1f} examples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
