"""The models the evaluations score, each as `(model_fn, context length)` where
`model_fn(idx (B, T) LongTensor) -> logits (B, T, V)`: OpenAI's GPT-2 or any causal LM folder
through transformers (the speedrun's Qwen3 export among them), or our model from a training
checkpoint. Also the process group the command lines start under torchrun."""

import os

import torch
import torch.distributed as dist

from evaluation.scoring import Logits, check_gpt2_vocab
from models.hf import load_hf_causal_lm
from models.checkpoint import load_model
from models.device import pick_device_type


def load_hf_model_fn(name_or_dir, device, benchmark="HellaSwag"):
    """(model_fn, context length) of a transformers causal LM: OpenAI's GPT-2 sizes, a hub id or
    a local folder (GPT2LMHeadModel, Qwen3ForCausalLM, ...). The context is
    config.max_position_embeddings (GPT-2's n_positions), where the harness reads it."""
    try:
        hf = load_hf_causal_lm(name_or_dir)
    except ValueError as e:
        raise ValueError(f"--model {name_or_dir}: {e}") from None
    check_gpt2_vocab(hf, f"--model {name_or_dir}", benchmark)
    hf.to(device).eval()
    return Logits(hf), hf.config.max_position_embeddings


def load_checkpoint_fn(path, device, benchmark="HellaSwag"):
    """(model_fn, context length) of our GPT from a training checkpoint (or a run folder: its
    newest one)."""
    model, _ = load_model(path, device)
    check_gpt2_vocab(model, f"--checkpoint {path}", benchmark)
    model.eval()
    return Logits(model), model.config.block_size


def add_model_arguments(parser, download_help, dtype_help="bfloat16 runs the forward under autocast"):
    """The command lines' common flags: which model (--model, --checkpoint, or --download only),
    --device and --dtype. Returns the group of the first three, for a command's own alternatives."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl (or 124m..1558m), "
                       "a Hugging Face hub id, or a local folder of a causal LM transformers ships "
                       "(e.g. one written by hf_gpt2.py export: GPT-2 or the speedrun's Qwen3)")
    which.add_argument("--checkpoint", help="a train_gpt2.py checkpoint (ckpt_*.pt), or a run folder (its newest)")
    which.add_argument("--download", action="store_true", help=download_help)
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:1, mps (auto: cuda, else Apple's mps, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help=dtype_help)
    return which


def start_ranks(device_choice):
    """(device, distributed, master) for a command line: under torchrun one process per device,
    each scoring its share of the examples (gloo on CPU, NCCL on GPUs); else one process."""
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = device_choice if device_choice != "auto" else pick_device_type("auto")
    if distributed:
        use_cuda = torch.device(device).type == "cuda"
        if use_cuda:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as build-nanogpt's reference run
    return device, distributed, not distributed or dist.get_rank() == 0


def stop_ranks(distributed):
    if distributed:
        dist.barrier()  # gloo may abort at exit if one rank tears down while another works
        dist.destroy_process_group()
