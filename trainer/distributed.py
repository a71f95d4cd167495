"""Where training runs: the process group, the device, and how the model is spread over ranks.

    runtime = Runtime.from_env(device="auto")     # torchrun's ranks, or a world of one
    runtime.init_process_group(timeout_min=30)
    parallel = ParallelModel(model, runtime, fsdp=False, compile=False)
    with parallel.gradient_sync(micro_step == grad_accum - 1):
        loss = parallel.train_module(x, y)[1]     # the logits are not kept through backward
        loss.backward()
    norm = parallel.clip_grad_norm_(1.0)
    state = parallel.full_state(optimizer)        # rank 0: full tensors (FSDP: gathered); others: {}
    parallel.load_full_state(optimizer, state)    # from any world size, DDP or FSDP
    runtime.close()

DDP keeps a full replica of weights, gradients and AdamW state on every rank (16 bytes a
parameter in fp32). FSDP (PyTorch's FSDP2, `fully_shard` on every transformer block and on the
root) keeps 1/world_size of each and gathers a block's weights just before it runs: the larger
GPT-2s fit where DDP does not. Checkpoints always hold the full, unsharded state keyed by
parameter name (torch.distributed.checkpoint.state_dict), so a run saved by FSDP on N ranks
resumes on M ranks with or without FSDP, and the tools (sample, HellaSwag, export) read it as a
plain GPT.
"""

import os
import platform
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from models import build_model
from models.device import pick_device_type


def autocast_dtype(choice, device):
    """(dtype for torch.autocast or None for float32, one line saying why) for --dtype.

    auto: bf16 where the GPU computes it natively (Ampere and newer); fp16 on older GPUs (V100,
    T4), whose bf16 is emulated and slow, with loss scaling (see GradScaler in the loop); fp32 on
    CPU and MPS, where bf16 is only fast on some CPUs."""
    if choice == "float32" or (choice == "auto" and device.type != "cuda"):
        return None, "float32"
    if choice == "bfloat16":
        return torch.bfloat16, "bfloat16 autocast"
    if choice == "float16":
        return torch.float16, "float16 autocast with loss scaling"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, f"bfloat16 autocast ({torch.cuda.get_device_name(device)} has native bf16)"
    return torch.float16, (f"float16 autocast with loss scaling ({torch.cuda.get_device_name(device)} "
                           f"has no native bf16)")


@dataclass
class Runtime:
    """This process's place in the job: rank, world size, device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    @classmethod
    def from_env(cls, device="auto"):
        """torchrun's RANK/LOCAL_RANK/WORLD_SIZE (plain python: a world of one) and the device;
        no process group yet, so input checks can fail first, alike on every rank."""
        rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        device_type = pick_device_type(device)
        dev = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device(device_type)
        return cls(rank, local_rank, world_size, dev)

    def init_process_group(self, timeout_min=30, group_of_one=False):
        """Join the job's process group (NCCL on CUDA, gloo otherwise). The timeout bounds how
        long a collective waits for a slow rank, e.g. rank 0 writing a large checkpoint.

        In a world of one only with `group_of_one` (FSDP, whose fully_shard would otherwise make
        a default group itself: from torchrun's env:// without this device or timeout, never
        destroyed; under plain python, with no env:// to read, an error). Plain python has no
        torchrun rendezvous: its group of one keeps its store in memory."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.distributed or group_of_one:
            plain_python = not self.distributed and "MASTER_ADDR" not in os.environ
            alone = dict(store=dist.HashStore(), rank=0, world_size=1) if plain_python else {}
            # device_id binds NCCL to this rank's GPU: its communicator is made here, so a broken
            # NCCL set-up fails at start-up rather than at the first collective
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=timedelta(minutes=timeout_min),
                                    device_id=self.device if self.device.type == "cuda" else None,
                                    **alone)

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM):
        """In place over all ranks (nothing to do in a world of one); returns the tensor."""
        if self.distributed:
            dist.all_reduce(tensor, op=op)
        return tensor

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.distributed:
            return [obj]
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, obj)
        return everyone

    def device_names(self):
        """["host: device name", ...] of every rank, in rank order (a collective)."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = f"{self.device.type} ({platform.processor() or platform.machine()})"
        return self.all_gather_object(f"{socket.gethostname()}: {name}")

    def close(self):
        if dist.is_initialized():
            dist.barrier()  # gloo can abort at exit if one rank leaves while another is busy
            dist.destroy_process_group()


COMPILE_BACKEND_ENV = "TRAIN_COMPILE_BACKEND"  # tests and debugging: eager or aot_eager


def compile_regions(model, backend=None):
    """Compile `model` in place, region by region: the embeddings, each transformer block, and
    the head with the loss (ln_f, lm_head, the fp32 cross-entropy: the largest activation).

    Why regions rather than torch.compile(model): FSDP2's hooks on every block are
    dynamo-disabled, so a whole-model graph breaks inside GPT.forward's block loop and Dynamo
    then runs that frame eagerly; the embeddings, head and loss were never compiled, and with
    activation checkpointing nothing was. The regions hold no FSDP or checkpoint call, so each
    is one full graph (fullgraph=True: a break is an error, never a silent fallback), and all
    blocks share one compiled graph: compile time does not grow with depth (torchtitan's
    per-block compile). DDP uses the same regions so every mode runs the same compiled code: its
    gradient hooks stay outside the graphs, overlapping the all-reduce with the backward; what
    is lost is fusion across a block boundary (one residual add). Dynamo's DDPOptimizer, which
    would cut a region's graph where each 25 MB bucket of DDP ends (a 124m block is 28 MB: its
    graph in two), is turned off for the process (torch._dynamo.config.optimize_ddp). The
    backend is inductor unless $TRAIN_COMPILE_BACKEND names another."""
    backend = backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    torch._dynamo.config.optimize_ddp = False
    for block in model.transformer.h:
        block.compile(backend=backend, fullgraph=True)
    model.embed = torch.compile(model.embed, backend=backend, fullgraph=True)
    model.head = torch.compile(model.head, backend=backend, fullgraph=True)


def _fill_from_cpu(param, init):
    """Draw `init`'s values for the whole of a parameter on CPU, as a model built on CPU draws
    them, and keep this rank's part (its shard of a sharded one): one full parameter at a time
    in memory."""
    full = init(torch.empty(param.shape))
    if hasattr(param, "device_mesh"):  # a DTensor: FSDP's shard
        full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(full)


def build(cfg, runtime, amp_dtype, verbose=False, draw_weights=True, for_device=None, mesh=None):
    """(model, its ParallelModel, its Optimizers: trainer/recipes.py) as a run trains them. The
    same seed on every rank gives identical initial weights; under FSDP the model is built on the
    meta device and each rank materialises only its shards (ParallelModel), with the same
    weights. draw_weights=False (a copy whose values do not matter: the memory trace) leaves
    FSDP's shards undrawn; for_device: the device type of the run when built elsewhere (the
    trace, on CPU); mesh: FSDP's device mesh (default: all ranks)."""
    from trainer.recipes import build_optimizer  # recipes builds on models/, a layer below

    torch.manual_seed(cfg.seed)
    with torch.device("meta" if cfg.fsdp else "cpu"):
        model = build_model(cfg.model_config())
    if not cfg.fsdp and runtime.device.type != "cpu":  # built on CPU (a fake tensor cannot move)
        model = model.to(runtime.device)
    parallel = ParallelModel(model, runtime, fsdp=cfg.fsdp, compile=cfg.compile,
                             activation_checkpointing=cfg.activation_checkpointing,
                             param_dtype=amp_dtype if (for_device or runtime.device.type) == "cuda" else None,
                             draw_weights=draw_weights, mesh=mesh)
    # after wrapping: under FSDP the optimizer holds this rank's shards only
    optimizer = build_optimizer(model, cfg, runtime.device, verbose=verbose)
    return model, parallel, optimizer


class ParallelModel:
    """A GPT wrapped for training on `runtime`: DDP (default) or FSDP, optionally compiled.

    `module` is the plain GPT (its parameters are sharded DTensors under FSDP; with compile its
    regions are compiled in place, see compile_regions): evaluation and generation call it
    directly, inside `eager()`. Under FSDP every rank must then make the same forward calls
    (`lockstep`), since each forward gathers the weights from all ranks.
    """

    def __init__(self, model, runtime, fsdp=False, compile=False, activation_checkpointing=False,
                 param_dtype=None, draw_weights=True, mesh=None):
        """draw_weights=False: a model built on the meta device gets memory but no values (the
        micro-batch probe's copy and the memory trace: nothing drawn from the generator, which
        takes minutes for gpt2-1558m on CPU). mesh: FSDP's device mesh (default: all ranks; the
        memory trace makes its own outside its fake tensors)."""
        self.module, self.runtime, self.fsdp = model, runtime, fsdp
        model.activation_checkpointing = activation_checkpointing
        if compile:  # before sharding, as torchtitan does
            compile_regions(model)
        # built on the meta device (train_gpt2.build under FSDP, and the probe's copy): no rank
        # ever holds the whole model; each allocates its part below (its shards under FSDP),
        # with the weights a model built whole gets unless draw_weights is False
        on_meta = model.lm_head.weight.is_meta
        if fsdp:
            # param_dtype: weights gathered and computed in bf16, gradients reduced in fp32; the
            # sharded master weights and AdamW state stay fp32
            policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
            for block in model.transformer.h:
                fully_shard(block, mesh=mesh, mp_policy=policy)
            # the root holds the embeddings, ln_f and lm_head: the tied wte/lm_head weight is one
            # parameter there, so it stays tied
            fully_shard(model, mesh=mesh, mp_policy=policy)
        if on_meta:
            model.to_empty(device=runtime.device)
            if draw_weights:
                model.init_weights(fill=_fill_from_cpu)
        wrapped = model
        if runtime.distributed and not fsdp:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            # gradients are views of DDP's reduction buckets, no second copy of them, as long
            # as they are zeroed in place between steps (zero_grad below)
            wrapped = DDP(wrapped, device_ids=device_ids, gradient_as_bucket_view=True)
        self.train_module = wrapped

    def eager(self):
        """A context in which the compiled regions run uncompiled. Evaluation and generation use
        it: their no_grad, eval mode and ever-changing shapes would each recompile the regions."""
        return torch.compiler.set_stance("force_eager")

    @property
    def lockstep(self):
        """Whether every rank must run the same number of forward passes (FSDP's all-gathers)."""
        return self.fsdp and self.runtime.distributed

    @contextmanager
    def gradient_sync(self, enabled):
        """Reduce gradients across ranks only when `enabled` (the last micro-step of a step):
        accumulation steps before it stay local. Wrap the forward and the backward."""
        if self.fsdp:
            self.module.set_requires_gradient_sync(enabled)
        elif isinstance(self.train_module, DDP):
            self.train_module.require_backward_grad_sync = enabled  # read by DDP's forward
        yield

    def zero_grad(self, optimizer):
        """Clear the gradients before a step. Under DDP in place: set to None, the accumulation
        micro-steps (which reduce nothing) would allocate fresh gradients beside DDP's buckets
        until the last one copies them in, one more copy of them at the step's peak
        (bench/ddp_gradients.py). Otherwise to None, which frees them during the forward."""
        optimizer.zero_grad(set_to_none=not isinstance(self.train_module, DDP))

    def clip_grad_norm_(self, max_norm):
        """Clip to the global norm over all (possibly sharded) gradients; returns it as a
        plain tensor."""
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def state_bytes(self, optimizer):
        """Bytes of weights, gradients and AdamW state this rank holds: its shards under FSDP,
        full copies under DDP. Gradients match the weights; AdamW's two moments are twice the
        weights (fp32), allocated at the first step."""
        def local_bytes(t):
            t = t.to_local() if hasattr(t, "to_local") else t
            return t.numel() * t.element_size()

        params = {id(p): p for p in self.module.parameters()}.values()  # tied: counted once
        weights = sum(local_bytes(p) for p in params)
        moments = sum(local_bytes(v) for state in optimizer.state.values()
                      for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
        optim = moments or 2 * weights
        return {"weights": weights, "gradients": weights, "optimizer": optim,
                "total": 2 * weights + optim}

    _SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0's CPU
    _LOAD = StateDictOptions(full_state_dict=True)

    def full_state(self, optimizer):
        """{"model", "optimizer"} of full CPU tensors keyed by parameter name, on rank 0 (other
        ranks: empty dicts). A collective under FSDP: every rank calls it."""
        return {"model": get_model_state_dict(self.module, options=self._SAVE),
                "optimizer": get_optimizer_state_dict(self.module, optimizer, options=self._SAVE)}

    def load_full_state(self, optimizer, state):
        """Load a full state (every rank passes it) into this rank's part of model and optimizer."""
        set_model_state_dict(self.module, state["model"], options=self._LOAD)
        if optimizer is not None:
            set_optimizer_state_dict(self.module, optimizer, state["optimizer"], options=self._LOAD)
