"""bench/speedrun.py: how it places a loss on the faithful curve and widens a sweep, its GPT-2
data, its refusals, and its ordering of the four arms on a budget a test can afford (64 steps a
run, ~1 min on 2 quiet cores) on a stream made where a clone has no data: each token chosen by
the two before it, so position (wpe, rotary) and attention matter, not only the embedding."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from test_train import REPO

spec = importlib.util.spec_from_file_location("speedrun_bench", REPO / "bench" / "speedrun.py")
speedrun = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speedrun)

VOCAB = 16
NOISE = 0.1
TOKENS = 65_536  # 64 steps of 1,024 tokens: 1 epoch of the training stream
# each arm's best on this stream at this budget, seed 0 (faithful swept 1.5e-3 to 2e-2: 6e-3
# 2.431, 3e-3 2.434; muon 0.02 to 0.05: 0.05 2.347), so that the faithful arm is not handicapped
ARM_LRS = {"faithful": 6e-3, "muon": 0.05, "modern": 1e-2, "speedrun": 0.03}


def second_order_stream(n_train, n_val, seed=0):
    """(train, val) tokens where each follows its two predecessors (one of 2 successors a pair),
    10% noise; and the true distribution's mean loss on val: no model can honestly go below it."""
    n = n_train + n_val
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, VOCAB, size=(VOCAB, VOCAB, 2))
    tokens = [0, 1]
    for _ in range(n - 2):
        noisy = rng.random() < NOISE
        tokens.append(int(rng.integers(0, VOCAB)) if noisy else int(successors[tokens[-2], tokens[-1], rng.integers(0, 2)]))
    tokens = np.array(tokens)
    chosen = successors[tokens[:-2], tokens[1:-1]]  # (n - 2, 2): each pair's successors
    p = NOISE / VOCAB + (1 - NOISE) / 2 * (chosen == tokens[2:, None]).sum(1)
    tokens = torch.from_numpy(tokens)
    return tokens[:n_train], tokens[n_train:], -np.log(p[-n_val:]).mean()


def test_a_loss_is_placed_on_the_faithful_curve_in_log_tokens_and_never_past_its_ends():
    curve = [(100, 3.0), (200, 2.5), (400, 1.5)]
    assert speedrun.tokens_ratio(2.5, 100, curve) == (pytest.approx(2.0), "")
    assert speedrun.tokens_ratio(2.0, 100, curve) == (pytest.approx(2 * math.sqrt(2)), "")  # halfway, in log tokens
    assert speedrun.tokens_ratio(1.0, 100, curve) == (4.0, ">")  # below the curve: "> 4x", no more
    assert speedrun.tokens_ratio(3.5, 100, curve) == (1.0, "<")


def test_a_sweep_is_widened_past_the_edge_its_best_lr_sits_on():
    lrs = (3e-3, 6e-3, 1e-2, 2e-2)
    assert speedrun.widened(lrs, 2e-2) == (3e-3, 6e-3, 1e-2, 2e-2, 0.04)
    assert speedrun.widened(lrs, 3e-3) == (0.0015, 3e-3, 6e-3, 1e-2, 2e-2)
    assert speedrun.widened(lrs, 6e-3) is None


def test_gpt2_data_is_gpt2s_tokens_renumbered_to_those_that_occur_in_their_id_order():
    # GPT-2 ids: First 5962, Citizen 22307, ":" 25, " hello" 23748, " world" 995, "," 11
    train_ids, val_ids, vocab_size = speedrun.load_gpt2("First Citizen: hello world, hello Citizen")
    assert vocab_size == 6  # occurring, by id: 11 25 995 5962 22307 23748 -> 0..5
    assert train_ids.tolist() == [3, 4, 1, 5, 2, 0, 5] and val_ids.tolist() == [4]  # the 90/10 split


@pytest.mark.parametrize("argv, message", [
    (["--input", "/nonexistent/input.txt"], "error: /nonexistent/input.txt: no such file; pass --input PATH"),
    (["--input", __file__, "--curve", "1,4"], "error: --curve 1,4: give integer multiples >= 2"),
    (["--input", __file__, "--curve", "x"], "error: --curve x: give integer multiples >= 2"),
])
def test_bad_input_is_refused_in_one_line(argv, message, capsys):
    assert speedrun.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.slow
def test_the_speedrun_arm_beats_muon_alone_and_the_block_alone_which_beat_faithful_for_both_seeds():
    train_ids, val_ids, true_loss = second_order_stream(TOKENS, 4096)
    data = (train_ids, val_ids, VOCAB)
    for seed in (0, 1):
        loss = {arm: speedrun.train((arm, lr, TOKENS, seed, data)) for arm, lr in ARM_LRS.items()}
        assert min(loss.values()) > true_loss, (seed, loss, true_loss)  # a model seeing ahead would
        assert loss["speedrun"] < min(loss["muon"], loss["modern"]), (seed, loss)
        assert max(loss["muon"], loss["modern"]) < loss["faithful"], (seed, loss)
