"""A CPU stand-in for torch.cuda.max_memory_allocated: the bytes of tensor storage alive, counted
op by op, and their peak. Optionally an allocator that runs out: above `limit` bytes the op that
allocated raises torch.OutOfMemoryError, as CUDA's caching allocator would.

    with LiveBytes() as counter:
        ...                      # counts every storage created inside, until it is freed
        counter.reset_peak()     # the peak from here on
    counter.peak

Storages are followed through weak references (as torch.distributed._tools.mem_tracker does) and
measured again after every op: FSDP frees and regrows its unsharded weights with
UntypedStorage.resize_, which is not an op.
"""

import weakref

import torch
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    def __init__(self, limit=None):
        super().__init__()
        self.limit = limit
        self.storages = {}  # id -> weakref to every storage created under the mode, still alive
        self.peak = 0

    def _forget(self, key):
        self.storages.pop(key, None)

    @property
    def now(self):
        return sum(ref().nbytes() for ref in list(self.storages.values()) if ref() is not None)

    def reset_peak(self):
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                for storage in get_untyped_storages(t):
                    key = id(storage)
                    if key not in self.storages:
                        self.storages[key] = weakref.ref(storage, lambda _, key=key: self._forget(key))
        now = self.now
        self.peak = max(self.peak, now)
        if self.limit is not None and now > self.limit:
            del out
            raise torch.OutOfMemoryError(f"emulated out of memory: {now:,} bytes live > {self.limit:,}")
        return out
