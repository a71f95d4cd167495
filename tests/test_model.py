"""models/gpt2.py and models/hf.py: Hugging Face parity, export round trip, GPT-2 parameter counts, KV-cache generation,
weight-decay groups, init, one 124M training step. CPU, offline, tiny models unless the GPT-2
size is the point."""

import math

import pytest
import torch

from models.gpt2 import GPT, GPTConfig, KVCache, MODEL_CONFIGS, get_config, unwrap
from models.hf import export_hf, gpt_from_hf, hf_config

transformers = pytest.importorskip("transformers")

# a tiny GPT-2 with a small vocabulary: 2 layers, 4 heads, 32 wide, context 32
TINY_HF = dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4)


def _randomize(module, seed=0):
    """Random values everywhere (biases and LayerNorms too), so a missed transpose or a
    mis-mapped tensor cannot hide behind zeros and ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = _randomize(GPT2LMHeadModel(GPT2Config(**TINY_HF, bos_token_id=None, eos_token_id=None)))
    path = tmp_path_factory.mktemp("hf_tiny")
    hf.save_pretrained(path)
    return path


def _hf_logits(path, idx):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(idx).logits


def test_logits_equal_huggingface(hf_dir):
    model = gpt_from_hf(hf_dir).eval()
    assert model.config.vocab_size == 96 and model.config.block_size == 32
    idx = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        _, loss = model(idx[:, :-1], targets=idx[:, 1:])
    theirs = _hf_logits(hf_dir, idx)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # HF shifts the labels itself; our targets are already the next tokens
    from transformers import GPT2LMHeadModel

    with torch.no_grad():
        hf_loss = GPT2LMHeadModel.from_pretrained(hf_dir).eval()(idx, labels=idx).loss
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)


def test_export_reimport_is_lossless(tmp_path):
    cfg = GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=4, n_embd=32)
    model = _randomize(GPT(cfg)).eval()
    export_hf(model, tmp_path / "hf", vocab_size=96)
    back = gpt_from_hf(tmp_path / "hf")
    assert back.config == cfg
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for k in sd:
        assert torch.equal(sd[k], sd_back[k]), k
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        ours, _ = model(idx)
    torch.testing.assert_close(_hf_logits(tmp_path / "hf", idx), ours, atol=1e-5, rtol=1e-5)


def test_export_crops_padded_vocab(tmp_path):
    cfg = GPTConfig(block_size=32, vocab_size=128, n_layer=2, n_head=4, n_embd=32)  # 96 padded
    model = _randomize(GPT(cfg)).eval()
    # through torch.compile's wrapper (lazy: nothing is compiled here): keys must stay clean
    export_hf(unwrap(torch.compile(model)), tmp_path / "hf", vocab_size=96)
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf.config.vocab_size == 96 and hf.lm_head.weight.shape == (96, 32)
    idx = torch.randint(0, 96, (1, 20))
    with torch.no_grad():
        ours, _ = model(idx)
    torch.testing.assert_close(_hf_logits(tmp_path / "hf", idx), ours[..., :96], atol=1e-5, rtol=1e-5)
    back = gpt_from_hf(tmp_path / "hf")
    assert torch.equal(back.lm_head.weight, model.lm_head.weight[:96])


def test_export_with_gpt2_vocab_is_a_complete_offline_folder(tmp_path, monkeypatch):
    """What lm-evaluation-harness needs: AutoTokenizer and AutoModelForCausalLM from the folder
    alone, tokens equal to tiktoken's, logits equal to ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.tokenizer import get_gpt2_encoding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _randomize(GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=2, n_embd=16))).eval()
    export_hf(model, tmp_path / "hf")
    text = "Hello, I'm a language model, naïve café 日本 <|endoftext|> end"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tokenizer(text)["input_ids"]
    assert ids == get_gpt2_encoding().encode(text, allowed_special="all")
    assert tokenizer.eos_token_id == 50256 and tokenizer.model_max_length == 64
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours[..., :50257], atol=1e-5, rtol=1e-5)


def test_gpt2_124m_param_counts():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        padded = GPT(get_config("gpt2"))
        exact = GPT(get_config("124m", vocab_size=50257))
    assert padded.config.vocab_size == 50304
    assert exact.num_params() == 124_439_808
    assert padded.num_params() == 124_475_904
    assert exact.num_params(non_embedding=True) == 124_439_808 - 1024 * 768
    assert padded.lm_head.weight is padded.transformer.wte.weight  # tied, counted once
    L, H, Q, T = 12, 12, 64, 1024
    assert padded.flops_per_token(T) == 6 * padded.num_params(non_embedding=True) + 12 * L * H * Q * T


def test_named_configs():
    sizes = {name: (c.n_layer, c.n_head, c.n_embd) for name, c in MODEL_CONFIGS.items()}
    assert sizes["gpt2-medium"] == (24, 16, 1024) and sizes["gpt2-large"] == (36, 20, 1280)
    assert sizes["gpt2-xl"] == (48, 25, 1600)
    assert get_config("1558M") == MODEL_CONFIGS["gpt2-xl"]
    c = get_config("tiny", dropout=0.1)
    assert c.dropout == 0.1 and MODEL_CONFIGS["tiny"].dropout == 0.0  # a copy
    assert GPTConfig.from_dict({**c.to_dict(), "unknown": 1}) == c
    with pytest.raises(ValueError, match="unknown model size"):
        get_config("gpt5")


def test_forward_shapes_and_ignore_index():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    idx = torch.randint(0, 512, (2, 16))
    logits, loss = model(idx)
    assert logits.shape == (2, 16, 512) and loss is None
    targets = torch.randint(0, 512, (2, 16))
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 512), targets[:, 8:].reshape(-1))
    targets[:, :8] = -1  # ignored positions
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, expected)
    assert abs(loss.item() - math.log(512)) < 0.5  # ~uniform at init
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_kv_cache_forward_matches_full_forward():
    torch.manual_seed(0)
    model = GPT(get_config("tiny")).eval()
    idx = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config.n_layer, model.config.block_size)
        # a prefill, then multi-token chunks (masked), then single tokens (unmasked)
        chunks = [model(idx[:, :10], kv_cache=cache)[0], model(idx[:, 10:25], kv_cache=cache)[0]]
        chunks += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(25, 40)]
    assert cache.pos == 40
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.8, 20), (0.0, None)])
def test_kv_cache_generation_equals_recompute(temperature, top_k):
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))  # block_size 64: 60 new tokens cross the context limit
    prompt = torch.randint(0, 512, (3, 12))

    def gen(use_kv_cache):
        g = torch.Generator().manual_seed(1234)
        return model.generate(prompt, 60, temperature=temperature, top_k=top_k, generator=g,
                              use_kv_cache=use_kv_cache)

    cached, recomputed = gen(True), gen(False)
    assert cached.shape == (3, 72)
    assert torch.equal(cached[:, :12], prompt)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached, gen(True))  # same seed, same tokens
    assert model.training  # generate() restores the mode


def test_generate_respects_vocab_size_and_top_k():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    prompt = torch.zeros(4, 1, dtype=torch.long)
    out = model.generate(prompt, 30, vocab_size=65, generator=torch.Generator().manual_seed(0))
    assert out.max().item() < 65
    # top_k=1 is greedy
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompt, 10, top_k=1, generator=g),
                       model.generate(prompt, 10, temperature=0.0))


def test_weight_decay_groups(capsys):
    model = GPT(get_config("tiny"))
    opt = model.configure_optimizer(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95),
                                    eps=1e-8, device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    out = capsys.readouterr().out
    assert "decayed" in out
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    decayed, plain = by_decay[0.1], by_decay[0.0]
    # named_parameters lists the tied lm_head/wte matrix once, as transformer.wte.weight
    assert decayed == {"transformer.wte.weight", "transformer.wpe.weight"} | {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert all(n.endswith("bias") or ".ln_" in n for n in plain)
    assert len(plain) == 2 * (4 + 4) + 2  # per layer 4 Linear biases + 2 LayerNorms (w, b); ln_f
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_params()
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["fused"] is True  # fused on CPU too
    assert "AdamW fused" in out


def test_init_std():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=512, n_layer=8, n_head=4, n_embd=128)
    model = GPT(cfg)
    block = model.transformer.h[3]
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(block.mlp.c_fc.bias == 0) and torch.all(block.ln_1.weight == 1)


def test_unwrap_ddp_and_compile(tmp_path):
    import torch.distributed as dist

    model = GPT(get_config("tiny"))
    assert unwrap(model) is model
    compiled = torch.compile(model)  # lazy: nothing compiles until called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap(compiled) is model
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert unwrap(ddp) is model and unwrap(torch.compile(ddp)) is model
        assert list(unwrap(ddp).state_dict()) == list(model.state_dict())
    finally:
        dist.destroy_process_group()


def test_from_pretrained_clear_error_offline(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="could not load .*no such folder.*go online"):
        gpt_from_hf(tmp_path / "missing")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="could not load .*put a local copy.*go online"):
        gpt_from_hf("no-such-org/no-such-gpt2")


def test_another_architecture_is_not_read_as_gpt2(speedrun_export):
    """GPT-2's classes would read the speedrun's Qwen3 export (fresh weights, a GPT-2 of Qwen3's
    shape) and only warn: its weights and its shape (--init-from's plan) are refused."""
    with pytest.raises(ValueError, match="is a Qwen3ForCausalLM, not a GPT-2"):
        gpt_from_hf(speedrun_export[1])
    with pytest.raises(ValueError, match="is a qwen3 model, not a GPT-2"):
        hf_config(speedrun_export[1])


def test_gpt2_124m_training_step():
    torch.manual_seed(0)
    model = GPT(get_config("gpt2"))
    opt = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95), 1e-8, "cpu", verbose=False)
    x = torch.randint(0, 50257, (1, 64))
    y = torch.randint(0, 50257, (1, 64))
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(50304)) < 0.5
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert torch.isfinite(norm)
    assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)


def test_export_cli_from_checkpoint(tmp_path, capsys):
    import hf_gpt2

    cfg = GPTConfig(block_size=32, vocab_size=128, n_layer=2, n_head=4, n_embd=32)
    model = _randomize(GPT(cfg))
    ckpt = {"model": model.state_dict(), "config": {"model": cfg.to_dict(), "data": None}, "step": 5}
    torch.save(ckpt, tmp_path / "ckpt_0000005.pt")
    rc = hf_gpt2.main(["export", str(tmp_path), str(tmp_path / "hf"), "--vocab-size", "100"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    back = gpt_from_hf(tmp_path / "hf")
    assert back.config.vocab_size == 100
    assert torch.equal(back.lm_head.weight, model.lm_head.weight[:100])
    assert hf_gpt2.main(["export", str(tmp_path / "none.pt"), str(tmp_path / "x")]) == 2
