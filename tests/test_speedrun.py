"""--recipe speedrun: the modern block (models/modern.py) and its Qwen3 export (models/hf.py),
Muon with AdamW (trainer/muon.py, trainer/recipes.py) in one process, under DDP and under FSDP
with activation checkpointing, exact resume, and the refusals. test_train.py's tiny model and
data, for 20 steps."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tiny_train_flags
from models.modern import ModernConfig, ModernGPT
from test_train import REPO, data, read_log, run  # noqa: F401
from trainer.config import parse_config
from trainer.muon import Muon, orthogonalize, owner_ranks
from trainer.recipes import muon_momentum, wsd_multiplier

STEPS = 20
SPEEDRUN = ["--recipe", "speedrun", "--lr", "0.02", "--min-lr", "0", "--warmup-steps", "0",
            "--max-steps", str(STEPS)]

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


def assert_same_losses(a, b, tol):
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) / abs(b[k]) for k in a)
    assert worst <= tol, f"losses differ by up to {worst:.2e} (relative)"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted speedrun: 1 process, accumulation 4, checkpoints every 10 steps."""
    out = tmp_path_factory.mktemp("speedrun")
    run(out, data, extra=SPEEDRUN)
    return out


def test_speedrun_learns_and_saves_both_optimizers_by_name(reference):
    train, _ = read_log(reference)
    assert sorted(train) == list(range(STEPS))
    assert sum(train[s] for s in range(5)) / 5 > sum(train[s] for s in range(15, 20)) / 5 + 1.0
    ckpt = torch.load(reference / f"ckpt_{STEPS:07d}.pt", weights_only=True)
    assert ckpt["format"] == 3 and ckpt["config"]["recipe"] == "speedrun"
    assert ckpt["config"]["model"]["arch"] == "modern"
    state = ckpt["optimizer"]["state"]
    # Muon: one buffer per matrix; AdamW: two moments for the rest
    assert set(state["transformer.h.0.attn.q_proj.weight"]) == {"momentum_buffer"}
    assert set(state["transformer.h.1.mlp.down_proj.weight"]) == {"momentum_buffer"}
    for name in ("transformer.wte.weight", "lm_head.weight", "transformer.h.0.attn.q_norm.weight"):
        assert set(state[name]) == {"step", "exp_avg", "exp_avg_sq"}
    muon, embedding, head, scalars = ckpt["optimizer"]["param_groups"]
    assert muon["base_lr"] == 0.02 and muon["nesterov"] and muon["weight_decay"] == 0.05
    assert (embedding["base_lr"], head["base_lr"], scalars["base_lr"]) == (0.7, 0.004, 0.015)
    assert tuple(embedding["betas"]) == (0.8, 0.95) and embedding["eps"] == 1e-10
    assert json.loads((reference / "report.json").read_text())["model"]["recipe"] == "speedrun"
    assert "--recipe speedrun" in (reference / "report.md").read_text()


@pytest.mark.parametrize("flags", [[], ["--fsdp", "--activation-checkpointing"]],
                         ids=["ddp", "fsdp-ac"])
def test_two_ranks_equal_one_process(data, reference, tmp_path, flags):
    """2 ranks x accumulation 2 (DDP: every rank runs Muon on the averaged gradient; FSDP: on
    sharded DTensors) give the one process's losses, as the faithful recipe does."""
    run(tmp_path, data, nproc=2, extra=SPEEDRUN + flags)
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert_same_losses(train, ref_train, 1e-5)
    assert_same_losses(val, ref_val, 1e-5)


def resume_from_step_10(reference, tmp_path):
    """What a kill -9 after step 10's checkpoint leaves."""
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    for path in tmp_path.glob("ckpt_*.pt"):
        if path.name != "ckpt_0000010.pt":
            path.unlink()
    (tmp_path / "DONE").unlink()


@pytest.mark.parametrize("nproc, flags, tol", [(1, [], 0.0), (2, ["--fsdp"], 1e-5)],
                         ids=["same-process-bit-exact", "fsdp-2-ranks"])
def test_resume_after_kill_continues_the_run(data, reference, tmp_path, nproc, flags, tol):
    resume_from_step_10(reference, tmp_path)
    output = run(tmp_path, data, nproc=nproc, extra=SPEEDRUN + flags)
    assert "resuming from" in output and "at step 10" in output
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert_same_losses(train, ref_train, tol)
    assert_same_losses(val, ref_val, tol)


def test_resume_with_another_recipe_is_refused(data, reference, tmp_path):
    resume_from_step_10(reference, tmp_path)
    out = subprocess.run([sys.executable, "train_gpt2.py", "--preset", "cpu-smoke", "--data", str(data),
                          "--out-dir", str(tmp_path), "--vocab-size", "64", "--n-layer", "2",
                          "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--seq-len", "32"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "checkpoint is from --recipe speedrun, this run is --recipe faithful" in out.stdout + out.stderr


def test_recipe_sets_its_defaults_and_flags_still_win():
    cfg = parse_config(["--recipe", "speedrun"])
    assert (cfg.n_head, cfg.max_steps, cfg.lr, cfg.weight_decay, cfg.bias) == (6, 3250, 0.025, 0.05, False)
    assert (cfg.beta1, cfg.beta2, cfg.eps, cfg.warmup_steps, cfg.decay_fraction) == (0.8, 0.95, 1e-10, 0, 0.7)
    assert parse_config(["--recipe", "speedrun", "--lr", "0.01"]).lr == 0.01
    assert parse_config(["--recipe", "speedrun", "--preset", "gpt2-1558m"]).n_head == 25
    assert parse_config([]).recipe == "faithful" and parse_config([]).lr == 6e-4


def test_bias_with_the_modern_block_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--recipe", "speedrun", "--bias", "true"])
    assert e.value.code == 2
    assert "--bias true: the speedrun's model has no biases" in capsys.readouterr().err


def test_schedules_are_flat_then_linear_to_zero_with_momentum_warmup():
    cfg = parse_config(["--recipe", "speedrun", "--max-steps", "1000", "--muon-momentum-warmup", "300"])
    assert wsd_multiplier(0, cfg) == wsd_multiplier(300, cfg) == 1.0
    assert wsd_multiplier(650, cfg) == pytest.approx(0.5)
    assert wsd_multiplier(999, cfg) == pytest.approx(1 / 700) and wsd_multiplier(1000, cfg) == 0.0
    assert muon_momentum(0, cfg) == 0.85 and muon_momentum(150, cfg) == pytest.approx(0.9)
    assert muon_momentum(300, cfg) == muon_momentum(5000, cfg) == 0.95


def test_muon_in_bf16_is_torch_muon_and_fp32_is_close():
    """The subclass only changes the Newton-Schulz dtype: in bf16 its steps are torch's, bit for
    bit; in fp32 they differ by bf16's rounding."""
    torch.manual_seed(0)
    weights = [torch.randn(48, 16), torch.randn(16, 40)]  # tall and wide
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]

    def train(make):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = make(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        return params

    theirs = train(lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.05))
    bf16 = train(lambda p: Muon(p, lr=0.02, weight_decay=0.05, ns_dtype=torch.bfloat16))
    fp32 = train(lambda p: Muon(p, lr=0.02, weight_decay=0.05, ns_dtype=torch.float32))
    for a, b, c in zip(theirs, bf16, fp32):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        torch.testing.assert_close(c, a, rtol=0, atol=2e-3)
    update = orthogonalize(torch.randn(32, 64), (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    singular = torch.linalg.svdvals(update)
    assert update.dtype == torch.float32 and singular.min() > 0.5 and singular.max() < 1.5


def test_owners_share_a_124m_models_matrices_evenly():
    """Muon's owners at 124M on 8 ranks: the ranks' element counts differ by less than one
    768 x 768 matrix (taking the matrices in turn, they would differ by 6 of them)."""
    square, up, down = torch.Size([768, 768]), torch.Size([2048, 768]), torch.Size([768, 2048])
    shapes = 12 * ([square] * 4 + [up, up, down])
    owners = owner_ranks(shapes, 8)
    loads = [sum(s.numel() for s, o in zip(shapes, owners) if o == rank) for rank in range(8)]
    assert max(loads) - min(loads) < square.numel(), loads


def test_compiled_speedrun_has_no_graph_break(char_shards, tmp_path):
    """--compile under DDP and FSDP with activation checkpointing: the three regions of
    trainer/distributed.py compile_regions as full graphs, no recompilation, the eager losses
    (one torchrun launch, tests/dynamo_counters.py; aot_eager keeps it fast)."""
    flags = tiny_train_flags(4, 512, 2) + ["--recipe", "speedrun", "--lr", "0.02", "--warmup-steps", "0",
                                           "--device", "cpu", "--dtype", "float32",
                                           "--data", str(char_shards)]
    modes = {"ddp-eager": ["--compile", "false"], "ddp": ["--compile", "true"],
             "fsdp-ac": ["--compile", "true", "--fsdp", "--activation-checkpointing"]}
    argvs = {name: flags + extra + ["--out-dir", str(tmp_path / name)] for name, extra in modes.items()}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "tests/dynamo_counters.py", str(tmp_path / "counters.json"),
                          json.dumps(argvs)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRAIN_COMPILE_BACKEND": "aot_eager"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "counters.json").read_text())
    eager_train, _ = read_log(tmp_path / "ddp-eager")
    for name in ("ddp", "fsdp-ac"):
        counters = results[name]["counters"]
        assert results[name]["status"] == 0
        assert not counters.get("graph_break") and not counters.get("recompiles"), counters
        assert counters["stats"]["unique_graphs"] == 3, counters["stats"]
        train, _ = read_log(tmp_path / name)
        assert train == pytest.approx(eager_train, rel=1e-5)


FSDP_MUON = """
import sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode
sys.path.insert(0, {repo!r})
import trainer.muon
from trainer.muon import Muon

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
torch.manual_seed(0)
# 9 matrices of 4 shapes, tall and wide; 16, 10 and 2 rows shard unevenly on 3 ranks (2: one empty)
weights = ([torch.randn(48, 16) for _ in range(4)] + [torch.randn(16, 40) for _ in range(3)]
           + [torch.randn(10, 8), torch.randn(2, 8)])
grads = [[torch.randn_like(w) for w in weights] for _ in range(2)]
iterations = 0
iterate = trainer.muon.orthogonalize

def counted(*args):
    global iterations
    iterations += 1
    return iterate(*args)

trainer.muon.orthogonalize = counted

def train(sharded):
    shard = (lambda t: distribute_tensor(t.clone(), mesh, [Shard(0)])) if sharded else torch.clone
    params = [torch.nn.Parameter(shard(w)) for w in weights]
    optimizer = Muon(params, lr=0.02, weight_decay=0.05, ns_dtype=torch.float32)
    collectives = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = shard(g)
        with CommDebugMode() as comm:
            optimizer.step()
        collectives += [str(op) for op, n in comm.get_comm_counts().items() for _ in range(n)]
    return [p.full_tensor() if sharded else p for p in params], collectives

sharded, collectives = train(True)
per_rank = [None] * dist.get_world_size()
dist.all_gather_object(per_rank, iterations)
assert all(torch.equal(a, b) for a, b in zip(sharded, train(False)[0]))
if dist.get_rank() == 0:
    print("iterations per rank", per_rank)
    print("collectives", len(collectives), sorted(set(collectives)))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("nproc, iterations", [(2, [8, 10]), (3, [4, 6, 8])])
def test_muon_on_fsdp_shards_orthogonalises_each_matrix_once_on_its_owner(tmp_path, nproc, iterations):
    """FSDP's row shards (DTensors, gloo ranks), 9 matrices of 4 shapes for 2 steps: each matrix's
    Newton-Schulz runs on exactly one rank, the ranks' element counts balanced (2 ranks: 4 and 5
    matrices a step; 3: 2, 3 and 4), in 2 all-to-alls per shape per step (not one all-gather per
    matrix), and the weights are one process's, bit for bit (DTensor's own iteration on the shards
    took 54 collectives for 2 matrices and differed in the last bits)."""
    script = tmp_path / "fsdp_muon.py"
    script.write_text(FSDP_MUON.format(repo=str(REPO)))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          f"--nproc_per_node={nproc}", str(script)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"iterations per rank {iterations}" in out.stdout  # sum: 9 matrices x 2 steps
    assert "collectives 16 ['c10d.alltoall_base_']" in out.stdout  # 2 x 4 shapes x 2 steps
