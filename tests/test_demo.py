"""scripts/demo.sh (`make demo`) end to end on a small corpus and a few steps: shards, 2-rank
training, samples and plot are made, and the closing lines point at files that exist. (The full
demo also runs as its own CI step in .ci/run.)"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pydoc_data.topics import topics

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_names_what_it_made(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for _, text in sorted(topics.items())))
    env = dict(os.environ, PYTHON=sys.executable, DEMO_SOURCE=str(corpus), DEMO_STEPS="6",
               DEMO_DATA=str(tmp_path / "data"), DEMO_RUN=str(tmp_path / "run"))
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in ("1/5 corpus", "2/5 shards", "3/5 train", "4/5 sample", "5/5 plot"):
        assert step in out
    # the closing lines name the shards, log, checkpoint, plot and report: all of them exist
    named = dict(re.findall(r"^\s*(shards|log|checkpoint|plot|report):\s+(\S+)", out, re.MULTILINE))
    assert set(named) == {"shards", "log", "checkpoint", "plot", "report"}, out[-2000:]
    for path in named.values():
        assert (REPO / path).exists() or Path(path).exists(), path
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(6))
    assert (tmp_path / "run" / "plot.png").read_bytes().startswith(b"\x89PNG")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["finished"] and report["data"]["manifest"] and report["data"]["shards"] > 1
    assert "python -m trainer.launch --standalone --nproc_per_node=8 train_gpt2.py" in out
    # the echoed commands can be pasted into a shell: the prompt's spaces are quoted
    assert re.search(r"^==> .*3/5 train.* --sample-prompt The\\ Python\\ interpreter ", out, re.MULTILINE)
    assert "sbatch slurm/train.sbatch" in out
