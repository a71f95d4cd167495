"""The preflight checks: know that the job will get past its first minute.

    python train_gpt2.py [flags] --preflight    # one line per check; exit 0 all good, 2 any problem

run_checks(cfg) looks at everything a run reads or writes before its first step, reading headers
and metadata only: the shard folder (a warning if its manifest says the pipeline has not finished
it) and every shard's header and size, the training tokens the
planned steps need (more than one epoch is a warning), the validation shard, the HellaSwag file
(local only: training never downloads it) and whether its examples fit the model's context, the
CORE bundle (local too), the tokenizer (offline), the output folder (writable, room for two checkpoints),
a rank's memory for a set micro-batch (the traced plan where it is near the limit), the resume target,
and wandb's credentials. Each problem is one line saying what is wrong and how to fix it, and all
of them are listed, not only the first. train_gpt2.py runs the same checks at every start, on
every rank, before any model or process group exists: each check costs milliseconds (HellaSwag's
rendering about a second), and ranks on different nodes may see different disks (node-local
data, a home folder without wandb's netrc), so each rank checks what it will itself read.

The memory arithmetic (parameter counts, the memory plans, a checkpoint's size) is trainer/memory.py.
"""

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from netrc import NetrcParseError, netrc
from pathlib import Path
from urllib.parse import urlparse

from pipeline.tokenizer import GPT2_VOCAB_SIZE, get_gpt2_encoding, load_tokenizer
from shards.format import ShardError, read_shard
from shards.loader import (describe_global_batch, describe_shards, sequences_in,
                           too_short_for_a_batch)
from shards.manifest import MANIFEST, ManifestError, list_shards, read_manifest
from models.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, resolve_checkpoint
from trainer.checkpoint import check_compatible
from trainer.launch import record_exit
from trainer.memory import GiB, MiB, checkpoint_bytes, count_parameters, preflight_fit
from trainer.presets import data_command
from trainer.run_folder import refuse_mixing


class Report:
    """What the checks found: (level, line) with level "ok", "warning" or "error"."""

    def __init__(self):
        self.lines = []

    def add(self, level, text):
        # one line, whatever an exception's text held
        self.lines.append((level, " ".join(str(text).split())))

    def ok(self, text):
        self.add("ok", text)

    def warn(self, text):
        self.add("warning", text)

    def fail(self, text):
        self.add("error", text)

    @property
    def failures(self):
        return [text for level, text in self.lines if level == "error"]


def run_checks(cfg):
    """Every preflight check of cfg (see the module docstring); returns the Report."""
    report = Report()
    tokenizer = None
    if check_data_folder(cfg, report):
        check_shards(cfg, report)
        tokenizer = check_tokenizer(cfg, report)
    check_hellaswag(cfg, tokenizer, report)
    check_core(cfg, tokenizer, report)
    check_out_dir(cfg, report)
    check_memory(cfg, report)
    check_resume(cfg, report)
    check_wandb(cfg, report)
    return report


def check_data_folder(cfg, report):
    if Path(cfg.data).is_dir():
        return True
    what = "a file, not a shard folder" if Path(cfg.data).exists() else "no such folder"
    report.fail(f"--data {cfg.data}: {what}; make the shards with {data_command(cfg)}, "
                f"or point --data at them")
    return False


def _shard_tokens(path, cfg, report):
    """Tokens in a shard from its header (.bin) or array header (.npy), or None after a failure."""
    try:
        return len(read_shard(path))
    except (ShardError, OSError) as e:
        text = str(e) if "regenerate" in str(e) else f"{e}; regenerate it with {data_command(cfg)}"
        report.fail(text)
        return None


def check_shards(cfg, report):
    """Every shard readable; enough training tokens for max_steps; a val shard when evaluating."""
    try:
        train, val = list_shards(cfg.data, "train"), list_shards(cfg.data, "val")
    except ManifestError as e:
        report.fail(e)
        return
    check_data_finished(cfg, train, report)
    if not train:
        report.fail(f"--data {cfg.data}: no train shards (*_train_NNNNNN.bin/.npy); make them with "
                    f"{data_command(cfg)}")
    sequences_per_step = cfg.total_batch_size // cfg.seq_len  # the loader's global batch
    counts = {path: _shard_tokens(path, cfg, report) for path in train}
    if train and None not in counts.values():
        check_train_tokens(cfg, counts, sequences_per_step, report)
    val_tokens = [_shard_tokens(path, cfg, report) for path in val]
    if not cfg.eval_every:
        return
    if not val:
        report.fail(f"--data {cfg.data}: no val shard (*_val_NNNNNN.bin/.npy, shard 0), needed by "
                    f"--eval-every {cfg.eval_every}; make the shards with {data_command(cfg)}, "
                    f"or pass --eval-every 0")
    elif None not in val_tokens:
        sequences = sum(sequences_in(n, cfg.seq_len) for n in val_tokens)
        if sequences == 0:
            report.fail(f"--data {cfg.data}: the val shards hold less than one sequence of "
                        f"{cfg.seq_len + 1} tokens; make a larger val shard, or pass --eval-every 0")
        else:
            report.ok(f"--data {cfg.data}: validation on {min(sequences * cfg.seq_len, cfg.val_tokens):,} "
                      f"tokens every {cfg.eval_every} steps")


def check_data_finished(cfg, train, report):
    """A folder whose manifest says the pipeline has not finished it: a warning, not a failure
    (training on the shards finished so far is a legitimate choice), saying what it costs."""
    if (Path(cfg.data) / MANIFEST).exists() and not read_manifest(cfg.data).get("complete", True):
        report.warn(f"--data {cfg.data}: INCOMPLETE (`python -m shards info {cfg.data}`): the pipeline "
                    f"that makes it is still running or was stopped; training uses the {len(train)} "
                    f"train shard(s) finished so far, and shards that appear later change the data "
                    f"stream of a resumed run; finish it first by running its command again (it "
                    f"resumes)")


def check_train_tokens(cfg, counts, sequences_per_step, report):
    """Steps per epoch against --max-steps. A shard shorter than one global batch is left out by
    the loader (one warning line for all of them); none long enough is an error."""
    steps = {path: sequences_in(n, cfg.seq_len) // sequences_per_step for path, n in counts.items()}
    short = [path for path, n in steps.items() if n == 0]
    if len(short) == len(steps):
        report.fail(f"--data {cfg.data}: " + too_short_for_a_batch(
            short, max(counts.values()), cfg.seq_len, sequences_per_step))
        return
    if short:
        left_out = sum(counts[path] for path in short)
        report.warn(f"{describe_shards(short)}: fewer tokens than one global batch of "
                    f"{describe_global_batch(sequences_per_step, cfg.seq_len)}: left out, "
                    f"{left_out:,} tokens unused")
    used = [path for path in steps if steps[path]]
    tokens, steps_per_epoch = sum(counts[p] for p in used), sum(steps.values())
    epochs = cfg.max_steps / steps_per_epoch
    what = (f"--data {cfg.data}: {len(used)} train shard(s), {tokens:,} tokens, {steps_per_epoch:,} "
            f"steps of {cfg.total_batch_size:,} tokens per epoch")
    if epochs > 1:
        report.warn(f"{what}: --max-steps {cfg.max_steps:,} takes {epochs:.2f} epochs (the data "
                    f"repeats); add shards or lower --max-steps if that is not intended")
    else:
        report.ok(f"{what}: --max-steps {cfg.max_steps:,} uses {epochs:.2f} of an epoch")


def check_tokenizer(cfg, report):
    """The shards' tokenizer, loaded offline, or None after a failure."""
    try:
        tokenizer = load_tokenizer(cfg.data)
    except Exception as e:  # GPT-2's BPE files unavailable offline, a bad tokenizer.json, ...
        report.fail(f"--data {cfg.data}: cannot load its tokenizer offline: {e}")
        return None
    if tokenizer.vocab_size > cfg.vocab_size:
        report.fail(f"the shards in {cfg.data} use a {tokenizer.name} vocabulary of "
                    f"{tokenizer.vocab_size} tokens, more than the model's --vocab-size "
                    f"{cfg.vocab_size}; raise --vocab-size")
    else:
        report.ok(f"tokenizer: {tokenizer.name} ({tokenizer.vocab_size:,} tokens), loaded offline")
    return tokenizer


def check_hellaswag(cfg, tokenizer, report):
    """A local HellaSwag file when it is on, whose examples fit the model's context."""
    if not cfg.hellaswag_every:
        return
    from evaluation import hellaswag

    if cfg.vocab_size < GPT2_VOCAB_SIZE or (tokenizer is not None and tokenizer.name != "gpt2"):
        report.warn(f"--hellaswag-every {cfg.hellaswag_every}: HellaSwag needs a GPT-2-tokenizer "
                    f"model and shards: it will be skipped; pass --hellaswag-every 0")
        return
    path = Path(cfg.hellaswag_data) if cfg.hellaswag_data else hellaswag.DEFAULT_CACHE_DIR / hellaswag.VAL_FILE
    if not path.is_file():
        report.fail(f"HellaSwag data not found at {path} (training never downloads it); run "
                    f"`python hellaswag.py --download` where there is internet, or pass "
                    f"--hellaswag-data FILE, or --hellaswag-every 0")
        return
    try:
        examples = hellaswag.load_examples(cfg.hellaswag_data or None, hellaswag.DEFAULT_CACHE_DIR,
                                           cfg.hellaswag_limit or None, download=False)
        encoding = get_gpt2_encoding()
    except hellaswag.HellaSwagUnavailable as e:
        report.fail(f"{e} (or pass --hellaswag-every 0)")
        return
    except RuntimeError:  # no GPT-2 tokenizer: the tokenizer check says so
        return
    rendered = [hellaswag.render_example(example, encoding) for example in examples]
    too_long, truncated = hellaswag.context_overflows(rendered, cfg.block_size)
    if too_long:
        report.fail(f"HellaSwag: {too_long} of {len(examples)} examples have an ending longer than the "
                    f"model's context (--block-size {cfg.block_size}) and cannot be scored; raise "
                    f"--block-size or pass --hellaswag-every 0")
    elif truncated:
        report.warn(f"HellaSwag: {truncated} of {len(examples)} examples are longer than the model's "
                    f"context (--block-size {cfg.block_size}) and will be left-truncated, as "
                    f"lm-evaluation-harness does")
    else:
        report.ok(f"HellaSwag: {len(examples)} examples in {path}, all within the model's context")


def check_core(cfg, tokenizer, report):
    """The CORE bundle, local, when CORE is on: --core-every auto runs it only when the bundle is
    there (a line says which); an explicit --core-every N or --core-bundle needs it."""
    if not cfg.core_every or cfg.vocab_size < GPT2_VOCAB_SIZE or (tokenizer is not None and tokenizer.name != "gpt2"):
        if cfg.core_every not in (0, "auto"):
            report.warn(f"--core-every {cfg.core_every}: CORE needs a GPT-2-tokenizer model and shards: "
                        f"it will be skipped; pass --core-every 0")
        return
    from evaluation import core

    bundle = Path(cfg.core_bundle) if cfg.core_bundle else core.DEFAULT_BUNDLE
    try:
        tasks, missing = core.load_tasks(bundle)
    except core.CoreUnavailable as e:
        if cfg.core_every == "auto" and not cfg.core_bundle:
            report.ok(f"CORE: no bundle at {bundle}: not run (fetch it with `python core_eval.py --download`)")
        else:
            report.fail(f"{e} (training never downloads it; or pass --core-every 0)")
        return
    most_shots = max((t.num_fewshot for t in tasks), default=0)
    if cfg.core_max_per_task and cfg.core_max_per_task <= most_shots:
        report.fail(f"--core-max-per-task {cfg.core_max_per_task}: CORE draws each row's {most_shots} shots "
                    f"from the other kept rows, as nanochat; pass {most_shots + 1} or more (0 = all)")
        return
    when = "at the last step" if cfg.core_every == "auto" else f"every {cfg.core_every} steps and at the last"
    absent = f"; {len(missing)} absent: {', '.join(missing)}" if missing else ""
    report.ok(f"CORE: {len(tasks)} of {len(tasks) + len(missing)} tasks in {bundle}{absent}; run {when}")


def _size(n):
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def check_out_dir(cfg, report):
    """The run folder (or the folder it will be made in) writable, with room for two checkpoints:
    a new one is written beside the previous one before that is deleted."""
    out = Path(cfg.out_dir)
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        report.fail(f"--out-dir {out}: {existing} is a file, not a folder; choose another --out-dir")
        return
    try:
        with tempfile.TemporaryFile(dir=existing):  # permissions alone miss read-only mounts
            pass
    except OSError as e:
        report.fail(f"--out-dir {out}: cannot write in {existing} ({e.strerror or e}); choose a "
                    f"writable --out-dir")
        return
    parameters = count_parameters(cfg.model_config())
    one = checkpoint_bytes(parameters)
    free = shutil.disk_usage(existing).free
    if free < 2 * one:
        report.fail(f"--out-dir {out}: {_size(free)} free on its disk, but two checkpoints of this "
                    f"{parameters:,}-parameter model take {_size(2 * one)}; free some space or choose "
                    f"another --out-dir")
    else:
        report.ok(f"--out-dir {out}: writable, {_size(free)} free, a checkpoint takes {_size(one)}")


def check_memory(cfg, report):
    """A run of a known micro-batch fits the memory of a rank (trainer/memory.py preflight_fit).
    Without torchrun's WORLD_SIZE, one process; but FSDP's shards are not known before the launch
    (slurm/train.sbatch's preflight on the batch host): not checked."""
    if "WORLD_SIZE" not in os.environ and cfg.fsdp:
        return
    found = preflight_fit(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    if found:
        report.add(*found)


def check_resume(cfg, report):
    """--resume PATH: a readable checkpoint of this model; auto: the newest one in out_dir is;
    never or PATH: a start that would not continue the run in out_dir is refused
    (trainer/run_folder.py)."""
    refusal = refuse_mixing(cfg)
    if refusal:
        report.fail(refusal)
        return
    if cfg.resume == "never":
        return
    if cfg.resume == "auto":
        found = list_checkpoints(cfg.out_dir)
        if not found:
            report.ok(f"--resume auto: no checkpoint in {cfg.out_dir} yet: the run starts at step 0")
            return
        path = found[-1]
        fix = (f"move it aside to resume from {found[-2].name}" if len(found) > 1 else
               "move it aside") + ", or start over in another --out-dir"
    else:
        try:
            path = resolve_checkpoint(cfg.resume)
        except CheckpointError as e:
            report.fail(f"--resume: {e}; pass a checkpoint or run folder, or --resume auto or never")
            return
        fix = "pass another --resume checkpoint, or --resume never"
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        report.fail(f"--resume {cfg.resume}: {e}; {fix}")
        return
    try:
        check_compatible(state, cfg.model_config(), path, cfg.recipe)
    except CheckpointError as e:  # its message says what to change
        report.fail(f"--resume {cfg.resume}: {e}")
        return
    report.ok(f"--resume {cfg.resume}: {path} (step {state['step']}) is readable and fits this model")


def _netrc_has(host):
    path = os.environ.get("NETRC") or Path.home() / ".netrc"
    try:
        return netrc(path).authenticators(host) is not None
    except (OSError, NetrcParseError):
        return False


def check_wandb(cfg, report):
    """--wandb: wandb installed; online mode with credentials (an API key or a netrc entry)."""
    if not cfg.wandb:
        return
    if importlib.util.find_spec("wandb") is None:
        report.fail("--wandb: the wandb package is not installed; pip install wandb, or drop --wandb")
        return
    mode = os.environ.get("WANDB_MODE", "online").lower() or "online"
    if mode in ("offline", "dryrun", "disabled"):
        report.ok(f"--wandb: WANDB_MODE={mode}: no credentials or network needed")
        return
    if mode not in ("online", "run"):
        report.fail(f"--wandb: WANDB_MODE={mode} is not a wandb mode; use online, offline or disabled")
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    if os.environ.get("WANDB_API_KEY") or _netrc_has(host):
        report.ok(f"--wandb: online, credentials for {host} found (reachability is not checked)")
        return
    report.fail(f"--wandb: online mode, but no credentials for {host} (WANDB_API_KEY unset, no netrc "
                f"entry); run `wandb login` or set WANDB_API_KEY, or WANDB_MODE=offline to log to "
                f"files and `wandb sync` them later")


def preflight(cfg):
    """Run the checks on this rank and print them: errors on stderr ("error: ..."), the rest and
    a summary on stdout. True when nothing failed. Rank 0 prints; so does the first rank of
    every other node, its failures only, naming its host (nodes may differ: node-local disks)."""
    report = run_checks(cfg)
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if rank == 0:
        for level, text in report.lines:
            print(f"{level}: {text}", file=sys.stderr if level == "error" else sys.stdout, flush=True)
        warnings = sum(level == "warning" for level, _ in report.lines)
        if report.failures:
            print(f"preflight: {len(report.failures)} problem(s), nothing started; fix them and run "
                  f"again", flush=True)
        else:
            print(f"preflight: passed ({warnings} warning(s))", flush=True)
    elif local_rank == 0:
        for text in report.failures:
            print(f"error: [{socket.gethostname()} rank {rank}] {text}", file=sys.stderr, flush=True)
    if report.failures:  # for trainer.launch to print last: the problems, not the summary
        record_exit("\n".join(f"error: {text}" for text in report.failures), 2)
    return not report.failures
