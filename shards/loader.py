"""The distributed data loader: token shards on disk -> (x, y) micro-batches for each rank.

A shard of N tokens holds (N - 1) // T sequences of T + 1 tokens; sequence i starts at token
i * T (consecutive sequences share one boundary token, so every token is a target exactly once,
as in build-nanogpt). A *global batch* is S = total_batch_size // T sequences: the whole step's
data. It is cut into micro-batches of B sequences, and micro-step m of rank r takes slice
m * world_size + r. So the set of sequences in a step depends only on (T, S), never on how
(world_size, grad_accum, B) split it: 1 GPU x 32 accumulation steps and 8 GPUs x 4 see the same
data, and a run can resume on a different number of GPUs.

Each shard serves (N - 1) // T // S whole global batches; the few leftover sequences at its end
are dropped, so every rank always moves to the next shard at the same step. A shard too short for
one global batch (a corpus's tail shard) is left out of the stream altogether: that depends only
on (T, S), so every split leaves out the same shards; only a folder where no shard holds one
global batch is refused. With shuffle=True the shard order and the order of sequences within each
shard are permuted per epoch by a generator seeded with (seed, epoch[, shard]): the same on every
rank and after a resume.

Shards are memory-mapped (shards.format.read_shard): a rank's host memory stays at a few batches,
whatever the shard size (build-nanogpt loads a whole 100M-token shard as int64, ~800 MB a rank).
"""

from pathlib import Path

import numpy as np
import torch

from shards.format import read_shard
from shards.manifest import list_shards

DEFAULT_VAL_TOKENS = 10_485_760  # build-nanogpt on 8 GPUs (20 steps x 8 x 64 x 1024), modded-nanogpt


class LoaderError(Exception):
    """The shard folder cannot serve the requested batches; the message says what to do."""


def find_shards(data_dir, split):
    """Sorted shard paths of `split`, or a LoaderError naming the command that makes them."""
    try:
        paths = list_shards(data_dir, split)
    except FileNotFoundError:
        paths = []
    if not paths:
        raise LoaderError(f"no {split} shards in {data_dir}: make them with "
                          f"`python -m pipeline.fineweb --out {data_dir}` (or pass --data DIR)")
    return paths


def sequences_in(tokens, seq_len):
    """How many (T + 1)-token sequences with stride T fit in a shard of `tokens` tokens."""
    return max(tokens - 1, 0) // seq_len


def describe_global_batch(global_seqs, seq_len):
    """'512 sequences of 1,024 tokens plus the target (524,288 tokens)': what one step reads."""
    return (f"{global_seqs:,} sequence{'s' * (global_seqs != 1)} of {seq_len:,} tokens plus the target "
            f"({global_seqs * seq_len:,} tokens)")


def describe_shards(paths):
    """One name for a list of shards: the path of one, or 'N shards (first .. last)'."""
    if len(paths) == 1:
        return str(paths[0])
    return f"{len(paths)} shards ({paths[0]} .. {Path(paths[-1]).name})"


def too_short_for_a_batch(paths, largest, seq_len, global_seqs):
    """The one line refusing a split none of whose shards holds one global batch."""
    what = (f"{largest:,} tokens, less than" if len(paths) == 1 else
            f"none holds (the largest has {largest:,} tokens)")
    return (f"{describe_shards(paths)}: {what} one global batch of "
            f"{describe_global_batch(global_seqs, seq_len)}; use a smaller --total-batch-size or "
            f"larger shards (--shard-tokens)")


def read_sequences(tokens, starts, seq_len):
    """(x, y) LongTensors (len(starts), T) from the memmap; only those rows are read."""
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    buf = torch.from_numpy(rows)
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # plain copies move to a GPU fastest


class ShardLoader:
    """Serves this rank's micro-batches of the global batch stream; see the module docstring.

    Call next_batch() grad_accum times per step. state_dict() (between steps) is a few ints.
    """

    def __init__(self, data_dir, split, micro_batch, seq_len, grad_accum, rank, world_size,
                 shuffle=False, seed=0):
        self.B, self.T = micro_batch, seq_len
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.global_seqs = micro_batch * grad_accum * world_size  # S: sequences per step
        paths = find_shards(data_dir, split)
        # tokens per shard, from the headers only (read_shard maps, it does not read)
        tokens = [len(read_shard(path)) for path in paths]
        batches = [sequences_in(n, seq_len) // self.global_seqs for n in tokens]
        # the stream: shards holding at least one global batch; `skipped`: (path, tokens) of the rest
        self.paths = [path for path, n in zip(paths, batches) if n]
        self.batches_per_shard = [n for n in batches if n]
        self.skipped = [(path, t) for path, t, n in zip(paths, tokens, batches) if not n]
        if not self.paths:
            raise LoaderError(too_short_for_a_batch(paths, max(tokens), seq_len, self.global_seqs))
        self.epoch, self.shard, self.batch = 0, 0, 0  # position, in global batches
        self.micro_step = 0
        self._loaded = None  # (epoch, shard position) -> (memmap, sequence order)

    def __len__(self):
        """Global batches (steps) in one epoch."""
        return sum(self.batches_per_shard)

    def _shard_order(self, epoch):
        order = np.arange(len(self.paths))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return order

    def _current(self):
        """The memmap and the sequence start offsets of the shard we are in (cached)."""
        key = (self.epoch, self.shard)
        if self._loaded is None or self._loaded[0] != key:
            index = self._shard_order(self.epoch)[self.shard]
            tokens = read_shard(self.paths[index])
            n = sequences_in(len(tokens), self.T)
            if self.shuffle:
                # permute all sequences, then keep whole batches: the dropped ones vary per epoch
                seqs = np.random.default_rng([self.seed, self.epoch, int(index)]).permutation(n)
            else:
                seqs = np.arange(n)
            seqs = seqs[: self.batches_per_shard[index] * self.global_seqs]
            self._loaded = (key, tokens, seqs * self.T)
        return self._loaded[1], self._loaded[2]

    def next_batch(self):
        tokens, starts = self._current()
        # micro-step m of rank r takes slice m * world_size + r of the global batch
        first = self.batch * self.global_seqs + (self.micro_step * self.world_size + self.rank) * self.B
        x, y = read_sequences(tokens, starts[first : first + self.B], self.T)
        self.micro_step += 1
        if self.micro_step == self.grad_accum:
            self.micro_step = 0
            self._advance()
        return x, y

    def _advance(self):
        self.batch += 1
        if self.batch == self.batches_per_shard[self._shard_order(self.epoch)[self.shard]]:
            self.batch, self.shard = 0, self.shard + 1
            if self.shard == len(self.paths):
                self.shard, self.epoch = 0, self.epoch + 1

    def state_dict(self):
        """Position in global batches, plus what must match for a resume to be exact."""
        if self.micro_step != 0:
            raise RuntimeError("ShardLoader.state_dict() in the middle of a step's micro-batches")
        return {"epoch": self.epoch, "shard": self.shard, "batch": self.batch,
                "seq_len": self.T, "global_seqs": self.global_seqs, "num_shards": len(self.paths),
                "shuffle": int(self.shuffle), "seed": self.seed}

    def load_state_dict(self, state):
        """Continue the saved stream exactly; any world size or micro-batch split will do."""
        mine = self.state_dict()
        for key in ("seq_len", "global_seqs", "num_shards", "shuffle", "seed"):
            if state[key] != mine[key]:
                raise LoaderError(
                    f"cannot resume the data stream exactly: the checkpoint's loader has {key}="
                    f"{state[key]} but this run has {mine[key]} (keep --seq-len, --total-batch-size, "
                    f"--shuffle, --seed and the shard folder of the original run)")
        self.epoch, self.shard, self.batch = state["epoch"], state["shard"], state["batch"]
        self.micro_step = 0
        if self.batch >= self.batches_per_shard[self._shard_order(self.epoch)[self.shard]]:
            raise LoaderError(f"loader state {state} is past the end of its shard: shards changed?")


class ValLoader:
    """A fixed number of validation tokens, split across ranks; iterate for this rank's (x, y).

    The first `tokens // T` sequences of the val shard(s) (stride T, as training); rank r takes
    sequences r, r + world_size, ... So summing the per-token losses over ranks and dividing by
    num_tokens gives the same loss for any world size. Asking for more tokens than the shards
    hold evaluates all of them (`num_tokens` says how many).
    """

    def __init__(self, data_dir, micro_batch, seq_len, rank=0, world_size=1,
                 tokens=DEFAULT_VAL_TOKENS, split="val"):
        self.B, self.T = micro_batch, seq_len
        self.rank, self.world_size = rank, world_size
        self.maps = []  # memmaps of the val shards used
        self.starts = []  # (index into self.maps, start offset) of every sequence, in order
        wanted = tokens // seq_len
        for path in find_shards(data_dir, split):
            shard = read_shard(path)
            n = min(sequences_in(len(shard), seq_len), wanted - len(self.starts))
            self.starts += [(len(self.maps), i * seq_len) for i in range(n)]
            self.maps.append(shard)
            if len(self.starts) == wanted:
                break
        if not self.starts:
            raise LoaderError(f"{data_dir}: {split} shards hold less than one sequence of "
                              f"{seq_len + 1} tokens")
        self.num_sequences = len(self.starts)
        self.num_tokens = self.num_sequences * seq_len
        self.requested_tokens = tokens

    @property
    def num_batches(self):
        """Batches this rank yields."""
        return -(-len(self.starts[self.rank :: self.world_size]) // self.B)

    @property
    def max_batches(self):
        """Batches of the rank with the largest share (rank 0)."""
        return -(-len(self.starts[:: self.world_size]) // self.B)

    def __iter__(self):
        mine = self.starts[self.rank :: self.world_size]
        for i in range(0, len(mine), self.B):
            rows = [read_sequences(self.maps[m], [s], self.T) for m, s in mine[i : i + self.B]]
            yield torch.cat([x for x, _ in rows]), torch.cat([y for _, y in rows])
