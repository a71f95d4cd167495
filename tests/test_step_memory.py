"""The memory of a training step, counted in live tensor bytes on CPU (tests/live_bytes.py): no
tensor kept that backward does not need, and a micro-batch probe whose try bounds the run's
steady steps."""

import torch
from torch.optim import AdamW

import train_gpt2
from live_bytes import LiveBytes
from models.gpt2 import GPT, GPTConfig
from trainer.distributed import ParallelModel, Runtime

CPU = Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
# the output layer dominates, as at GPT-2's vocabulary: the step's peak is in the head's backward
WIDE_VOCAB = GPTConfig(block_size=32, vocab_size=1024, n_layer=1, n_head=2, n_embd=16)


class RandomBatches:
    """The loader's next_batch() on random tokens."""

    def __init__(self, micro_batch, seq_len, vocab_size):
        self.shape, self.vocab_size = (micro_batch, seq_len), vocab_size
        self.generator = torch.Generator().manual_seed(0)

    def next_batch(self):
        tokens = torch.randint(0, self.vocab_size, self.shape, generator=self.generator)
        return tokens, tokens


def step_peak(step_fn, grad_accum, micro_batch=8):
    """Peak live bytes of the second of two steps of step_fn(parallel, optimizer, loader,
    grad_accum) on WIDE_VOCAB (the first makes AdamW's state)."""
    torch.manual_seed(0)
    with LiveBytes() as counter:
        model = GPT(WIDE_VOCAB)
        parallel = ParallelModel(model, CPU)
        optimizer = AdamW(model.parameters(), lr=1e-3, fused=True)
        loader = RandomBatches(micro_batch, WIDE_VOCAB.block_size, WIDE_VOCAB.vocab_size)
        step_fn(parallel, optimizer, loader, grad_accum)
        counter.reset_peak()
        step_fn(parallel, optimizer, loader, grad_accum)
    return counter.peak


def the_run_step(parallel, optimizer, loader, grad_accum):
    train_gpt2.optimization_step(parallel, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                                 loader, grad_accum, 1.0, None)


def a_step_keeping_the_logits(parallel, optimizer, loader, grad_accum):
    """The run's step as it was: each micro-step's logits bound to a name, alive through its
    backward and the next micro-step's forward."""
    parallel.zero_grad(optimizer)
    for _ in range(grad_accum):
        x, y = loader.next_batch()
        logits, loss = parallel.train_module(x, y)
        (loss / grad_accum).backward()
    torch.nn.utils.clip_grad_norm_(parallel.module.parameters(), 1.0)
    optimizer.step()


def test_a_training_step_keeps_no_logits_alive():
    """Each micro-step's logits (B x T x vocab floats) are freed as soon as the loss is computed:
    the step's peak is at least one logits tensor below that of a step that keeps them."""
    logits_bytes = 8 * WIDE_VOCAB.block_size * WIDE_VOCAB.vocab_size * 4
    kept = step_peak(a_step_keeping_the_logits, grad_accum=2)
    ours = step_peak(the_run_step, grad_accum=2)
    assert ours <= kept - logits_bytes, (ours, kept, logits_bytes)


def _probe_and_run_on_rank(rank, init_file, results):
    """For DDP and FSDP, 1 and 2 micro-steps: the live-bytes peak of the probe's try (its copy
    built and tried as train_gpt2 does) and of the run's steps 2..4 at the same micro-batch."""
    import os

    import torch.distributed as dist

    from conftest import tiny_train_flags
    from trainer import batch_size
    from trainer.config import parse_config

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    runtime = Runtime.from_env("cpu")
    for parallelism in ("ddp", "fsdp"):
        for grad_accum in (1, 2):
            flags = tiny_train_flags(4, 2 * 4 * 32 * grad_accum, 0) + ["--compile", "false"]
            flags += ["--fsdp"] * (parallelism == "fsdp")
            cfg = parse_config(flags)  # micro-batch 4, seq_len 32: 4 x 32 x 2 ranks x grad_accum
            with LiveBytes() as counter:
                parallel, optimizer = train_gpt2.build_probe_copy(cfg, runtime, None)
                batch_size.try_training_step(parallel, optimizer, 4, grad_accum, cfg.seq_len,
                                             cfg.vocab_size, None, keep_gradients=parallelism == "ddp")
                probe_peak = counter.peak
                del parallel, optimizer
                batch_size.release_memory(runtime.device)
            with LiveBytes() as counter:
                _, parallel, optimizer = train_gpt2.build(cfg, runtime, None)
                loader = RandomBatches(4, cfg.seq_len, cfg.vocab_size)
                for step in range(4):
                    if step == 1:
                        counter.reset_peak()
                    the_run_step(parallel, optimizer, loader, grad_accum)
                run_peak = counter.peak
                del parallel, optimizer
                batch_size.release_memory(runtime.device)
            results[(rank, parallelism, grad_accum)] = (probe_peak, run_peak)
    dist.barrier()
    dist.destroy_process_group()


def test_the_probes_try_bounds_the_runs_steady_steps(tmp_path):
    """The micro-batch the probe picks runs steps 2..4 within the peak its try measured: the try
    holds AdamW's moments and DDP's gradient buckets through its forward and backward, as the
    run does from step 2 on. 2 gloo ranks, DDP and FSDP, one and two micro-steps."""
    from conftest import start_ranks

    results = start_ranks(_probe_and_run_on_rank, tmp_path / "pg")
    assert len(results) == 8
    for key, (probe_peak, run_peak) in sorted(results.items()):
        # to the 512 bytes a CUDA allocation is rounded to: the run's step also holds a scalar
        # or two (the accumulated loss) that the try does not
        assert run_peak <= probe_peak + 512, (key, run_peak, probe_peak)
