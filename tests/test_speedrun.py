"""--recipe speedrun: the modern block (models/modern.py) and its Qwen3 export (models/hf.py)."""

import subprocess
import sys

import pytest
import torch

from models.modern import ModernConfig, ModernGPT
from test_train import REPO

TINY = ModernConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


def trained_a_little(model):
    """Every weight moved off its init (zeros included), as training would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_modern_model_starts_at_zero_logits_and_caches_keys_exactly():
    torch.manual_seed(0)
    model = ModernGPT(TINY)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith("bias") for n in names) and "transformer.h.0.attn.v_proj.weight" in names
    idx = torch.randint(0, 64, (2, 10))
    logits, loss = model(idx, idx)
    assert torch.equal(logits, torch.zeros_like(logits))  # zero head: log(64) to start
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item())
    trained_a_little(model)
    cached = model.generate(idx[:, :4], 12, temperature=0, use_kv_cache=True)
    recomputed = model.generate(idx[:, :4], 12, temperature=0, use_kv_cache=False)
    assert torch.equal(cached, recomputed)


def test_export_is_a_qwen3_with_the_same_logits(tmp_path):
    """hf_gpt2.py export of a speedrun checkpoint: a Qwen3ForCausalLM folder transformers loads
    with no remote code, with our logits (the embedding's RMSNorm folded into its rows)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = trained_a_little(ModernGPT(TINY))
    torch.save({"model": model.state_dict(), "step": 1, "format": 3,
                "config": {"data": "", "model": TINY.to_dict()}}, tmp_path / "ckpt_0000001.pt")
    out = subprocess.run([sys.executable, "hf_gpt2.py", "export", str(tmp_path), str(tmp_path / "hf"),
                          "--vocab-size", "64"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Qwen3ForCausalLM" in out.stdout
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=False).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], rtol=0, atol=1e-4)
