"""CORE's speed without changing a result: several examples per forward, the output layer on the
scored positions only, and a stop request polled once per batch."""

import pytest
import torch

from core_bundle import write_bundle
from evaluation import core
from evaluation.models import load_hf_model_fn
from evaluation.scoring import Logits, score_rows
from models.gpt2 import GPT, GPTConfig
from pipeline.tokenizer import get_gpt2_encoding
from test_core import random_hf_gpt2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tasks, _ = core.load_tasks(write_bundle(tmp_path_factory.mktemp("bundle") / "eval_bundle"))
    return core.prepare(tasks, get_gpt2_encoding(), context=64)


@pytest.fixture(scope="module")
def hf_model_fn(tmp_path_factory):
    return load_hf_model_fn(str(random_hf_gpt2(tmp_path_factory.mktemp("hf") / "tiny", context=64)), "cpu")[0]


class Counted(Logits):
    """A Logits that records the rows of every forward."""

    def __init__(self, inner, calls):
        super().__init__(inner.model)
        self.calls = calls

    def __call__(self, idx, where=None):
        self.calls.append(idx.shape[0])
        return super().__call__(idx, where)


def test_batches_of_examples_score_every_row_as_it_scores_alone(prepared, hf_model_fn):
    """Rows of several examples, right-padded into one forward, get the scores they get alone
    (padding follows a row's real tokens, which causal attention never lets them see)."""
    alone, batched = [], []
    one = core.evaluate(Counted(hf_model_fn, alone), prepared, batch_size=1)
    eight = core.evaluate(Counted(hf_model_fn, batched), prepared, batch_size=8)
    assert one["tasks"] == eight["tasks"]
    assert alone == [2, 2, 2, 3, 2, 2, 2, 2, 1, 1, 1, 1]  # one forward per example: its choices
    assert batched == [11, 6, 4]  # one per task: 5 examples of 2-3 choices, 3 of 2, 4 of 1
    for p in prepared[:1]:  # arc_easy: 11 rows of 5 examples
        rows = [row for r in p.examples for row in r.tokens]
        masks = [m for r in p.examples for m in r.mask]
        together = score_rows(hf_model_fn, rows, masks, "cpu", 50257)
        separate = [score_rows(hf_model_fn, [row], [m], "cpu", 50257) for row, m in zip(rows, masks)]
        assert together.loglik.tolist() == pytest.approx([s.loglik.item() for s in separate], abs=1e-5)
        assert together.greedy.tolist() == [s.greedy.item() for s in separate]
        assert together.n_tokens.tolist() == [s.n_tokens.item() for s in separate]


def test_the_output_layer_runs_on_the_scored_positions_only(hf_model_fn):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=16, vocab_size=512, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 500, (3, 10))
    where = torch.zeros(3, 10, dtype=torch.bool)
    where[0, 7:] = where[2, 4:6] = True
    for model_fn in (Logits(gpt), hf_model_fn):
        shapes = []
        hook = model_fn.model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
        full, scored = model_fn(idx), model_fn(idx, where)
        hook.remove()
        vocab = full.shape[-1]
        assert shapes == [(3, 10, vocab), (5, vocab)]  # 5 positions of 30
        torch.testing.assert_close(scored, full[where], atol=1e-5, rtol=1e-5)
        assert model_fn(idx).shape == (3, 10, vocab)  # the hook is gone


def test_a_stop_request_ends_the_evaluation_between_batches(prepared, hf_model_fn):
    calls, polls = [], []
    result = core.evaluate(Counted(hf_model_fn, calls), prepared, batch_size=2,
                           should_stop=lambda: polls.append(len(calls)) or len(polls) == 3)
    assert result is None
    assert polls == [0, 1, 2] and calls == [4, 5]  # polled before each batch; the third never ran
