"""python hf_gpt2.py export CHECKPOINT OUT_DIR: a training checkpoint as a Hugging Face folder:
GPT2LMHeadModel for GPT-2, Qwen3ForCausalLM for the speedrun's modern block.

The conversions themselves (OpenAI's weights in, export out) are models/hf.py.
"""

import argparse
import os
import sys

from models.checkpoint import CheckpointError, load_model
from models.hf import export_hf, export_qwen3
from pipeline.tokenizer import GPT2_VOCAB_SIZE


def main(argv=None):
    """python hf_gpt2.py export CHECKPOINT OUT_DIR [--vocab-size N]: a train_gpt2.py checkpoint
    (or a run folder: its newest; DDP or FSDP, any world size) as a transformers folder."""
    p = argparse.ArgumentParser(description="Export a checkpoint to a Hugging Face GPT-2 folder")
    sub = p.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a GPT2LMHeadModel (GPT-2) or Qwen3ForCausalLM (speedrun) "
                                        "folder: config.json + weights")
    exp.add_argument("checkpoint", help="a ckpt_*.pt file, or a run folder (its newest checkpoint)")
    exp.add_argument("out_dir")
    exp.add_argument("--vocab-size", type=int, default=None,
                     help="rows to keep (default: the tokenizer's, from the checkpoint's shards; "
                          "else 50257)")
    args = p.parse_args(argv)
    try:
        model, data_dir = load_model(args.checkpoint)
        vocab_size = args.vocab_size
        if vocab_size is None:
            vocab_size = 50257
            if data_dir and os.path.isdir(data_dir):
                from pipeline.tokenizer import load_tokenizer

                vocab_size = load_tokenizer(data_dir).vocab_size
        modern = model.config.to_dict().get("arch") == "modern"
        (export_qwen3 if modern else export_hf)(model, args.out_dir, vocab_size=vocab_size)
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"hf_gpt2.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a file in the way, a full disk
        print(f"hf_gpt2.py: error: cannot write {e.filename or args.out_dir} ({e.strerror or e}); "
              f"choose a writable OUT_DIR", file=sys.stderr)
        return 2
    vocab_size = min(vocab_size, model.config.vocab_size)
    tokenizer = "with GPT-2's tokenizer" if vocab_size == GPT2_VOCAB_SIZE else "no tokenizer files"
    print(f"wrote {args.out_dir} ({'Qwen3ForCausalLM' if modern else 'GPT2LMHeadModel'}, vocab {vocab_size}, {tokenizer}); load it with "
          f"transformers or lm-eval, or: python sample.py --model {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
