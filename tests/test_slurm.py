"""slurm/train.sbatch and slurm/fineweb.sbatch on a real Slurm cluster on this machine
(slurm/cluster.sh). One node: a job warned with SIGUSR1 checkpoints, requeues itself, resumes and
ends with the per-step losses of a plain torchrun run (and one wandb run); a scancelled job
checkpoints and its resubmission resumes to the same losses; a 2-task fineweb array writes the
bytes of a single pipeline run, and its pack job never runs after a failed task. Two nodes (n1,
n2: two slurmd, one rank each): the same losses, the same preemption cycle on both nodes (with
--recipe speedrun), and a rank killed on one node ends the whole job within seconds, failed and
not requeued.

Needs root and Debian's slurm-wlm + munge (`make setup` installs them when run as root);
otherwise these tests skip with the reason, except under CI (CI=true), where they must run and
a missing cluster fails.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import catches, tiny_train_flags

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "slurm" / "cluster.sh"
STEPS = 80
TINY = tiny_train_flags(STEPS, total_batch_size=512, eval_every=40)
SPEEDRUN = ("--recipe", "speedrun", "--lr", "0.02", "--min-lr", "0", "--warmup-steps", "0")
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED")


class LocalCluster:
    """At most one running slurm/cluster.sh cluster (they share the machine's cores): `of(nodes)`
    gives the environment (SLURM_CONF) of a cluster with that many nodes, restarting only when
    the count changes; the one-node tests come first in this file, then the two-node ones."""

    def __init__(self):
        self.nodes, self.state, self.env = None, None, None

    def of(self, nodes):
        if nodes != self.nodes:
            self.stop()
            self.start(nodes)
        return self.env

    def start(self, nodes):
        # short path: slurmd puts unix sockets in its spool folder (108-byte limit)
        state = Path(tempfile.mkdtemp(prefix="slurm-test-"))
        start = subprocess.run(["bash", str(CLUSTER), "start", str(state), "--nodes", str(nodes)],
                               capture_output=True, text=True, timeout=120)
        if start.returncode == 4:  # not installed / not root: say why
            shutil.rmtree(state, ignore_errors=True)
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the Slurm tests: {start.stderr.strip()}")
            pytest.skip(start.stderr.strip())
        self.nodes, self.state = nodes, state  # from here on `stop` cleans up, whatever happens
        assert start.returncode == 0, f"{start.stderr}\n" + "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in state.glob("*.log"))
        env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"), PYTHON=sys.executable)
        self.env = {k: v for k, v in env.items() if not k.startswith("WANDB_")}

    def stop(self):
        if self.state is not None:
            subprocess.run(["bash", str(CLUSTER), "stop", str(self.state)], timeout=120)
            shutil.rmtree(self.state, ignore_errors=True)
        self.nodes, self.state, self.env = None, None, None


@pytest.fixture(scope="module")
def clusters():
    local = LocalCluster()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster(clusters):
    """A running one-node cluster: its environment (SLURM_CONF) for sbatch."""
    return clusters.of(1)


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


def submit_training(env, tmp_path, out_dir, *extra, nodes=1, **extra_env):
    """train.sbatch on CPU nodes, 2 ranks in all (gloo): 1 node x torchrun --nproc-per-node 2,
    or 2 nodes x 1."""
    return sbatch(env, f"--nodes={nodes}", "--gpus-per-node=0", f"--cpus-per-task={2 // nodes}",
                  f"--output={tmp_path}/slurm-%j.out", "slurm/train.sbatch", *TINY,
                  "--data", env["TEST_DATA"], "--out-dir", out_dir, *extra,
                  NPROC_PER_NODE=str(2 // nodes), **extra_env)


def wait_for(condition, timeout, what):
    """Poll `condition` until true (returns that moment); fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.1)
    return time.time()


def trained_steps(out_dir):
    """The train steps log.jsonl holds so far (it is being written: a torn last line is skipped)."""
    steps = []
    path = Path(out_dir) / "log.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row:
            steps.append(row["step"])
    return steps


def warn_mid_training(env, job, out_dir):
    """`scancel --signal=USR1 --batch` (what --signal=B:USR1@N does before a time limit) once
    training is under way."""
    wait_for(lambda: max(trained_steps(out_dir), default=-1) >= 10, 180,
             f"job {job} training ({job_info(env, job)})")
    signalled = subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env,
                               capture_output=True, text=True, timeout=30)
    assert signalled.returncode == 0, signalled.stderr


def assert_requeued_and_resumed(env, job, out_dir, reference):
    """The warned job checkpointed, requeued itself once, resumed from that checkpoint and
    finished with the uninterrupted run's losses. Returns its log and the seconds from the
    requeue to the resumed job's first step."""
    wait_job(env, job, until=("PENDING", "REQUEUED", "REQUEUE_HOLD", *FINAL_STATES))
    t_requeued = time.time()

    def resumed_or_ended():  # the resumed attempt logs the stop checkpoint's step first
        stop_checkpoint = min(out_dir.glob("ckpt_*.pt"), default=None)
        return (stop_checkpoint is not None and int(stop_checkpoint.stem[5:]) in trained_steps(out_dir)
                or job_info(env, job).get("JobState") in FINAL_STATES)

    t_resumed = wait_for(resumed_or_ended, 240, f"job {job} resuming")
    info = wait_job(env, job)
    log = (out_dir / "slurm" / f"{job}.out").read_text()  # the logs live in the run folder
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    stopped = re.search(r"checkpoint at step (\d+) saved, exiting with status 3", log)
    assert stopped, f"the first attempt must checkpoint on the warning:\n{log}"
    assert int(stopped.group(1)) < STEPS, "the signal came after training ended: too late to test"
    assert f"created {out_dir}/STOP" in log, "the warning also leaves the stop file"
    assert "restart 1" in log and f"resuming from {out_dir}/ckpt_{int(stopped.group(1)):07d}.pt" in log, log
    assert (out_dir / "DONE").exists() and not (out_dir / "STOP").exists()
    assert_same_losses(losses(out_dir), reference)
    return log, t_resumed - t_requeued


@pytest.fixture
def slurm_env(cluster, char_shards):
    return {**cluster, "TEST_DATA": str(char_shards)}


@pytest.fixture
def two_nodes(clusters, char_shards):
    """A running two-node cluster (n1, n2 on this machine, a core each) and the test data."""
    return {**clusters.of(2), "TEST_DATA": str(char_shards)}


def plain_torchrun_losses(data, out, *extra):
    """TINY (and `extra`) under a plain `torchrun --standalone --nproc_per_node=2`: its losses."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "train_gpt2.py", *TINY, "--data", str(data),
                           "--out-dir", str(out), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return losses(out)


@pytest.fixture(scope="module")
def reference(char_shards, tmp_path_factory):
    """The same preset under a plain `torchrun --standalone --nproc_per_node=2`."""
    return plain_torchrun_losses(char_shards, tmp_path_factory.mktemp("plain_torchrun"))


@pytest.fixture(scope="module")
def speedrun_reference(char_shards, tmp_path_factory):
    """The same, with --recipe speedrun: the modern block, Muon + AdamW, the WSD schedule."""
    return plain_torchrun_losses(char_shards, tmp_path_factory.mktemp("plain_torchrun_speedrun"),
                                 *SPEEDRUN)


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_resumes_with_same_losses(slurm_env, reference, tmp_path,
                                                                     read_wandb_runs):
    """`scancel --signal=USR1 --batch` (what --signal=B:USR1@N does before a time limit) during
    training: checkpoint, requeue (SLURM_RESTART_COUNT=1), resume, same losses; with --wandb
    (offline) both attempts log to one wandb run."""
    out = tmp_path / "run"
    job = submit_training(slurm_env, tmp_path, out, "--wandb", WANDB_MODE="offline",
                          WANDB_SILENT="true")
    warn_mid_training(slurm_env, job, out)
    _, requeue_to_training = assert_requeued_and_resumed(slurm_env, job, out, reference)
    runs = read_wandb_runs(out)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"], "a requeued job continues the same run"
    steps = [h["_step"] for run in runs for h in run["history"] if "loss" in h]
    assert steps == list(range(STEPS)), "one continuous curve across the requeue"
    print(f"\none node: requeue -> training again {requeue_to_training:.1f} s")


@pytest.mark.slow
def test_scancel_checkpoints_and_the_resubmitted_job_resumes_with_same_losses(slurm_env, reference,
                                                                             tmp_path):
    """A plain `scancel` of a running job: SIGTERM to the batch shell and to every process of the
    step, and torchrun's own SIGTERM to its workers a moment later, no USR1 warning. Every rank
    checkpoints within KillWait, the job ends CANCELLED and does not requeue itself (scancel means
    stop), and the same sbatch command, submitted again, resumes from that checkpoint to the
    uninterrupted run's losses. The signals land during the evaluation at step 40, kept going
    for seconds by 2,000 sample tokens (a real model's step and checkpoint take seconds; this
    one's are over in milliseconds), which the stop ends early: the checkpoint of step 40
    follows at once. The resubmitted job is also the plain case: train.sbatch's 2 processes on
    one node run to the end, write DONE and are not requeued."""
    out = tmp_path / "run"
    long_samples = ("--sample-tokens", "2000")  # samples only: the losses are TINY's
    job = submit_training(slurm_env, tmp_path, out, *long_samples)

    def in_step_40s_evaluation():
        workers = trainer_workers(job)
        return (len(workers) == 2 and all(catches(pid, signal.SIGTERM) for pid in workers)
                and max(trained_steps(out), default=-1) >= 39)

    wait_for(in_step_40s_evaluation, 180, f"job {job} training ({job_info(slurm_env, job)})")
    cancelled = subprocess.run(["scancel", job], env=slurm_env, capture_output=True, text=True, timeout=30)
    assert cancelled.returncode == 0, cancelled.stderr
    info = wait_job(slurm_env, job)
    log = (out / "slurm" / f"{job}.out").read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", log
    assert "requeueing" not in log, "scancel means stop: the job must not requeue itself"
    stopped = re.search(r"checkpoint at step (\d+) saved, exiting with status 3", log)
    assert stopped and int(stopped.group(1)) < STEPS, f"no stop checkpoint before the job ended:\n{log}"
    assert not (out / "DONE").exists()

    again = submit_training(slurm_env, tmp_path, out, *long_samples)
    info = wait_job(slurm_env, again)
    log = (out / "slurm" / f"{again}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    assert "2 process(es) per node" in log and "rendezvous" in log
    assert f"resuming from {out}/ckpt_{int(stopped.group(1)):07d}.pt" in log, log
    assert (out / "DONE").exists(), "a finished run writes DONE and is not requeued"
    assert_same_losses(losses(out), reference)


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


# Two nodes from here on (LocalCluster restarts once): keep these tests last.

def test_two_node_job_equals_plain_torchrun(two_nodes, reference, tmp_path):
    """2 nodes x 1 rank (c10d rendezvous on n1) trains exactly like 1 node x 2 ranks. A stale
    RUN/STOP (left by an attempt killed before acting on it) is removed first, or this job would
    stop after one step."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "STOP").touch()
    job = submit_training(two_nodes, tmp_path, out, nodes=2)
    info = wait_job(two_nodes, job)
    log = (out / "slurm" / f"{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    assert "2 node(s) [n1 n2], 1 process(es) per node (1 thread(s) each), rendezvous n1:" in log
    assert (out / "DONE").exists()
    assert_same_losses(losses(out), reference)


@pytest.mark.slow
def test_two_node_preemption_of_a_speedrun_checkpoints_requeues_resumes_on_both_nodes(
        two_nodes, speedrun_reference, tmp_path):
    """--recipe speedrun (Muon's momentum and AdamW's moments in the checkpoint, the WSD schedule
    and Muon's momentum warmup functions of the step); the one-node test above is the faithful
    recipe's. USR1 to the batch shell mid-run: both nodes checkpoint after the same step, the job
    requeues, both resume, and the losses are the uninterrupted speedrun's."""
    out = tmp_path / "run"
    job = submit_training(two_nodes, tmp_path, out, *SPEEDRUN, nodes=2)
    warn_mid_training(two_nodes, job, out)
    log, requeue_to_training = assert_requeued_and_resumed(two_nodes, job, out, speedrun_reference)
    assert log.count("2 node(s) [n1 n2]") == 2, "both attempts ran on both nodes"
    print(f"\ntwo nodes: requeue -> training again {requeue_to_training:.1f} s")


def trainer_workers(job, node_id=0):
    """The pids of job `job`'s trainer processes on node `node_id` (torchrun's workers: they alone
    have RANK in their environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:  # gone, another user's, or not a process folder
            continue
        if {f"SLURM_JOB_ID={job}".encode(), f"SLURM_NODEID={node_id}".encode()} <= env and any(
                var.startswith(b"RANK=") for var in env):
            pids.append(int(proc.name))
    return pids


def test_rank_killed_on_one_node_ends_the_job_promptly_without_requeue(two_nodes, tmp_path):
    """SIGKILL to the rank on n2, as the OOM killer would: n2's torchrun exits 1, srun's
    --kill-on-bad-exit ends n1's step (rank 0 also sees its peer's socket close), the job fails
    within seconds (KillWait is 30 s here: well under it) and a crash is not requeued."""
    out = tmp_path / "run"
    job = submit_training(two_nodes, tmp_path, out, "--max-steps", "100000", nodes=2)
    wait_for(lambda: max(trained_steps(out), default=-1) >= 5, 180,
             f"job {job} training ({job_info(two_nodes, job)})")
    victims = trainer_workers(job, node_id=1)
    assert len(victims) == 1, f"not one trainer process with SLURM_NODEID=1: {victims}"
    victim = victims[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.time()
    info = wait_job(two_nodes, job, timeout=120)
    crash_to_end = time.time() - killed
    log = (out / "slurm" / f"{job}.out").read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", log
    assert info["Restarts"] == "0" and "requeueing" not in log, "a crash must not requeue"
    assert crash_to_end < 25, f"the job took {crash_to_end:.0f} s to end after a rank died:\n{log}"
    assert not (out / "DONE").exists()
    print(f"\ntwo nodes: rank killed -> job ended {crash_to_end:.1f} s")
