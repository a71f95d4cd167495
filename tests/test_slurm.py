"""slurm/train.sbatch and slurm/fineweb.sbatch on a real one-node Slurm cluster (slurm/cluster.sh):
a 2-process CPU training job equals a plain torchrun run; a job warned with SIGUSR1 checkpoints,
requeues itself, resumes and ends with the same per-step losses (and one wandb run); a 2-task
fineweb array writes the bytes of a single pipeline run, and its pack job never runs after a
failed task.

Needs root and Debian's slurm-wlm + munge (`make setup` installs them when run as root);
otherwise these tests skip with the reason, except under CI (CI=true), where they must run and
a missing cluster fails.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import tiny_train_flags

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "slurm" / "cluster.sh"
STEPS = 80
TINY = tiny_train_flags(STEPS, total_batch_size=512, eval_every=40)
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED")


@pytest.fixture(scope="module")
def cluster():
    """A running one-node cluster for this module; its environment (SLURM_CONF) for sbatch."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    # short path: slurmd puts unix sockets in its spool folder (108-byte limit)
    state = Path(tempfile.mkdtemp(prefix="slurm-test-"))
    start = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True,
                           timeout=120)
    if start.returncode == 4:  # not installed / not root: say why
        shutil.rmtree(state, ignore_errors=True)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {start.stderr.strip()}")
        pytest.skip(start.stderr.strip())
    try:
        assert start.returncode == 0, f"{start.stderr}\n" + "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in state.glob("*.log"))
        env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"), PYTHON=sys.executable)
        env = {k: v for k, v in env.items() if not k.startswith("WANDB_")}
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def sbatch(env, *args, **extra_env):
    out = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=REPO, env={**env, **extra_env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_info(env, job_id):
    """`scontrol show job` as a dict (sacct needs slurmdbd, which a test cluster has not)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(env, job_id, timeout=240, until=FINAL_STATES):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(env, job_id)
        if info.get("JobState") in until:
            return info
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job_info(env, job_id)}")


def losses(out_dir):
    """{("train"|"val", step): loss} from log.jsonl."""
    result = {}
    for line in (Path(out_dir) / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, kind in (("loss", "train"), ("val_loss", "val")):
            if key in row:
                result[(kind, row["step"])] = row[key]
    return result


def assert_same_losses(got, want):
    assert got.keys() == want.keys()
    worst = max(abs(got[k] - want[k]) for k in want)
    assert worst <= 1e-6, f"losses differ by up to {worst}"


def submit_training(env, tmp_path, out_dir, *extra, **extra_env):
    """train.sbatch on the CPU node: 1 node x torchrun --nproc-per-node 2 (gloo)."""
    return sbatch(env, "--gpus-per-node=0", "--cpus-per-task=2", f"--output={tmp_path}/slurm-%j.out",
                  "slurm/train.sbatch", *TINY, "--data", env["TEST_DATA"], "--out-dir", out_dir, *extra,
                  NPROC_PER_NODE="2", **extra_env)


@pytest.fixture(scope="module")
def slurm_env(cluster, char_shards):
    return {**cluster, "TEST_DATA": str(char_shards)}


@pytest.fixture(scope="module")
def reference(char_shards, tmp_path_factory):
    """The same preset under a plain `torchrun --standalone --nproc_per_node=2`."""
    out = tmp_path_factory.mktemp("plain_torchrun")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "train_gpt2.py", *TINY, "--data", str(char_shards),
                           "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return losses(out)


def test_train_sbatch_two_processes_equals_plain_torchrun(slurm_env, reference, tmp_path):
    out = tmp_path / "run"
    job = submit_training(slurm_env, tmp_path, out)
    info = wait_job(slurm_env, job)
    log = (out / "slurm" / f"{job}.out").read_text()  # the logs live in the run folder
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    assert "2 process(es) per node" in log and "rendezvous" in log
    assert (out / "DONE").exists(), "a finished run writes DONE and is not requeued"
    assert_same_losses(losses(out), reference)


def test_preempted_job_checkpoints_requeues_resumes_with_same_losses(slurm_env, reference, tmp_path,
                                                                     read_wandb_runs):
    """`scancel --signal=USR1 --batch` (what --signal=B:USR1@N does before a time limit) during
    training: checkpoint, requeue (SLURM_RESTART_COUNT=1), resume, same losses; with --wandb
    (offline) both attempts log to one wandb run."""
    out = tmp_path / "run"
    job = submit_training(slurm_env, tmp_path, out, "--wandb", WANDB_MODE="offline",
                          WANDB_SILENT="true")
    deadline = time.time() + 180
    while True:  # wait for training to be under way, then warn the batch shell
        if (out / "log.jsonl").exists() and any(k[0] == "train" and k[1] >= 10 for k in losses(out)):
            break
        assert time.time() < deadline, job_info(slurm_env, job)
        time.sleep(0.05)
    signalled = subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env,
                               capture_output=True, text=True, timeout=30)
    assert signalled.returncode == 0, signalled.stderr
    t_signal = time.time()
    wait_job(slurm_env, job, until=("PENDING", "REQUEUED", "REQUEUE_HOLD", *FINAL_STATES))
    t_requeued = time.time()
    info = wait_job(slurm_env, job)
    log = (out / "slurm" / f"{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    stopped = re.search(r"checkpoint at step (\d+) saved, exiting with status 3", log)
    assert stopped, f"the first attempt must checkpoint on the warning:\n{log}"
    assert int(stopped.group(1)) < STEPS, "the signal came after training ended: too late to test"
    assert "restart 1" in log and f"resuming from {out}/ckpt_{int(stopped.group(1)):07d}.pt" in log, log
    assert (out / "DONE").exists()
    assert_same_losses(losses(out), reference)

    runs = read_wandb_runs(out)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"], "a requeued job continues the same run"
    steps = [h["_step"] for run in runs for h in run["history"] if "loss" in h]
    assert steps == list(range(STEPS)), "one continuous curve across the requeue"
    stamps = re.findall(r"=== (\S+ \S+) (training step ended|job \d+ restart 1)", log)
    ended, restarted = (time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S")) for t, _ in stamps[:2])
    print(f"\nsignal -> requeued {t_requeued - t_signal:.1f} s; requeue -> restarted "
          f"{restarted - ended:.0f} s (Slurm); requeued -> done {time.time() - t_requeued:.1f} s")


def test_fineweb_array_equals_single_run(cluster, tmp_path):
    """A 2-task array (tokenize a share of the files each) + its automatic pack job writes the
    same shard bytes and manifest entries as one `python -m pipeline.fineweb`."""
    src = tmp_path / "src"
    src.mkdir()
    words = ["the", "data", "école", "🙂", "<|endoftext|>", "1234", "\n\n", "GPT-2", "tokens", "don't"]
    for f in range(3):
        with open(src / f"f{f}.jsonl", "w") as fh:
            for d in range(40 + 20 * f):
                text = " ".join(words[(d * 7 + i * 3 + f) % len(words)] for i in range(d % 97 + 1))
                fh.write(json.dumps({"id": d, "text": text}) + "\n")
    flags = ["--source", src, "--shard-tokens", 3000, "--workers", 1]
    array = sbatch(cluster, "--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%A_%a.out",
                   "slurm/fineweb.sbatch", *flags, "--out", tmp_path / "array")
    single = subprocess.run([sys.executable, "-m", "pipeline.fineweb", *map(str, flags), "--out",
                             str(tmp_path / "single")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    logs = lambda: "\n".join(p.read_text() for p in sorted(tmp_path.glob("slurm-*.out")))  # noqa: E731
    for task in (0, 1):
        assert wait_job(cluster, f"{array}_{task}")["JobState"] == "COMPLETED", logs()
    pack = re.search(r"submitted the pack job (\d+)", logs())
    assert pack, logs()
    assert wait_job(cluster, pack.group(1))["JobState"] == "COMPLETED", logs()

    manifest = {d: json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("single", "array")}
    assert manifest["array"]["complete"] and len(manifest["single"]["shards"]) > 2
    assert manifest["array"]["shards"] == manifest["single"]["shards"]
    for shard in manifest["single"]["shards"]:
        name = shard["name"]
        assert (tmp_path / "array" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    assert not (tmp_path / "array" / "parts").exists(), "the pack job deletes the packed parts"


def test_fineweb_pack_job_does_not_run_after_a_failed_task(cluster, tmp_path):
    """A task that fails (here task 1 meets a bad line; a cancelled array is the same to Slurm)
    leaves the pack job cancelled by Slurm, not packing a half-made set of parts."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f0.jsonl").write_text('{"text": "fine"}\n')
    (src / "f1.jsonl").write_text('{"text": "fine"}\nnot json\n')
    array = sbatch(cluster, "--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%A_%a.out",
                   "slurm/fineweb.sbatch", "--source", src, "--out", tmp_path / "out", "--workers", 1)
    logs = lambda: "\n".join(p.read_text() for p in sorted(tmp_path.glob("slurm-*.out")))  # noqa: E731
    assert wait_job(cluster, f"{array}_1")["JobState"] == "FAILED", logs()
    pack = re.search(r"submitted the pack job (\d+)", logs())
    assert pack, logs()
    info = wait_job(cluster, pack.group(1))
    assert info["JobState"] == "CANCELLED", info
    assert not (tmp_path / "out" / "manifest.json").exists()
