"""report.md: the run report (trainer/report.py's dict) as a page a person reads, headline
table first; and the one-line reasons a benchmark did not run, which plot.py shows too."""

import json
import time
from collections import Counter
from pathlib import Path

from pipeline.tokenizer import GPT2_VOCAB_SIZE

STYLE_NAMES = {"default": "build-nanogpt's completion scoring",
               "harness": "lm-evaluation-harness's scoring"}


def why_no_hellaswag(config, tokenizer=None):
    """Why a run with this config.json (and shards of this tokenizer, when known) logged no
    HellaSwag result, as the trainer decides it (trainer/evaluation.py's load_hellaswag)."""
    if not config.get("hellaswag_every"):
        return "--hellaswag-every 0"
    if config.get("vocab_size", GPT2_VOCAB_SIZE) < GPT2_VOCAB_SIZE:
        return (f"the model's vocabulary has {config['vocab_size']:,} tokens; HellaSwag needs a "
                f"GPT-2-vocabulary model")
    if tokenizer not in (None, "gpt2"):
        return f"the shards' tokenizer is {tokenizer}; HellaSwag needs GPT-2's"
    return (f"no result in log.jsonl although --hellaswag-every {config['hellaswag_every']}: skipped "
            f"at start-up (the run's output says why) or stopped before its first evaluation")


def why_no_core(config, tokenizer=None):
    """Why a run with this config.json (and shards of this tokenizer, when known) logged no CORE
    result, as the trainer decides it (trainer/evaluation.py's load_core)."""
    from evaluation import core
    if not config.get("core_every"):
        return "--core-every 0"
    if config.get("vocab_size", GPT2_VOCAB_SIZE) < GPT2_VOCAB_SIZE or tokenizer not in (None, "gpt2"):
        return "CORE needs a GPT-2-tokenizer model and shards"
    bundle = Path(config.get("core_bundle") or core.DEFAULT_BUNDLE)
    if not (bundle / "core.yaml").is_file():
        return f"no eval bundle at {bundle} (fetch it once with `python core_eval.py --download`)"
    return (f"no result in log.jsonl although --core-every {config['core_every']}: skipped at "
            f"start-up (the run's output says why) or stopped before the evaluation")


def duration(seconds):
    if seconds is None:
        return "unknown (log.jsonl lines without \"time\")"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def number(value, fmt="{:.4f}"):
    return "n/a" if value is None else fmt.format(value)


def core_lines(core):
    """report.md's CORE section: the headline, then each task beside GPT-2's."""
    from evaluation import core as core_eval

    n_tasks = len(core["tasks"]) + len(core["missing"])
    absent = f" (absent: {', '.join(core['missing'])})" if core["missing"] else ""
    over = f" over {len(core['tasks'])} of {n_tasks} tasks{absent}"
    gpt2 = core["gpt2_model"] or "OpenAI GPT-2"
    all_tasks = ", ".join(f"{core_eval.GPT2_LABELS[name]} {value}" for name, value in core_eval.GPT2_CORE.items())
    lines = ["", "## CORE", "",
             f"CORE{over} at step {core['step']}: {number(core['core'])}; {gpt2} over the same tasks: "
             f"{number(core['gpt2'])} (OpenAI GPT-2 over all 22 tasks, as nanochat reports it: {all_tasks}). "
             "Computed as nanochat computes it (core_eval.py); centered = (accuracy - random baseline) / "
             "(1 - random baseline).",
             "", f"| task | examples | accuracy | centered | {gpt2} centered |", "|---|---|---|---|---|"]
    for label, r in core["tasks"].items():
        lines.append(f"| {label} | {r['n']} | {number(r['accuracy'])} | {number(r['centered'])} | "
                     f"{number(r.get('gpt2_centered'))} |")
    return lines


def render_markdown(r):
    """report.md: the headline table first, then attempts, HellaSwag, commands, provenance."""
    cfg, data, val, hw, model = r["config"], r["data"], r["validation"], r["hardware"], r["model"]
    final = val["final"] or {}
    status = "finished" if r["finished"] else "not finished"
    epochs = f" = {data['epochs']:.2f} epochs of {data['train_tokens']:,} train tokens" \
        if data["epochs"] is not None else ""
    devices = ", ".join(f"{n} x {name}" for name, n in
                        Counter(d.split(": ", 1)[-1] for d in hw["devices"]).items()) or "unknown"
    commit = r["code"]["git_commit"] or "unknown (not a git checkout)"
    dirty = " (dirty: uncommitted changes to tracked files)" if r["code"]["git_dirty"] else ""
    mfu = number(r["throughput"]["mfu"], "{:.1%}") if r["throughput"]["mfu"] is not None else \
        "n/a (peak FLOP/s unknown for this device: --peak-flops)"
    params = f"{model['parameters']:,}" if model["parameters"] else "?"
    save_s = (r["checkpoint"] or {}).get("save_s")
    save_time = f" (the slowest save took {save_s:.1f} s)" if save_s is not None else ""
    lines = [
        f"# Run report: {Path(r['run_dir']).resolve().name}", "",
        f"`{r['run_dir']}`, {status}: {r['steps']['done']:,} of {r['steps']['max_steps']:,} steps. "
        f"Rewrite with `python -m trainer.report {r['run_dir']}`.", "",
        "| | |", "|---|---|",
        f"| validation loss | {number(final.get('val_loss'))} at step {final.get('step', 'n/a')} "
        f"(best {number((val['best_loss'] or {}).get('val_loss'))} at step "
        f"{(val['best_loss'] or {}).get('step', 'n/a')}) |",
        f"| validation bits per byte | {number(final.get('val_bpb'))} (best "
        f"{number((val['best_bpb'] or {}).get('val_bpb'))} at step "
        f"{(val['best_bpb'] or {}).get('step', 'n/a')}) |",
    ]
    for h in r["hellaswag"]:
        refs = ", ".join(f"{label} {acc}" for label, acc in h["references"]) or "none"
        lines.append(f"| HellaSwag acc_norm, {h['style']} style ({h['source']}) | "
                     f"{number(h['acc_norm'])} (acc {number(h['acc'])}, {h['n']} examples); "
                     f"same style: {refs} |")
    if not r["hellaswag"]:
        lines.append(f"| HellaSwag | not run: {why_no_hellaswag(cfg, data['tokenizer'])} |")
    if r.get("core"):
        lines.append(f"| CORE | {number(r['core']['core'])} at step {r['core']['step']} "
                     f"(over {len(r['core']['tasks'])} of {len(r['core']['tasks']) + len(r['core']['missing'])} "
                     f"tasks; see CORE below) |")
    else:
        lines.append(f"| CORE | not run: {why_no_core(cfg, data['tokenizer'])} |")
    lines += [
        f"| tokens trained on | {data['tokens_trained']:,}{epochs} |",
        f"| wall time | {duration(r['time']['wall_time_s'])} over {len(r['time']['attempts'])} "
        f"attempt(s), {r['time']['requeues']} requeue(s)/restart(s) |",
        f"| throughput | {number(r['throughput']['tokens_per_s'], '{:,.0f}')} tokens/s "
        f"(training steps); MFU {mfu} |",
        f"| model | {params} parameters: {model['n_layer']} layers, {model['n_head']} heads, "
        f"{model['n_embd']} wide, context {model['block_size']}, vocab {model['vocab_size']}; "
        f"--recipe {model['recipe']} |",
        f"| hardware | {devices} on {hw['hosts']} host(s); " + (
            f"{hw['world_size']} ranks, {(hw['parallelism'] or '?').upper()}" if hw["world_size"] != 1
            else "1 process") + f"; {hw['precision']} |",
        f"| data | `{data['path']}`: " + (
            f"source {data['source']}, fingerprint `{data['fingerprint']}`, tokenizer "
            f"{data['tokenizer']}, {data['shards']} shards |" if data["manifest"] else
            "no manifest.json found (shards not on this machine, or not written by the pipeline) |"),
        f"| code | commit `{commit}`{dirty} |",
        f"| final checkpoint | `{(r['checkpoint'] or {}).get('path', 'none')}`{save_time} |",
    ]
    lines += ["", "## Attempts", "",
              "| # | started (UTC) | steps | wall time | ranks | commit |", "|---|---|---|---|---|---|"]
    for i, a in enumerate(r["time"]["attempts"], 1):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a["started"])) if a["started"] else "?"
        lines.append(f"| {i} | {started} | {a['start_step']} -> {a['end_step']} | "
                     f"{duration(a['wall_time_s'])} | {a['world_size']} {a['parallelism'] or ''} | "
                     f"`{(a['git_commit'] or '?')[:12]}` |")
    if r["hellaswag"]:
        lines += ["", "HellaSwag styles: " + "; ".join(
            f"{style}: {STYLE_NAMES[style]}" for style in STYLE_NAMES) +
            ". Figures are comparable only within a style; references are for the full 10,042 "
            "validation examples (the GPT-3 paper's own evaluation for GPT-3)."]
    if r.get("core"):
        lines += core_lines(r["core"])
    if r["plot"]:
        lines += ["", "## Plot", "", f"![loss, bits per byte and HellaSwag]({r['plot']})"]
    lines += ["", "## Commands", "", "```bash", "# the run as launched", r["command"]]
    for key, comment in (("sample", "sample from the final checkpoint"),
                         ("export", "export it as a Hugging Face GPT2LMHeadModel folder"),
                         ("resume", "resume from it (raise --max-steps to train further)"),
                         ("hellaswag", "HellaSwag in the harness style, added to this report"),
                         ("core", "CORE on every row of every task (training scores the first "
                                  "--core-max-per-task)")):
        if key in r["commands"]:
            lines += [f"# {comment}", r["commands"][key]]
    lines += ["```", "", "## Versions", "",
              ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v) or "not recorded",
              "", "## Resolved config", "", "```json", json.dumps(cfg, indent=1), "```", ""]
    return "\n".join(lines)
