"""trainer.distributed.Runtime's CUDA-only lines, checked on CPU through the calls they make."""

from datetime import timedelta

import torch
import torch.distributed as dist

from trainer.distributed import Runtime


def init_calls(monkeypatch, device, world_size=4):
    calls = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.update(set_device=d))
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.update(kwargs))
    Runtime(rank=3, local_rank=1, world_size=world_size, device=device).init_process_group(7)
    return calls


def test_nccl_process_group_binds_each_rank_to_its_gpu(monkeypatch):
    """device_id on CUDA: NCCL forms the communicator at start-up on this rank's GPU (an NCCL
    problem fails there, not at the first collective)."""
    gpu = torch.device("cuda", 1)
    assert init_calls(monkeypatch, gpu) == {"set_device": gpu, "backend": "nccl", "device_id": gpu,
                                            "timeout": timedelta(minutes=7)}


def test_gloo_process_group_on_cpu_binds_no_device(monkeypatch):
    assert init_calls(monkeypatch, torch.device("cpu")) == {"backend": "gloo", "device_id": None,
                                                            "timeout": timedelta(minutes=7)}
    assert init_calls(monkeypatch, torch.device("cpu"), world_size=1) == {}  # a world of one: no group
