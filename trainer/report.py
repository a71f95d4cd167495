"""The run report: RUN/report.md and RUN/report.json, written from the run folder alone.

    python -m trainer.report runs/gpt2-124m     # any run folder, finished or not
    path, report = write_report(run_dir)        # train_gpt2.py, at the end of a finished run

Everything needed to write up a run and rerun it: the command line and resolved config, commit,
package versions, hardware, data (the shard folder's manifest.json when it can be found), tokens
trained on and epochs, wall time, tokens/s and MFU, final and best validation loss and bits per
byte, HellaSwag beside the reference models scored the same way, the plot, the final checkpoint
and the commands that sample from it, export it and resume it.

Sources: config.json, log.jsonl and the checkpoints. Each {"setup"} record of log.jsonl starts an
attempt (a preempted and requeued, or stopped and resumed, run has several); every line carries
the unix "time" it was written, so an attempt's wall time runs from its setup record to its last
line (steps a crash lost after the last checkpoint are superseded by the resumed start's and left
out, and their time with them). HellaSwag: training logs build-nanogpt's "default" (completion) style at every evaluation
and lm-evaluation-harness's style too at the last step; `hellaswag.py --json` results saved as
RUN/hellaswag_*.json (the command is in the report) are reported beside them.
The page itself is drawn by trainer/report_markdown.py.
"""

import json
import shlex
import sys
import time
from pathlib import Path

from pipeline.tokenizer import GPT2_VOCAB_SIZE
from models.checkpoint import list_checkpoints
from trainer.metrics import read_log
from trainer.report_markdown import STYLE_NAMES, render_markdown

class NotARun(ValueError):
    """The folder holds no train_gpt2.py run; the message says what to pass instead."""


def read_run(run_dir):
    """(config dict, [log records that stand]) of a run folder (metrics.read_log)."""
    run_dir = Path(run_dir)
    log, config = run_dir / "log.jsonl", run_dir / "config.json"
    if not (log.is_file() and config.is_file()):
        raise NotARun(f"{run_dir} is not a run folder (no log.jsonl and config.json): pass the "
                      f"--out-dir of a train_gpt2.py run")
    try:
        return json.loads(config.read_text()), read_log(log)
    except ValueError as e:
        raise NotARun(f"{config}: unreadable ({e}); rewrite it from a checkpoint's config") from None


def split_attempts(records):
    """One list of records per start of the run: each {"setup"} record begins an attempt (lines
    before any setup record, from a log that predates them, form an attempt of their own)."""
    attempts = []
    for record in records:
        if "setup" in record or not attempts:
            attempts.append([])
        attempts[-1].append(record)
    return attempts


def describe_attempt(records):
    setup = records[0].get("setup", {})
    steps = [r["step"] for r in records if "loss" in r]
    start = setup.get("start_step", min(steps, default=0))
    times = [r["time"] for r in records if "time" in r]
    return {"start_step": start, "end_step": max(steps) + 1 if steps else start,
            "wall_time_s": round(times[-1] - times[0], 3) if times else None,
            "started": times[0] if times else None,
            "world_size": setup.get("world_size"), "parallelism": setup.get("parallelism"),
            "git_commit": setup.get("versions", {}).get("git_commit")}


def throughput(attempts, tokens_per_step):
    """Tokens/s over the training steps (not evaluations), and the mean MFU when it is known;
    each attempt's first step (compilation, warm-up) is left out, as the progress line's ETA
    does, unless it is the attempt's only step."""
    steps = []
    for records in attempts:
        train = [r for r in records if "loss" in r and "ms" in r]
        steps += train[1:] or train
    if not steps:
        return None, None
    seconds = sum(r["ms"] for r in steps) / 1000
    mfus = [r.get("mfu") for r in steps]
    mfu = sum(mfus) / len(mfus) if all(m is not None for m in mfus) else None
    return tokens_per_step * len(steps) / seconds, mfu


def final_and_best(records, key, better=min):
    """({"step", key} of the last record with `key`, of the best: the lowest loss, or with
    better=max the highest accuracy; the earliest step on a tie). Later lines win for a step."""
    by_step = {r["step"]: r[key] for r in records if r.get(key) is not None}
    if not by_step:
        return None, None
    last = max(by_step)
    best = better(sorted(by_step), key=by_step.get)
    return {"step": last, key: by_step[last]}, {"step": best, key: by_step[best]}


def find_manifest(data, run_dir):
    """The shard folder's manifest.json: `data` as given (absolute, or relative to here or to the
    repository that holds runs/RUN), or None."""
    for folder in (Path(data), Path(run_dir).resolve().parent.parent / data):
        if (folder / "manifest.json").is_file():
            try:
                return json.loads((folder / "manifest.json").read_text())
            except ValueError:
                return None
    return None


def describe_data(config, run_dir, tokens_trained, last_epoch):
    manifest = find_manifest(config["data"], run_dir) or {}
    shards = manifest.get("shards", [])
    train_tokens = sum(s["tokens"] for s in shards if s.get("split") == "train") or None
    return {"path": config["data"], "manifest": bool(manifest), "source": manifest.get("source"),
            "fingerprint": manifest.get("fingerprint"), "tokenizer": manifest.get("tokenizer"),
            "shards": len(shards) or None, "train_tokens": train_tokens,
            "tokens_trained": tokens_trained,
            "epochs": tokens_trained / train_tokens if train_tokens else None,
            "loader_epoch": last_epoch}


def hellaswag_results(records, run_dir, config):
    """[{style, source, step, acc_norm, acc, n, best_*, references}]: the in-training figures,
    then every hellaswag_*.json in the run folder (hellaswag.py --json)."""
    from evaluation import hellaswag

    def references(style):
        refs = hellaswag.references_for(config["n_layer"], config["n_embd"], style)
        return refs or [(f"{label} (GPT-2 124M's size, not this model's)", acc)
                        for label, acc in hellaswag.references_for(12, 768, style)]

    results = []
    for style, prefix in (("default", "hellaswag"), ("harness", "hellaswag_harness")):
        final, best = final_and_best(records, f"{prefix}_acc_norm", better=max)
        if final:
            row = next(r for r in reversed(records) if r.get("step") == final["step"]
                       and f"{prefix}_acc_norm" in r)
            results.append({"style": style, "source": "training (log.jsonl)", "step": final["step"],
                            "acc_norm": row[f"{prefix}_acc_norm"], "acc": row.get(f"{prefix}_acc"),
                            "n": row.get(f"{prefix}_n"), "best_acc_norm": best[f"{prefix}_acc_norm"],
                            "best_step": best["step"]})
    for path in sorted(Path(run_dir).glob("hellaswag*.json")):
        try:
            scored = json.loads(path.read_text())
            results.append({"style": scored["style"], "source": path.name, "step": None,
                            "acc_norm": scored["acc_norm"], "acc": scored["acc"], "n": scored["n"]})
        except (ValueError, KeyError, TypeError):
            print(f"warning: {path} is not the output of `hellaswag.py --json`; left out",
                  file=sys.stderr)
    for result in results:
        result["style_means"] = STYLE_NAMES.get(result["style"], result["style"])
        result["references"] = [list(ref) for ref in references(result["style"])] \
            if result["style"] in hellaswag.STYLES else []
    return results


def core_result(records):
    """The last CORE evaluation of log.jsonl: {step, core, tasks: {label: {accuracy, centered,
    n}}, missing: [labels], gpt2: GPT-2's CORE over the same tasks, gpt2_model}, or None."""
    row = next((r for r in reversed(records) if r.get("core") is not None), None)
    if row is None:
        return None
    return {"step": row["step"], "core": row["core"], "tasks": row.get("core_per_task") or {},
            "missing": [label for label in (row.get("core_missing") or "").split(",") if label],
            "gpt2": row.get("core_gpt2"), "gpt2_model": row.get("core_gpt2_model")}


def ensure_plot(run_dir):
    """RUN/plot.png, as plot.py draws it, when missing or older than log.jsonl; None if no plot."""
    from trainer import plots  # here, not at the top: matplotlib loads only to draw a plot

    png = Path(run_dir) / "plot.png"
    if not png.exists() or png.stat().st_mtime < (Path(run_dir) / "log.jsonl").stat().st_mtime:
        try:
            plots.plot([run_dir], png)
        except (ValueError, OSError) as e:
            print(f"warning: no plot ({e})", file=sys.stderr)
            return None
    return png.name


def launcher(world_size, hosts):
    """torchrun through trainer.launch: the trainer's exit status (2, 3), not torchrun's 1."""
    if world_size <= 1:
        return "python"
    torchrun = "python -m trainer.launch"
    if hosts > 1:
        return f"{torchrun} --nnodes={hosts} --nproc_per_node={world_size // hosts} --rdzv_endpoint=HOST:29500"
    return f"{torchrun} --standalone --nproc_per_node={world_size}"


def commands(run_dir, setup, config, checkpoint, hosts):
    """Shell lines, runnable from where the run was launched."""
    run = str(run_dir)
    start = launcher(setup.get("world_size") or 1, hosts)
    argv = setup.get("command") or ["train_gpt2.py"]
    found = {"train": f"{start} {shlex.join(argv)}"}
    if checkpoint:
        found.update(
            sample=f"python sample.py --checkpoint {shlex.quote(checkpoint)}",
            export=f"python hf_gpt2.py export {shlex.quote(checkpoint)} {shlex.quote(run + '/hf')}",
            resume=f"{start} train_gpt2.py --config {shlex.quote(run + '/config.json')} "
                   f"--resume {shlex.quote(checkpoint)} --max-steps {config['max_steps']}")
        if config["vocab_size"] >= GPT2_VOCAB_SIZE:  # HellaSwag and CORE are GPT-2 tokens
            found["hellaswag"] = kept_if_it_succeeds(hellaswag_command(checkpoint, config),
                                                     run + "/hellaswag_harness.json")
            found["core"] = kept_if_it_succeeds(
                f"python core_eval.py --checkpoint {shlex.quote(checkpoint)} --json", run + "/core.json")
    return found


def kept_if_it_succeeds(command, path):
    """`command > path`, through a temporary file: a failed command (offline, say) leaves no
    empty file for the report to trip over."""
    tmp, final = shlex.quote(path + ".tmp"), shlex.quote(path)
    return f"{command} > {tmp} && mv {tmp} {final} || {{ rm -f {tmp}; false; }}"


def hellaswag_command(checkpoint, config):
    """hellaswag.py on the run's checkpoint, with the run's own HellaSwag file and limit; a model
    with a shorter context than GPT-2's skips the few endings longer than it (and says how many)."""
    data = f" --data {shlex.quote(config['hellaswag_data'])}" if config.get("hellaswag_data") else ""
    limit = f" --limit {config['hellaswag_limit']}" if config.get("hellaswag_limit") else ""
    skip = " --skip-too-long" if config["block_size"] < 1024 else ""
    return (f"python hellaswag.py --checkpoint {shlex.quote(checkpoint)} --style harness{data}{limit}{skip} "
            f"--json")


def build_report(run_dir):
    """The report as a dict of plain JSON values (report.json)."""
    run_dir = Path(run_dir)
    config, records = read_run(run_dir)
    attempts = split_attempts(records)
    setups = [r["setup"] for r in records if "setup" in r]
    setup = setups[-1] if setups else {}
    described = [describe_attempt(a) for a in attempts]
    train_steps = [r["step"] for r in records if "loss" in r]
    steps_done = max(train_steps) + 1 if train_steps else 0
    last_epoch = next((r["epoch"] for r in reversed(records) if "epoch" in r), None)
    tokens_per_s, mfu = throughput(attempts, config["total_batch_size"])
    walls = [a["wall_time_s"] for a in described]
    checkpoints = list_checkpoints(run_dir)
    checkpoint = str(checkpoints[-1]) if checkpoints else None
    devices = setup.get("devices") or []
    hosts = len({d.split(": ", 1)[0] for d in devices}) or 1
    versions = dict(setup.get("versions") or {})
    val_loss, best_loss = final_and_best(records, "val_loss")
    val_bpb, best_bpb = final_and_best(records, "val_bpb")
    return {
        "run_dir": str(run_dir),
        "finished": (run_dir / "DONE").exists(),
        "steps": {"done": steps_done, "max_steps": config["max_steps"]},
        "command": commands(run_dir, setup, config, None, hosts)["train"],
        "config": config,
        "code": {"git_commit": versions.pop("git_commit", None),
                 "git_dirty": versions.pop("git_dirty", None)},
        "versions": versions,
        "model": {"parameters": setup.get("parameters"), "recipe": config.get("recipe", "faithful"),
                  **{k: config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}},
        "hardware": {"devices": devices, "device_count": len(devices), "hosts": hosts,
                     "world_size": setup.get("world_size"), "parallelism": setup.get("parallelism"),
                     "precision": setup.get("precision")},
        "data": describe_data(config, run_dir, steps_done * config["total_batch_size"], last_epoch),
        "time": {"wall_time_s": round(sum(walls), 3) if None not in walls else None,
                 "attempts": described, "requeues": len(described) - 1},
        "throughput": {"tokens_per_s": tokens_per_s, "mfu": mfu},
        "validation": {"final": {**(val_loss or {}), **({"val_bpb": val_bpb["val_bpb"]} if val_bpb else {})}
                       or None,
                       "best_loss": best_loss, "best_bpb": best_bpb},
        "hellaswag": hellaswag_results(records, run_dir, config),
        "core": core_result(records),
        "plot": ensure_plot(run_dir),
        "checkpoint": {"path": checkpoint, "step": int(Path(checkpoint).stem[5:]),
                       "save_s": max((r["checkpoint_s"] for r in records if "checkpoint_s" in r), default=None)}
        if checkpoint else None,
        "commands": commands(run_dir, setup, config, checkpoint, hosts),
        "written": time.time(),
    }


def wandb_summary(report):
    """The report's headline figures as flat wandb summary keys."""
    final, hs = report["validation"]["final"] or {}, report["hellaswag"]
    in_training = next((h for h in hs if h["step"] is not None), {})
    return {"report/val_loss": final.get("val_loss"), "report/val_bpb": final.get("val_bpb"),
            "report/best_val_loss": (report["validation"]["best_loss"] or {}).get("val_loss"),
            "report/best_val_bpb": (report["validation"]["best_bpb"] or {}).get("val_bpb"),
            "report/hellaswag_acc_norm": in_training.get("acc_norm"),
            "report/hellaswag_acc": in_training.get("acc"),
            "report/core": (report.get("core") or {}).get("core"),
            "report/core_tasks": len(report["core"]["tasks"]) if report.get("core") else None,
            "report/tokens_trained": report["data"]["tokens_trained"],
            "report/epochs": report["data"]["epochs"],
            "report/wall_time_s": report["time"]["wall_time_s"],
            "report/tokens_per_s": report["throughput"]["tokens_per_s"],
            "report/mfu": report["throughput"]["mfu"],
            "report/attempts": len(report["time"]["attempts"]),
            "report/requeues": report["time"]["requeues"],
            "report/checkpoint": (report["checkpoint"] or {}).get("path")}


def write_report(run_dir):
    """Write RUN/report.md and RUN/report.json; return (report.md path, report dict)."""
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    path = run_dir / "report.md"
    path.write_text(render_markdown(report))
    return path, report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m trainer.report RUN_DIR  (writes RUN_DIR/report.md and report.json)",
              file=sys.stderr)
        return 2
    try:
        path, _ = write_report(argv[0])
    except NotARun as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a colleague's read-only run, a full disk
        print(f"error: cannot write {e.filename or argv[0]} ({e.strerror or e}): make the report "
              f"on a copy: cp -r {argv[0]} MY_COPY && python -m trainer.report MY_COPY", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
