"""train_gpt2.py --preflight, and the same checks at every start: each check broken in turn gives
one line naming the problem and its fix, exit 2, and no model, process group or training step;
a good setup passes in about a second. slurm/train.sbatch refuses a bad setup before
srun, on a real local Slurm cluster (slurm/cluster.sh)."""

import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hellaswag as hellaswag_cli
from evaluation import hellaswag, hellaswag_data
import train_gpt2
from conftest import tiny_train_flags, write_char_shards
from shards.format import HEADER_BYTES, write_shard
from trainer import memory
from trainer.config import parse_config
from trainer.presets import PRESETS, data_command

REPO = Path(__file__).resolve().parent.parent
# cpu-smoke's shape shrunk: HellaSwag off, --resume auto, no wandb; 512 tokens a step
TINY = tiny_train_flags(steps=20, total_batch_size=512, eval_every=10)
# a GPT-2-vocabulary model for the HellaSwag checks (its parameters are counted on meta only)
GPT2_VOCAB = ["--vocab-size", "50304", "--block-size", "16", "--seq-len", "16", "--max-steps", "2",
              "--hellaswag-every", "1"]
EXAMPLE = {"ctx": "A man sits down.", "ctx_a": "A man sits down.", "ctx_b": "", "label": 1,
           "activity_label": "Sitting", "endings": ["He flies.", "He rests.", "He sings.", "He runs."]}


@pytest.fixture
def started(monkeypatch):
    """What train_gpt2.main got to beyond its checks: "process group", "train" (which builds the
    model): recorded instead of done."""
    calls = []
    monkeypatch.setattr(train_gpt2.Runtime, "init_process_group",
                        lambda self, timeout, **_: calls.append("process group"))
    monkeypatch.setattr(train_gpt2, "train", lambda *args, **kwargs: calls.append("train") or 0)
    return calls


@pytest.fixture
def data(tmp_path):
    return write_char_shards(tmp_path / "data")


def run(capsys, data, out_dir, *flags, preflight_only=True):
    """(exit status, stdout, stderr lines) of train_gpt2.main in this process."""
    argv = [*TINY, "--data", str(data), "--out-dir", str(out_dir), *flags]
    status = train_gpt2.main(argv + ["--preflight"] if preflight_only else argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


def assert_refused(result, *messages):
    """Exit 2 with exactly one "error:" line per message, each holding its message."""
    status, out, errors = result
    assert status == 2, out
    assert len(errors) == len(messages), errors
    for line, message in zip(errors, messages):
        assert line.startswith("error: ") and message in line, (line, message)
    assert f"preflight: {len(messages)} problem(s)" in out
    return errors


def test_good_setup_passes_in_about_a_second(data, tmp_path, started, capsys):
    t0 = time.perf_counter()
    status, out, errors = run(capsys, data, tmp_path / "run")
    elapsed = time.perf_counter() - t0
    assert (status, errors) == (0, []), out
    assert "preflight: passed (0 warning(s))" in out
    assert "16,384 tokens, 31 steps of 512 tokens per epoch" in out  # (16384 - 1) // 32 // 16
    assert elapsed < 3, f"the preflight took {elapsed:.2f} s"
    assert started == [] and not (tmp_path / "run").exists(), "--preflight starts nothing, creates nothing"


def test_every_start_runs_the_checks_before_the_process_group_and_model(data, tmp_path, started, capsys):
    assert_refused(run(capsys, tmp_path / "nothing", tmp_path / "run", preflight_only=False),
                   f"--data {tmp_path / 'nothing'}: no such folder")
    assert started == []
    status, out, errors = run(capsys, data, tmp_path / "run", preflight_only=False)
    assert (status, errors) == (0, []) and "preflight: passed" in out
    assert started == ["process group", "train"]


def test_all_failures_listed_not_only_the_first(tmp_path, started, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert_refused(run(capsys, tmp_path / "nothing", tmp_path / "run", "--resume",
                       str(tmp_path / "missing.pt"), "--wandb"),
                   "no such folder; make the shards with `make demo` (small GPT-2 shards in "
                   f"data/demo, then --data data/demo; or your own text: `python -m pipeline.fineweb "
                   f"--source FILE.txt --out {tmp_path / 'nothing'} --prefix nothing --shard-tokens 50000`)",
                   f"--resume: {tmp_path / 'missing.pt'}: no such checkpoint",
                   "--wandb: online mode, but no credentials")
    assert started == []


def test_missing_data_hint_is_the_readme_command_of_each_preset(tmp_path, started, capsys):
    readme = (REPO / "README.md").read_text()
    for name in PRESETS:
        command = data_command(parse_config(["--preset", name])).split("`")[1]
        assert command in readme, (name, command)
    assert "sample-100BT --out data/edu_fineweb100B" in data_command(parse_config(["--preset", "gpt2-350m"]))
    missing = tmp_path / "nothing"
    status = train_gpt2.main(["--preset", "shakespeare-char", "--data", str(missing), "--out-dir",
                              str(tmp_path / "run"), "--preflight"])
    errors = capsys.readouterr().err.splitlines()
    assert status == 2 and errors == [f"error: --data {missing}: no such folder; make the shards with "
                                      f"`python -m pipeline.shakespeare_char --out {missing}` (downloads "
                                      f"Tiny Shakespeare; --input input.txt uses a local copy), or point "
                                      f"--data at them"]


def test_each_broken_shard_is_named(data, tmp_path, started, capsys):
    train_shard = data / "t_train_000001.bin"
    good = train_shard.read_bytes()
    truncated = data / "t_train_000002.bin"
    truncated.write_bytes(good[:-100])
    wrong_version = data / "t_train_000003.bin"
    header = np.frombuffer(good[:HEADER_BYTES], dtype="<i4").copy()
    header[1] = 7
    wrong_version.write_bytes(header.tobytes() + good[HEADER_BYTES:])
    foreign = data / "t_train_000004.bin"
    foreign.write_bytes(b"<html>not a shard</html>" * 50)
    short_npy = data / "t_train_000005.npy"
    write_shard(short_npy, np.arange(1000), fmt="npy")
    short_npy.write_bytes(short_npy.read_bytes()[:-10])
    assert_refused(run(capsys, data, tmp_path / "run"),
                   f"{truncated}: header says 16384 tokens", f"{wrong_version}: .bin version 7",
                   f"{foreign}: not a token shard", f"{short_npy}: corrupt or truncated .npy")
    assert started == []


def test_too_few_tokens_fail_and_extra_epochs_warn(data, tmp_path, started, capsys):
    # 32,768 tokens a step = 1,024 sequences of 32: the 16,384-token shard holds 511
    assert_refused(run(capsys, data, tmp_path / "run", "--total-batch-size", "32768"),
                   "t_train_000001.bin: 16,384 tokens, less than one global batch of 1,024 sequences "
                   "of 32 tokens plus the target (32,768 tokens)")
    status, out, errors = run(capsys, data, tmp_path / "run", "--max-steps", "100")
    assert (status, errors) == (0, [])
    assert "warning: " in out and "--max-steps 100 takes 3.23 epochs" in out  # 100 / 31
    assert started == []


def test_short_shards_are_left_out_in_one_line(tmp_path, started, capsys):
    """A tail shard shorter than one global batch is skipped (one warning with the tokens left
    out); only when no shard holds a batch is the run refused, in one line for all of them."""
    data = write_char_shards(tmp_path / "data", sizes=(2048, 16400, 16400, 9000))
    status, out, errors = run(capsys, data, tmp_path / "run", "--total-batch-size", "16384")
    assert (status, errors) == (0, []), out
    assert f"warning: {data / 't_train_000003.bin'}: fewer tokens than one global batch of 512 " \
           f"sequences of 32 tokens plus the target (16,384 tokens): left out, 9,000 tokens unused" in out
    assert "2 train shard(s), 32,800 tokens, 2 steps of 16,384 tokens per epoch" in out
    assert started == []
    few = write_char_shards(tmp_path / "few", sizes=(2048,) + (1000,) * 7)
    assert_refused(run(capsys, few, tmp_path / "run", "--total-batch-size", "16384"),
                   f"--data {few}: 7 shards ({few / 't_train_000001.bin'} .. t_train_000007.bin): none "
                   f"holds (the largest has 1,000 tokens) one global batch of 512 sequences of 32 tokens")


def test_a_folder_the_pipeline_has_not_finished_is_a_warning(data, tmp_path, started, capsys):
    """A manifest with "complete": false (the pipeline still running, or stopped): one warning
    saying so and what it costs; the run may still start."""
    shards = [{"name": p.name, "split": "val" if "_val_" in p.name else "train"}
              for p in sorted(data.glob("t_*.bin"))]
    manifest = {"version": 1, "tokenizer": "char", "shards": shards, "complete": False}
    (data / "manifest.json").write_text(json.dumps(manifest))
    status, out, errors = run(capsys, data, tmp_path / "run")
    assert (status, errors) == (0, []), out
    assert f"warning: --data {data}: INCOMPLETE (`python -m shards info {data}`)" in out
    assert "training uses the 1 train shard(s) finished so far" in out
    manifest["complete"] = True
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert "INCOMPLETE" not in run(capsys, data, tmp_path / "run")[1]


def test_validation_shard_required_only_when_evaluating(data, tmp_path, started, capsys):
    (data / "t_val_000000.bin").unlink()
    [line] = assert_refused(run(capsys, data, tmp_path / "run"), f"--data {data}: no val shard")
    assert line.endswith("or pass --eval-every 0")
    assert run(capsys, data, tmp_path / "run", "--eval-every", "0")[0] == 0


@pytest.fixture
def gpt2_data(tmp_path):
    """GPT-2-token shards (no manifest, no tokenizer.json: GPT-2 is assumed)."""
    folder = tmp_path / "gpt2"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_shard(folder / "g_val_000000.bin", rng.integers(0, 50257, 1024))
    write_shard(folder / "g_train_000001.bin", rng.integers(0, 50257, 4096))
    return folder


def write_examples(path, examples):
    path.write_text("".join(json.dumps(example) + "\n" for example in examples))
    return path


def test_hellaswag_file_must_be_local_and_is_never_downloaded(gpt2_data, tmp_path, started, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(hellaswag, "DEFAULT_CACHE_DIR", tmp_path / "empty-cache")
    monkeypatch.setattr(hellaswag_data, "download", lambda *a, **k: pytest.fail("training downloaded HellaSwag"))
    assert_refused(run(capsys, gpt2_data, tmp_path / "run", *GPT2_VOCAB),
                   f"HellaSwag data not found at {tmp_path / 'empty-cache' / hellaswag.VAL_FILE}")
    missing = tmp_path / "missing.jsonl"
    assert_refused(run(capsys, gpt2_data, tmp_path / "run", *GPT2_VOCAB, "--hellaswag-data", str(missing)),
                   f"HellaSwag data not found at {missing} (training never downloads it); run "
                   f"`python hellaswag.py --download`")
    # the training side's loader: local files only
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="python hellaswag.py --download"):
        hellaswag.load_examples(cache_dir=tmp_path / "empty-cache", download=False)
    assert started == []


def test_hellaswag_download_flag_fetches_what_training_then_finds(gpt2_data, tmp_path, started,
                                                                  capsys, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    write_examples(served / hellaswag.VAL_FILE, [EXAMPLE] * hellaswag.NUM_VAL_EXAMPLES)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args):
            super().__init__(*args, directory=str(served))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{hellaswag.VAL_FILE}"
        assert hellaswag_cli.main(["--download", "--cache-dir", str(tmp_path / "cache"), "--url", url]) == 0
    finally:
        server.shutdown()
    assert (tmp_path / "cache" / hellaswag.VAL_FILE).read_bytes() == (served / hellaswag.VAL_FILE).read_bytes()
    monkeypatch.setattr(hellaswag, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    status, out, errors = run(capsys, gpt2_data, tmp_path / "run", *GPT2_VOCAB)
    assert (status, errors) == (0, []), out
    assert f"HellaSwag: {hellaswag.NUM_VAL_EXAMPLES} examples in {tmp_path / 'cache'}" in out


def test_hellaswag_examples_must_fit_the_context(gpt2_data, tmp_path, started, capsys):
    long_ending = dict(EXAMPLE, endings=["He rests."] * 3 + [" ".join(["and then he rests"] * 6)])
    long_context = dict(EXAMPLE, ctx=" ".join(["A man sits down."] * 8))
    unscorable = write_examples(tmp_path / "long-ending.jsonl", [EXAMPLE, long_ending])
    assert_refused(run(capsys, gpt2_data, tmp_path / "run", *GPT2_VOCAB, "--hellaswag-data", str(unscorable)),
                   "HellaSwag: 1 of 2 examples have an ending longer than the model's context "
                   "(--block-size 16) and cannot be scored; raise --block-size")
    truncated = write_examples(tmp_path / "long-context.jsonl", [EXAMPLE, long_context, long_context])
    status, out, errors = run(capsys, gpt2_data, tmp_path / "run", *GPT2_VOCAB, "--hellaswag-data", str(truncated))
    assert (status, errors) == (0, [])
    assert "warning: HellaSwag: 2 of 3 examples are longer than the model's context (--block-size 16) " \
           "and will be left-truncated" in out
    assert started == []


def test_out_dir_must_be_writable(data, tmp_path, started, capsys):
    (tmp_path / "a-file").write_text("")
    assert_refused(run(capsys, data, tmp_path / "a-file" / "run"),
                   f"--out-dir {tmp_path / 'a-file' / 'run'}: {tmp_path / 'a-file'} is a file, not a folder")
    assert started == []


def test_out_dir_needs_room_for_two_checkpoints(data, tmp_path, started, capsys, monkeypatch):
    need = 2 * memory.checkpoint_bytes(memory.count_parameters(parse_config(TINY).model_config()))
    real_disk_usage = shutil.disk_usage

    def free_bytes(free):
        monkeypatch.setattr(shutil, "disk_usage",
                            lambda path: real_disk_usage(path)._replace(free=free))

    free_bytes(need - 1)
    assert_refused(run(capsys, data, tmp_path / "run"),
                   f"--out-dir {tmp_path / 'run'}: {(need - 1) / 2**20:.1f} MiB free on its disk, "
                   f"but two checkpoints of this 28,544-parameter model take {need / 2**20:.1f} MiB")
    free_bytes(need)
    assert run(capsys, data, tmp_path / "run")[0] == 0
    assert started == []


def test_memory_near_the_limit_is_traced_and_the_trace_decides(data, tmp_path, started, capsys,
                                                               monkeypatch):
    cfg = parse_config(TINY + ["--dtype", "float32"])
    trace = memory.traced(cfg, 1, "cpu")["peak_bytes"]
    formula = memory.memory_plan(cfg, 1)["total"]
    assert formula < trace  # TINY's trace is a few KiB above the formula: between them it decides

    def ram(usable):
        monkeypatch.setattr(memory, "host_memory_available", lambda: usable / (1 - memory.RESERVE))

    ram((formula + trace) / 2)
    assert_refused(run(capsys, data, tmp_path / "run"),
                   f"memory: traced peak {trace / 2**30:.2f} GiB a rank (the formula's: "
                   f"{formula / 2**30:.2f} GiB) is over the")
    ram(trace)
    status, out, errors = run(capsys, data, tmp_path / "run")
    assert (status, errors) == (0, []) and "(the formula's: " in out and "fits\n" in out
    ram(formula / memory.TRACE_ABOVE)  # far from the limit: the formula's word, no trace
    status, out, errors = run(capsys, data, tmp_path / "run")
    assert status == 0 and "a rank is under 25% of the" in out and "fits (not traced)" in out
    # FSDP before the launch (Slurm's batch host): the shards' count is not known, so not checked
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ram(1)
    status, out, errors = run(capsys, data, tmp_path / "run", "--fsdp")
    assert status == 0 and "memory:" not in out
    assert started == []


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real one-step run of the TINY model with its checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    data = write_char_shards(root / "data")
    argv = [*TINY, "--data", str(data), "--out-dir", str(root / "run"), "--max-steps", "1",
            "--eval-every", "0", "--num-samples", "0", "--checkpoint-every", "1"]
    assert train_gpt2.main(argv) == 0
    return root / "run"


def test_checkpoint_size_estimate_holds_for_a_saved_checkpoint(trained_run):
    parameters = memory.count_parameters(parse_config(TINY).model_config())
    size = (trained_run / "ckpt_0000001.pt").stat().st_size
    # fp32 weights + AdamW's two moments at least; the estimate never below the real thing
    assert 12 * parameters < size <= memory.checkpoint_bytes(parameters)


def test_resume_target_must_be_readable_and_fit_the_model(data, trained_run, tmp_path, started, capsys):
    good = trained_run / "ckpt_0000001.pt"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert_refused(run(capsys, data, tmp_path / "run", "--resume", str(garbage)),
                   f"--resume {garbage}: {garbage}: not a checkpoint of this project")
    assert_refused(run(capsys, data, tmp_path / "run", "--resume", str(good), "--n-embd", "64"),
                   "checkpoint is from another model config (n_embd 32 != 64)")
    status, out, errors = run(capsys, data, tmp_path / "run", "--resume", str(good))
    assert (status, errors) == (0, []) and "(step 1) is readable and fits this model" in out
    # auto: the newest checkpoint in the run folder must be readable
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(good, run_dir / "ckpt_0000001.pt")
    (run_dir / "ckpt_0000002.pt").write_bytes(good.read_bytes()[:1000])
    assert_refused(run(capsys, data, run_dir),
                   f"--resume auto: {run_dir / 'ckpt_0000002.pt'}: cannot read it as a checkpoint: damaged")
    assert started == []


def test_wandb_online_needs_credentials(data, tmp_path, started, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_MODE", "online")
    assert_refused(run(capsys, data, tmp_path / "run", "--wandb"),
                   "--wandb: online mode, but no credentials for api.wandb.ai (WANDB_API_KEY unset, "
                   "no netrc entry); run `wandb login`")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    assert run(capsys, data, tmp_path / "run", "--wandb")[0] == 0
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run(capsys, data, tmp_path / "run", "--wandb")[0] == 0
    assert started == []


def test_train_sbatch_refuses_a_bad_setup_before_srun(data, tmp_path):
    """On a real one-node Slurm cluster: the job fails at once (exit 2, not requeued), with the
    preflight's lines in its log, and never reaches srun."""
    from test_slurm import LocalCluster, sbatch, wait_job

    cluster = LocalCluster()
    try:
        env = cluster.of(1)
        out = tmp_path / "run"
        job = sbatch(env, "--gpus-per-node=0", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out",
                     "slurm/train.sbatch", *TINY, "--data", str(data), "--out-dir", str(out),
                     "--resume", str(tmp_path / "missing.pt"))
        info = wait_job(env, job, timeout=120)
    finally:
        cluster.stop()
    log = (out / "slurm" / f"{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "2:0", "0"), log
    assert f"error: --resume: {tmp_path / 'missing.pt'}: no such checkpoint" in log
    assert "train.sbatch: preflight failed" in log
    assert "training step ended" not in log, "srun must not have started"


def test_dry_run_says_what_it_assumed_and_whether_it_fits(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    small = ["--preset", "cpu-smoke", "--device", "cuda", "--dtype", "bfloat16", "--micro-batch-size", "auto"]
    assert train_gpt2.main(small + ["--fsdp", "--dry-run", "--world-size", "8", "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "dry run for 8 rank(s) (--world-size), GPUs of 80 GB = 74.5 GiB (--gpu-memory)" in out
    assert "micro-batch 2: what auto picks here" in out  # the 2 sequences per rank of cpu-smoke
    assert "per rank (8 rank(s), FSDP)" in out and "micro-batch 2 x 64" in out and ": fits" in out
    assert "traced peak per rank" in out and "the trace is the plan" in out
    assert train_gpt2.main(small + ["--dry-run", "--world-size", "1", "--gpu-memory", "0.01GiB",
                                    "--micro-batch-size", "4"]) == 2
    out = capsys.readouterr().out
    assert "dry run for 1 rank(s) (--world-size), GPUs of 0.0107374 GB = 0.0 GiB" in out
    assert "micro-batch 4: set by --micro-batch-size" in out
    assert "does NOT fit: try --fsdp, --activation-checkpointing, a smaller --micro-batch-size" in out
    assert train_gpt2.main(["--preset", "cpu-smoke", "--micro-batch-size", "auto", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run for 1 rank(s) (the default; --world-size N plans for N), " in out
    assert "GiB of RAM available (--device cpu)" in out
    assert "activations in fp32 (--dtype auto, --device cpu)" in out
    assert "micro-batch 16: what auto picks here" in out
    assert "3,323,648 parameters (3.32M)" in out
    for flags in (["--world-size", "8"], ["--dry-run", "--gpu-memory", "lots"]):
        with pytest.raises(SystemExit) as exit_:
            train_gpt2.main(flags)
        assert exit_.value.code == 2
