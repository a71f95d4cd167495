"""--micro-batch-size auto: the split of the global batch for any world size, the out-of-memory
probe, and that probing leaves no trace in the model or the optimizer."""

import json
from dataclasses import replace

import pytest
import torch

from models.gpt2 import GPT, GPTConfig
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
    from conftest import start_ranks

    results = start_ranks(_probe_on_rank, {0: 16, 1: 8}, tmp_path / "pg")
    assert results[0][0] == results[1][0] == 8
    assert "another rank ran out of memory at 16" in results[0][1]


def test_probe_gives_up_with_one_clear_line():
    def never(b):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(batch_size.MicroBatchError, match="even a micro-batch of 1 .* --fsdp"):
        batch_size.choose(DEFAULT, runtime(1), never)


def test_trying_a_step_runs_the_steps_shape_and_leaves_the_optimizer_ready():
    """Two steps (the first makes AdamW's state, the second is the run's steady step), each of a
    micro-step without gradient sync, then the synchronised one, then AdamW."""
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    parallel = ParallelModel(model, runtime(1))
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), 1e-8, "cpu", verbose=False)
    syncs, gradient_sync = [], parallel.gradient_sync
    parallel.gradient_sync = lambda enabled: syncs.append(enabled) or gradient_sync(enabled)
    before = [p.clone() for p in model.parameters()]
    batch_size.try_training_step(parallel, optimizer, 4, 2, 16, 64, None)
    assert syncs == [False, True, False, True]
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # AdamW stepped
    assert not optimizer.state and all(p.grad is None for p in model.parameters())


class _OutOfMemoryInBackward(torch.autograd.Function):
    """The identity, whose backward runs out of memory (as a real allocation there would)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("CUDA out of memory (injected in backward)")


def _train_on_rank(rank, port, argv, oom_ranks, last_micro_step, results):
    """One rank of a 2-rank train_gpt2.main() run with the micro-batch probe on CPU, where rank
    `oom_ranks` run out of memory in the backward of every micro-batch above 2 sequences: after
    the blocks' backward and before the root's gradient reduction (the embeddings'), on the first
    micro-step or on the last (the synchronised one, where the others reduce-scatter)."""
    import os

    import train_gpt2
    from models.gpt2 import GPT

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    batch_size.PROBED_DEVICES = ("cpu",)
    forwards = {}  # micro-batch size -> training forwards so far
    gpt_forward = GPT.forward

    def forward(self, idx, targets=None, kv_cache=None):
        b = idx.size(0)
        if not (torch.is_grad_enabled() and rank in oom_ranks and b > 2):
            return gpt_forward(self, idx, targets, kv_cache)
        forwards[b] = forwards.get(b, 0) + 1
        micro_steps = min(2, 8 // b)  # 8 sequences per rank
        if forwards[b] != (micro_steps if last_micro_step else 1):
            return gpt_forward(self, idx, targets, kv_cache)
        hook = self.transformer.drop.register_forward_hook(lambda m, i, out: _OutOfMemoryInBackward.apply(out))
        try:
            return gpt_forward(self, idx, targets, kv_cache)
        finally:
            hook.remove()

    GPT.forward = forward
    results[rank] = train_gpt2.main(argv)


def _train_two_ranks(out_dir, data, extra, oom_ranks=(), last_micro_step=False):
    import socket

    from conftest import start_ranks, tiny_train_flags

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a collective that one rank never reaches fails after a minute instead of hanging the suite
    argv = tiny_train_flags(6, 512, 0) + ["--data", str(data), "--out-dir", str(out_dir),
                                          "--hellaswag-every", "0", "--dist-timeout-min", "1", *extra]
    assert start_ranks(_train_on_rank, port, argv, set(oom_ranks), last_micro_step) == {0: 0, 1: 0}
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    setup = next(r["setup"] for r in rows if "setup" in r)
    return [r["loss"] for r in rows if "loss" in r], setup


@pytest.fixture(scope="module")
def fsdp_at_micro_batch_2(char_shards, tmp_path_factory):
    """FSDP on 2 ranks started at micro-batch 2 (8 sequences a rank: 4 accumulation steps)."""
    return _train_two_ranks(tmp_path_factory.mktemp("b2"), char_shards,
                            ["--fsdp", "--micro-batch-size", "2"])[0]


@pytest.mark.parametrize("extra, oom_ranks, last_micro_step", [
    (["--fsdp"], (0, 1), False),
    (["--fsdp", "--activation-checkpointing"], (0,), True),
    (["--fsdp"], (1,), True),
    ([], (1,), False),
], ids=["fsdp-both-ranks", "fsdp-ac-rank-0-synced-micro-step", "fsdp-rank-1-synced-micro-step",
        "ddp-rank-1"])
def test_probe_recovers_from_out_of_memory_in_backward(char_shards, fsdp_at_micro_batch_2, tmp_path,
                                                       extra, oom_ranks, last_micro_step):
    """Micro-batches 8 and 4 run out of memory in backward on some ranks: all ranks agree on 2,
    none hangs in a collective the others never reach, and the run then trains exactly like one
    started at micro-batch 2 (FSDP's state reset after each failed try; a run that learns nothing
    would show in the losses)."""
    losses, setup = _train_two_ranks(tmp_path, char_shards, extra + ["--micro-batch-size", "auto"],
                                     oom_ranks, last_micro_step)
    assert setup["micro_batch_size"] == 2 and setup["grad_accum"] == 4
    assert losses == pytest.approx(fsdp_at_micro_batch_2, rel=1e-6)
    assert losses[-1] < losses[0] - 0.1


def test_a_failed_try_is_freed_before_the_vote_and_the_next_try(monkeypatch):
    """The try's activations are held by the frames of its torch.OutOfMemoryError: none may be
    alive when the ranks vote or the next try starts."""
    from live_bytes import LiveBytes

    live_at_votes, live_at_tries = [], []
    vote = batch_size.agree
    with LiveBytes() as counter:
        def fits(b):
            live_at_tries.append(counter.now)
            activations = torch.ones(b, 1 << 16)  # noqa: F841 (alive in this frame)
            if b > 2:
                raise torch.OutOfMemoryError(f"out of memory at {b}")

        monkeypatch.setattr(batch_size, "agree",
                            lambda runtime, ok=True: live_at_votes.append(counter.now) or vote(runtime, ok))
        micro, _ = batch_size.choose(replace(DEFAULT, total_batch_size=8 * 1024), runtime(1), fits)
    assert micro == 2
    assert live_at_votes == [0, 0, 0] and live_at_tries == [0, 0, 0]


def test_out_of_memory_at_every_micro_batch_is_one_line_and_exit_2(char_shards, tmp_path, monkeypatch,
                                                                    capsys):
    import train_gpt2
    from conftest import tiny_train_flags

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CPU out of memory (emulated)")

    monkeypatch.setattr(batch_size, "PROBED_DEVICES", ("cpu",))
    monkeypatch.setattr(batch_size, "try_training_step", out_of_memory)
    argv = tiny_train_flags(2, 256, 0) + ["--data", str(char_shards), "--out-dir", str(tmp_path),
                                          "--hellaswag-every", "0", "--micro-batch-size", "auto"]
    assert train_gpt2.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: even a micro-batch of 1 sequence(s) runs out"), err


def _auto_on_cpu(char_shards, out_dir):
    """train_gpt2 flags: 2 steps of the tiny model on CPU, 16 sequences a step, auto micro-batch."""
    from conftest import tiny_train_flags

    return tiny_train_flags(2, 512, 0) + ["--data", str(char_shards), "--out-dir", str(out_dir),
                                          "--hellaswag-every", "0", "--micro-batch-size", "auto"]


def _ram_for(argv, world_size, ranks_here, fits):
    """RAM available that gives each of `ranks_here` ranks room for the fp32 plan of micro-batch
    `fits` and not of 2 * fits."""
    from trainer import memory

    cfg = replace(parse_config(argv), dtype="float32")
    plan = [memory.memory_plan(replace(cfg, micro_batch_size=b), world_size)["total"] for b in (fits, 2 * fits)]
    return ranks_here * sum(plan) / 2 / (1 - memory.RESERVE)


def test_auto_on_cpu_takes_the_largest_micro_batch_the_ram_holds(char_shards, tmp_path, monkeypatch,
                                                                 capsys):
    import train_gpt2
    from trainer import memory

    argv = _auto_on_cpu(char_shards, tmp_path)
    monkeypatch.setattr(memory, "host_memory_available", lambda: _ram_for(argv, 1, 1, fits=4))
    assert train_gpt2.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    setup = next(r["setup"] for r in rows if "setup" in r)
    assert (setup["micro_batch_size"], setup["grad_accum"]) == (4, 4)  # 16 and 8 do not fit
    assert "micro-batch 4: auto: largest power of two (at most 64) dividing 16 sequences per rank " \
           "whose memory plan fits in " in capsys.readouterr().out


def test_auto_on_cpu_without_ram_for_one_sequence_is_one_line_and_exit_2(char_shards, tmp_path,
                                                                         monkeypatch, capsys):
    import train_gpt2
    from trainer import memory

    monkeypatch.setattr(memory, "host_memory_available", lambda: 100_000)
    assert train_gpt2.main(_auto_on_cpu(char_shards, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: even a micro-batch of 1 sequence(s) does not fit in 0.00 GiB of RAM (90% of the 0.0 GiB "
        "available): use --fsdp, --activation-checkpointing"), err


def _train_on_rank_in_ram(rank, port, argv, ram, picks):
    """One rank of a 2-rank run on one host (LOCAL_WORLD_SIZE=2) that sees ram[rank] bytes of RAM
    available; picks[rank] = (the micro-batch it chose, its exit status)."""
    import os

    import train_gpt2
    from trainer import memory

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    memory.host_memory_available = lambda: ram[rank]
    prepare, loaders_for = train_gpt2.prepare_data, []  # the loaders are made for the micro-batch taken
    train_gpt2.prepare_data = lambda cfg, runtime: loaders_for.append(cfg.micro_batch_size) or prepare(cfg, runtime)
    status = train_gpt2.main(argv)
    picks[rank] = (loaders_for[-1], status)


def test_ranks_on_one_host_share_its_ram_and_agree_on_the_micro_batch(char_shards, tmp_path):
    """8 sequences a rank; the RAM available, halved for the 2 ranks of the host, holds micro-batch
    4 as rank 0 sees it and 2 as rank 1 does: both take 2."""
    import socket

    from conftest import start_ranks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = _auto_on_cpu(char_shards, tmp_path) + ["--dist-timeout-min", "1"]
    ram = {0: _ram_for(argv, 2, 2, fits=4), 1: _ram_for(argv, 2, 2, fits=2)}
    assert start_ranks(_train_on_rank_in_ram, port, argv, ram) == {0: (2, 0), 1: (2, 0)}
