"""shards.loader: global-batch semantics, shard ends, shuffling, resume state, validation split."""

import numpy as np
import pytest
import torch

from shards.format import write_shard
from shards.loader import LoaderError, ShardLoader, ValLoader

T = 8
TOTAL_SEQS = 8  # sequences per global batch (= total_batch_size // T)
SPLITS = [(1, 4, 2), (2, 2, 2), (4, 1, 2), (2, 1, 4), (1, 1, 8)]  # (world_size, grad_accum, B)


@pytest.fixture
def data(tmp_path):
    """Three train shards of different sizes (with remainders) and one val shard."""
    rng = np.random.default_rng(0)
    sizes = {"val_000000": 300, "train_000001": 700, "train_000002": 530, "train_000003": 290}
    for name, n in sizes.items():
        write_shard(tmp_path / f"t_{name}.bin", rng.integers(0, 256, n))
    return tmp_path


def global_batches(data, world_size, grad_accum, B, steps, **kw):
    """The set-by-step stream: for each step, the sorted rows (as tuples) of every rank's x,y."""
    loaders = [ShardLoader(data, "train", B, T, grad_accum, r, world_size, **kw)
               for r in range(world_size)]
    out = []
    for _ in range(steps):
        rows = []
        for _ in range(grad_accum):
            for loader in loaders:
                x, y = loader.next_batch()
                assert x.shape == y.shape == (B, T) and x.dtype == torch.long
                assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
                rows += [tuple(a.tolist()) + (b[-1].item(),) for a, b in zip(x, y)]
        out.append(sorted(rows))
    return out, loaders


@pytest.mark.parametrize("shuffle", [False, True])
def test_global_batch_is_split_invariant(data, shuffle):
    # 2 epochs: (699//8)//8 + (529//8)//8 + (289//8)//8 = 10 + 8 + 4 = 22 steps each
    ref, _ = global_batches(data, *SPLITS[0], steps=50, shuffle=shuffle, seed=3)
    for split in SPLITS[1:]:
        other, _ = global_batches(data, *split, steps=50, shuffle=shuffle, seed=3)
        assert other == ref, split


def test_unshuffled_stream_is_contiguous_and_drops_shard_remainders(data):
    loader = ShardLoader(data, "train", 2, T, 4, 0, 1)
    assert loader.batches_per_shard == [10, 8, 4] and len(loader) == 22
    from shards.format import read_shard

    shards = [np.asarray(read_shard(data / f"t_train_00000{i}.bin")) for i in (1, 2, 3)]
    expected = []
    for tokens, n in zip(shards, loader.batches_per_shard):
        expected += [tokens[i * T : i * T + T + 1] for i in range(n * TOTAL_SEQS)]
    got = []
    for _ in range(22 * 4):
        x, y = loader.next_batch()
        got += [np.append(a.numpy(), b[-1].item()) for a, b in zip(x, y)]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected)) and len(got) == len(expected)
    # every rank serves the same number of batches per shard; then epoch 1 starts over
    assert (loader.epoch, loader.shard, loader.batch) == (1, 0, 0)
    x, _ = loader.next_batch()
    assert np.array_equal(x[0].numpy(), shards[0][:T])


def test_shuffle_is_seeded_and_changes_per_epoch(data):
    a, _ = global_batches(data, 1, 4, 2, steps=44, shuffle=True, seed=1)
    b, _ = global_batches(data, 2, 2, 2, steps=44, shuffle=True, seed=1)
    c, _ = global_batches(data, 1, 4, 2, steps=44, shuffle=True, seed=2)
    plain, _ = global_batches(data, 1, 4, 2, steps=22)
    assert a == b and a != c and a[:22] != plain
    assert a[:22] != a[22:]  # a new order in epoch 1


@pytest.mark.parametrize("shuffle", [False, True])
def test_state_round_trip_across_world_sizes(data, shuffle):
    ref, _ = global_batches(data, 1, 4, 2, steps=30, shuffle=shuffle, seed=5)
    _, loaders = global_batches(data, 2, 2, 2, steps=13, shuffle=shuffle, seed=5)
    state = loaders[0].state_dict()
    assert state == loaders[1].state_dict()
    if not shuffle:  # 13 steps = shard 0's 10 batches + 3
        assert {k: state[k] for k in ("epoch", "shard", "batch")} == {"epoch": 0, "shard": 1, "batch": 3}
    resumed = [ShardLoader(data, "train", 1, T, 2, r, 4, shuffle=shuffle, seed=5) for r in range(4)]
    for loader in resumed:
        loader.load_state_dict(state)
    rest = []
    for _ in range(17):
        rows = []
        for _ in range(2):
            for loader in resumed:
                x, y = loader.next_batch()
                rows += [tuple(a.tolist()) + (b[-1].item(),) for a, b in zip(x, y)]
        rest.append(sorted(rows))
    assert rest == ref[13:]


def test_state_refuses_a_different_stream(data):
    loader = ShardLoader(data, "train", 2, T, 4, 0, 1)
    state = loader.state_dict()
    with pytest.raises(LoaderError, match="global_seqs"):
        ShardLoader(data, "train", 2, T, 2, 0, 1).load_state_dict(state)
    with pytest.raises(LoaderError, match="seed"):
        ShardLoader(data, "train", 2, T, 4, 0, 1, seed=9).load_state_dict(state)
    loader.next_batch()
    with pytest.raises(RuntimeError, match="middle"):
        loader.state_dict()


def test_val_loader_is_world_size_invariant(data):
    def rows(ws, B):
        out = []
        for r in range(ws):
            for x, y in ValLoader(data, B, T, r, ws, tokens=200):
                out += [tuple(a.tolist()) + (b[-1].item(),) for a, b in zip(x, y)]
        return sorted(out)

    one = ValLoader(data, 4, T, tokens=200)
    assert one.num_tokens == 200 and one.num_sequences == 25
    assert rows(1, 4) == rows(2, 3) == rows(3, 4) and len(rows(1, 4)) == 25
    big = ValLoader(data, 4, T, tokens=10_485_760)  # more than the shard holds: all of it
    assert big.num_sequences == 299 // T


def test_clear_errors(tmp_path, data):
    with pytest.raises(LoaderError, match="python -m pipeline.fineweb"):
        ShardLoader(tmp_path / "empty", "train", 2, T, 1, 0, 1)
    # 128 sequences of 8 + 1 tokens: more than the largest shard (700 tokens) holds
    with pytest.raises(LoaderError, match=r"3 shards \(.*\): none holds \(the largest has 700 tokens\) "
                                          "one global batch of 128 sequences of 8 tokens plus the target"):
        ShardLoader(data, "train", 16, T, 8, 0, 1)


@pytest.fixture
def data_with_short_shards(data):
    """The `data` shards, then two too short for a global batch of 8 sequences (65 tokens) around
    a long one: one in the middle of the stream, one at its end (a corpus's tail shard)."""
    rng = np.random.default_rng(1)
    for name, n in {"train_000004": 64, "train_000005": 200, "train_000006": 40}.items():
        write_shard(data / f"t_{name}.bin", rng.integers(0, 256, n))
    return data


@pytest.mark.parametrize("shuffle", [False, True])
def test_short_shards_are_skipped_whatever_the_split(data_with_short_shards, shuffle):
    """A shard shorter than one global batch is left out: the stream is the one of the folder
    without it, the same for every split, and its state resumes on another split."""
    loader = ShardLoader(data_with_short_shards, "train", 2, T, 4, 0, 1)
    assert [(p.name, n) for p, n in loader.skipped] == [("t_train_000004.bin", 64), ("t_train_000006.bin", 40)]
    assert loader.batches_per_shard == [10, 8, 4, 3] and len(loader) == 25
    ref, _ = global_batches(data_with_short_shards, *SPLITS[0], steps=50, shuffle=shuffle, seed=3)
    for split in SPLITS[1:]:
        other, _ = global_batches(data_with_short_shards, *split, steps=50, shuffle=shuffle, seed=3)
        assert other == ref, split
    _, loaders = global_batches(data_with_short_shards, 2, 2, 2, steps=13, shuffle=shuffle, seed=3)
    resumed = ShardLoader(data_with_short_shards, "train", 8, T, 1, 0, 1, shuffle=shuffle, seed=3)
    resumed.load_state_dict(loaders[0].state_dict())
    rest = []
    for _ in range(37):
        x, y = resumed.next_batch()
        rest.append(sorted(tuple(a.tolist()) + (b[-1].item(),) for a, b in zip(x, y)))
    assert rest == ref[13:]
    for short in ("t_train_000004.bin", "t_train_000006.bin"):
        (data_with_short_shards / short).unlink()
    without, _ = global_batches(data_with_short_shards, *SPLITS[0], steps=50, shuffle=shuffle, seed=3)
    assert without == ref


def test_reads_through_memmaps(data, monkeypatch):
    """The loader never reads a shard whole: it maps it (np.memmap) and copies only its rows."""
    import shards.loader as loader_module

    seen = []
    real = loader_module.read_shard

    def spy(path):
        tokens = real(path)
        seen.append(type(tokens))
        return tokens

    monkeypatch.setattr(loader_module, "read_shard", spy)
    loader = ShardLoader(data, "train", 2, T, 4, 0, 1)
    for _ in range(30 * 4):
        loader.next_batch()
    list(ValLoader(data, 4, T, tokens=200))
    assert seen and all(issubclass(t, np.memmap) for t in seen)
