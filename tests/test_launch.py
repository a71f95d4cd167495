"""trainer/launch.py: torchrun's exit is the project's (2 bad input, 3 stopped), with the workers'
one-line cause printed last."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_train_flags
from trainer import launch

REPO = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, "-m", "trainer.launch", "--standalone"]


def last_line(output):
    return output.strip().splitlines()[-1]


def test_bad_input_on_two_ranks_exits_2_with_its_line_last(tmp_path):
    missing = tmp_path / "no-shards"
    proc = subprocess.run([*LAUNCH, "--nproc_per_node=2", "train_gpt2.py", *tiny_train_flags(4, 256, 0),
                           "--data", str(missing), "--out-dir", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert last_line(proc.stderr).startswith(f"error: --data {missing}: no such folder"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_to_the_launcher_checkpoints_and_exits_3(char_shards, tmp_path):
    """torchrun itself exits 1 on SIGTERM whatever its workers do; through the launcher the
    workers' stop (checkpoint saved) is status 3, its line last."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*LAUNCH, "--nproc_per_node=2", "train_gpt2.py",
                             *tiny_train_flags(5000, 256, 0), "--data", str(char_shards),
                             "--out-dir", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline = out / "log.jsonl", time.time() + 60
    while not (log.exists() and '"loss"' in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output
    step = max(int(p.stem[5:]) for p in out.glob("ckpt_*.pt"))
    assert last_line(output).startswith(f"stop requested (SIGTERM): checkpoint at step {step} saved, "
                                        f"exiting with status 3"), output


def test_a_worker_that_records_nothing_gets_its_rank_and_status(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(5)\n")
    proc = subprocess.run([*LAUNCH, "--nproc_per_node=1", str(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert last_line(proc.stderr) == (f"error: {script} rank 0 exited with status 5; its output "
                                      f"is above"), proc.stderr


def test_bad_train_flags_fail_before_any_worker_starts(capsys):
    with pytest.raises(SystemExit) as exit_:
        launch.main(["--nproc_per_node=2", "train_gpt2.py", "--max-steps", "0"])
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err) == "train_gpt2.py: error: --max-steps must be positive, got 0"
