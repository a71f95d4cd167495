"""--micro-batch-size auto: the split of the global batch for any world size, the out-of-memory
probe, and that probing leaves no trace in the model or the optimizer."""

from dataclasses import replace

import pytest
import torch

from model import GPT, GPTConfig
from trainer import batch_size
from trainer.config import parse_config
from trainer.distributed import ParallelModel, Runtime

DEFAULT = parse_config([])  # the gpt2-124m recipe: 524,288 tokens of T=1024 sequences a step


def runtime(world_size):
    return Runtime(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"))


@pytest.mark.parametrize("world_size, expected", [(1, 64), (8, 64), (16, 32), (32, 16), (512, 1)])
def test_auto_splits_the_default_batch_for_any_world_size(world_size, expected):
    micro, why = batch_size.choose(DEFAULT, runtime(world_size))
    assert micro == expected and "auto" in why
    grad_accum = DEFAULT.total_batch_size // (micro * DEFAULT.seq_len * world_size)
    assert micro * DEFAULT.seq_len * world_size * grad_accum == DEFAULT.total_batch_size


def test_auto_refuses_a_batch_the_ranks_cannot_share():
    with pytest.raises(batch_size.MicroBatchError, match="1024 ranks cannot share"):
        batch_size.choose(DEFAULT, runtime(1024))  # 512 sequences for 1024 ranks
    with pytest.raises(batch_size.MicroBatchError, match="3 ranks cannot share"):
        batch_size.choose(DEFAULT, runtime(3))
    with pytest.raises(batch_size.MicroBatchError, match="multiple of 1024"):
        batch_size.choose(replace(DEFAULT, total_batch_size=1000), runtime(1))


def test_an_explicit_micro_batch_is_kept():
    assert batch_size.choose(replace(DEFAULT, micro_batch_size=4), runtime(16))[0] == 4


def test_probe_halves_until_the_step_fits():
    """An allocator that runs out above 12 sequences: 64 and 32 and 16 fail, 8 is taken."""
    tried = []

    def fits(b):
        tried.append(b)
        if b > 12:
            raise torch.OutOfMemoryError(f"CUDA out of memory trying {b}")

    micro, why = batch_size.choose(DEFAULT, runtime(1), fits)
    assert (micro, tried) == (8, [512, 256, 128, 64, 32, 16, 8]) and "fits in GPU memory" in why


def _probe_on_rank(rank, limits, init_file, results):
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)

    def fits(b):
        if b > limits[rank]:
            raise torch.OutOfMemoryError(f"out of memory at {b}")

    results[rank] = batch_size.choose(DEFAULT, Runtime.from_env("cpu"), fits)
    dist.destroy_process_group()


def test_all_ranks_take_the_smallest_fit(tmp_path):
    """Rank 0 fits 16 sequences, rank 1 (a smaller GPU) only 8: both train with 8."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.start_processes(_probe_on_rank, args=({0: 16, 1: 8}, tmp_path / "pg", results), nprocs=2,
                       start_method="fork")
    assert results[0][0] == results[1][0] == 8
    assert "another rank fits only 8" in results[0][1]


def test_probe_gives_up_with_one_clear_line():
    def never(b):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(batch_size.MicroBatchError, match="even a micro-batch of 1 .* --fsdp"):
        batch_size.choose(DEFAULT, runtime(8), never)


def test_trying_a_step_leaves_weights_and_optimizer_untouched():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    parallel = ParallelModel(model, runtime(1))
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), 1e-8, "cpu", verbose=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch_size.try_training_step(parallel, optimizer, 4, 16, 64, None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]
