"""scripts/demo.sh (`make demo`) runs end to end as its own CI step (.ci/run); here only what is
cheap: the script parses, and its closing lines name the outputs and the real commands."""

import shutil
import subprocess
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_demo_script_parses():
    result = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_demo_script_names_outputs_and_real_commands():
    text = DEMO.read_text()
    for needle in ("python -m pipeline.fineweb", "torch.distributed.run", "sample.py", "plot.py",
                   "DEMO_SOURCE", "checkpoint:", "plot:", "shards:", "log:",
                   "torchrun --standalone --nproc_per_node=8 train_gpt2.py", "sbatch slurm/train.sbatch"):
        assert needle in text, needle
