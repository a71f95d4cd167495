"""Start-up in seconds: what building the model takes from the random generator. Each weight
is drawn once (a module's default initialisation, which GPT-2's replaces, is not drawn), and
the micro-batch probe's throwaway copy draws nothing."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train_gpt2
from models.gpt2 import GPT, GPTConfig
from trainer.config import parse_config
from trainer.distributed import Runtime

CFG = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


class RandomDraws(TorchDispatchMode):
    """Counts the elements that random initialisers fill (normal_, uniform_ and what calls them)."""

    DRAWS = {torch.ops.aten.normal_.default, torch.ops.aten.uniform_.default}

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.DRAWS and not args[0].is_meta:  # the meta device draws nothing
            self.elements += args[0].numel()
        return func(*args, **(kwargs or {}))


def drawn_weights(model):
    """Elements of the weights GPT-2's initialisation draws: matrices and embeddings, the tied
    one once."""
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def test_each_weight_is_drawn_once():
    with RandomDraws() as draws:
        model = GPT(CFG)
    assert draws.elements == drawn_weights(model)
    assert model.transformer.wte.weight is model.lm_head.weight


def test_the_probes_copy_draws_nothing_and_fsdp_draws_each_weight_once(tmp_path):
    """In one process with --fsdp (a group of one): the probe's copy takes nothing from the
    generator; the run's model takes each full weight once, as GPT(config) does."""
    cfg = parse_config(["--vocab-size", "64", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                        "--block-size", "32", "--seq-len", "32", "--fsdp", "--compile", "false"])
    runtime = Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    runtime.init_process_group(group_of_one=True)
    try:
        generator_state = torch.get_rng_state()
        with RandomDraws() as draws:
            train_gpt2.build_probe_copy(cfg, runtime, None)
        assert draws.elements == 0 and torch.equal(torch.get_rng_state(), generator_state)
        with RandomDraws() as draws:
            train_gpt2.build(cfg, runtime, None)
        assert draws.elements == drawn_weights(GPT(CFG))
    finally:
        runtime.close()
