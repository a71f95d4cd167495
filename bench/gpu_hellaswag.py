"""The HellaSwag row of bench/gpu.py: the ending chosen (acc_norm) in bf16 and in fp32, per
example, on the local HellaSwag file or synthetic examples."""

from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_model
from models.gpt2 import GPT, GPTConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
HELLASWAG_FILE = REPO_ROOT / "data" / "hellaswag" / "hellaswag_val.jsonl"


class ByteEncoding:
    """A stand-in tokenizer, one token a byte, for the synthetic examples: no BPE files needed."""

    n_vocab = 256

    def encode_ordinary(self, text):
        return list(text.encode())


def hellaswag_examples(n, vocab_size):
    """(examples, encoding, where they come from): the first n of the local HellaSwag file when
    the model reads GPT-2 tokens and the tokenizer loads offline, else n synthetic ones."""
    from pipeline.tokenizer import GPT2_VOCAB_SIZE

    reason = f"no {HELLASWAG_FILE.relative_to(REPO_ROOT)}"
    if vocab_size < GPT2_VOCAB_SIZE:
        reason = "the model has no GPT-2 vocabulary"
    elif HELLASWAG_FILE.is_file():
        try:
            from evaluation import hellaswag
            from pipeline.tokenizer import get_gpt2_encoding

            return (hellaswag.load_examples(HELLASWAG_FILE, limit=n), get_gpt2_encoding(),
                    f"{HELLASWAG_FILE.relative_to(REPO_ROOT)}")
        except Exception as e:  # e.g. no tokenizer files and no network
            reason = f"{type(e).__name__}: {e}"
    rng = np.random.default_rng(0)
    words = "the a man woman dog child ball water house street runs sits jumps walks throws into " \
            "onto then while and slowly quickly red small".split()

    def text(k):
        return " ".join(rng.choice(words, size=k))

    examples = [{"ctx": text(12), "endings": [text(int(rng.integers(3, 8))) for _ in range(4)],
                 "label": int(rng.integers(0, 4))} for _ in range(n)]
    return examples, ByteEncoding(), f"synthetic ({reason})"


def hellaswag_choices(model, examples, enc, amp_dtype, device):
    """({example index: ending chosen by acc_norm}, acc_norm): the bench's one call into the
    HellaSwag scoring."""
    from evaluation import hellaswag

    result = hellaswag.evaluate(lambda idx: model(idx)[0], examples, enc, "default", batch_size=8,
                                device=device, rank=0, world_size=1, autocast_dtype=amp_dtype,
                                max_length=model.config.block_size)
    return {i: pred_norm for i, (_, pred_norm, _) in result["predictions"].items()}, result["acc_norm"]


def hellaswag_agreement(s):
    if s.checkpoint:
        model, _ = load_model(s.checkpoint)
        model, what = model.to(s.device), s.checkpoint
    else:
        cfg = s.config(s.model)
        torch.manual_seed(cfg.seed)
        with torch.device(s.device):
            model = GPT(GPTConfig(**cfg.model_config()))
        what = "random init (pass --checkpoint for a trained model)"
    model.eval()
    examples, enc, source = hellaswag_examples(s.hellaswag_examples, model.config.vocab_size)
    bf16, acc_bf16 = hellaswag_choices(model, examples, enc, torch.bfloat16, s.device)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # true fp32, not TF32, for the reference
    try:
        fp32, acc_fp32 = hellaswag_choices(model, examples, enc, None, s.device)
    finally:
        torch.set_float32_matmul_precision(precision)
    same = sum(bf16[i] == fp32[i] for i in fp32)
    return {"examples": len(fp32), "same_choice": same / len(fp32), "acc_norm_bf16": acc_bf16,
            "acc_norm_fp32": acc_fp32, "data": source, "model": what}
