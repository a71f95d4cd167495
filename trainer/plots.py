"""The figure of training runs: loss against steps and tokens, bits per byte, HellaSwag and CORE.

    runs = [load_run(d) for d in run_dirs]; fig, drawn = make_figure(runs)
    path, drawn = plot(run_dirs, out)           # plot.py's command line; the run report's plot

Reads RUN/log.jsonl written by train_gpt2.py (train lines: step, loss, ...; val lines: step,
val_loss; HellaSwag lines: step, hellaswag_acc_norm) and RUN/config.json (total_batch_size for
the tokens axis; the shard folder, to decide whether OpenAI GPT-2 124M's reference lines apply).

Reference lines: OpenAI GPT-2 124M's validation loss 3.2924 on the FineWeb-Edu val shard (as
measured by build-nanogpt), drawn only for runs on FineWeb-Edu with the GPT-2 tokenizer (a loss
on other text is not comparable); HellaSwag acc_norm of OpenAI's GPT-2 and the GPT-3 paper's
model of the run's size (124M's for other sizes), drawn whenever a run has HellaSwag; CORE of
OpenAI's GPT-2 over the same tasks (logged beside the run's CORE). Validation bits per byte get
their own panel: they compare across tokenizers.
"""

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # no display needed: we only write files
import matplotlib.pyplot as plt  # noqa: E402

from trainer import metrics  # noqa: E402
from trainer.metrics import GPT2_124M_REFERENCE  # noqa: E402
from pipeline.tokenizer import GPT2_VOCAB_SIZE  # noqa: E402

GPT2_124M_VAL_LOSS = GPT2_124M_REFERENCE["val_loss"]
GPT2_124M_HELLASWAG = GPT2_124M_REFERENCE["hellaswag_acc_norm"]


def read_log(path):
    """{"train": [(step, loss)], "val": [(step, val_loss)], "bpb": [(step, val_bpb)],
    "hellaswag": [(step, acc_norm)], "core": [(step, CORE)], "core_tasks": [(step, over how many
    tasks)], "core_gpt2": [(step, GPT-2's CORE)]}.

    The lines a resumed start superseded are left out (metrics.read_log); lines of other kinds
    (samples, ...) are ignored.
    """
    keys = {"train": "loss", "val": "val_loss", "bpb": "val_bpb", "hellaswag": "hellaswag_acc_norm",
            "core": "core", "core_tasks": "core_tasks", "core_gpt2": "core_gpt2"}
    series = {name: {} for name in keys}
    for record in metrics.read_log(path):
        if "step" not in record:
            continue
        for name, key in keys.items():
            if isinstance(record.get(key), (int, float)):
                series[name][int(record["step"])] = float(record[key])
    return {name: sorted(points.items()) for name, points in series.items()}


def is_fineweb_edu_gpt2(config, run_dir):
    """True when the run trained on FineWeb-Edu with the GPT-2 tokenizer (so 3.2924 applies)."""
    data = config.get("data")
    if not data:
        return False
    if config.get("vocab_size", GPT2_VOCAB_SIZE) < GPT2_VOCAB_SIZE:
        return False
    data_dir = Path(data)
    if not data_dir.is_absolute() and not data_dir.exists():
        data_dir = Path(run_dir).parent.parent / data  # run folders usually live in REPO/runs/
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            return False
        return (manifest.get("tokenizer") == "gpt2"
                and "fineweb-edu" in str(manifest.get("source", "")).lower())
    # no manifest (a build-nanogpt / llm.c folder, or the shards are elsewhere): go by the name
    return "edu_fineweb" in str(data).lower() or "fineweb-edu" in str(data).lower()


def load_run(run_dir):
    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    if not log.exists():
        raise ValueError(f"{log}: not found; is {run_dir} a run folder written by train_gpt2.py?")
    config = {}
    if (run_dir / "config.json").exists():
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except ValueError:
            print(f"warning: {run_dir / 'config.json'} is unreadable; no tokens axis", file=sys.stderr)
    series = read_log(log)
    if not any(series.values()):
        raise ValueError(f"{log}: no train, val or HellaSwag lines yet")
    return {"name": run_dir.resolve().name, "dir": str(run_dir), "config": config,
            "tokens_per_step": config.get("total_batch_size"),
            "fineweb_edu": is_fineweb_edu_gpt2(config, run_dir), **series}


def hellaswag_references(config):
    """{label: acc_norm} for the run's model size (OpenAI GPT-2, GPT-3 paper), or OpenAI GPT-2
    124M's for a model of no GPT-2 size."""
    from evaluation import hellaswag

    refs = hellaswag.references_for(config.get("n_layer", 12), config.get("n_embd", 768))
    return dict(refs or [("OpenAI GPT-2 124M", GPT2_124M_HELLASWAG)])


def human(x, _pos=None):
    """Tick label for a token count: 500M, 1.5B."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def smooth(values, alpha):
    """Exponential moving average, bias-corrected like Adam (so the start is not pulled to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** i))
    return out


def loss_ylim(runs):
    """Every train and val loss inside the panel, the step-0 loss and the lowest ones included,
    as the bits per byte panel shows all its points; and GPT-2 124M's val loss where drawn."""
    losses = [v for run in runs for _, v in run["train"] + run["val"]]
    if not losses:
        return None
    low, high = min(losses), max(losses)
    if any(run["fineweb_edu"] for run in runs):
        low = min(low, GPT2_124M_VAL_LOSS)
    margin = 0.05 * (high - low or 1.0)
    return low - margin, high + margin


def auto_smoothing(n):
    """EMA factor giving a window of ~2% of the points (at least ~10): 0.9 up to 500 points."""
    return 1 - min(0.1, 50 / max(n, 1))


def make_figure(runs, smoothing=None):
    """The figure, plus what was drawn: {axis title: {label: (xs, ys)}} (for tests and scripts)."""
    has_hellaswag = any(run["hellaswag"] for run in runs)
    has_tokens = any(run["tokens_per_step"] for run in runs)
    has_bpb = any(run["bpb"] for run in runs)
    panels = ["loss vs steps"] + (["loss vs tokens"] if has_tokens else []) + \
             (["bits per byte"] if has_bpb else []) + (["HellaSwag"] if has_hellaswag else []) + \
             (["CORE"] if any(run["core"] for run in runs) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    drawn = {title: {} for title in panels}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    many = len(runs) > 1

    def line(title, label, xs, ys, **kw):
        axes[title].plot(xs, ys, label=label, **kw)
        drawn[title][label] = (list(xs), list(ys))

    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        prefix = f"{run['name']}: " if many else ""
        scale = run["tokens_per_step"]
        for title, per in (("loss vs steps", 1), ("loss vs tokens", scale)):
            if title not in axes or not per:
                continue
            if run["train"]:
                steps, losses = zip(*run["train"])
                xs = [s * per for s in steps]
                axes[title].plot(xs, losses, color=color, alpha=0.15, linewidth=0.6)  # raw
                alpha = auto_smoothing(len(losses)) if smoothing is None else smoothing
                line(title, f"{prefix}train", xs, smooth(losses, alpha) if len(losses) > 20
                     else losses, color=color, linewidth=1.5)
            if run["val"]:
                steps, losses = zip(*run["val"])
                line(title, f"{prefix}val", [s * per for s in steps], losses, color=color,
                     linestyle="--", marker="o", markersize=3)
        if run["bpb"]:
            steps, bpb = zip(*run["bpb"])
            line("bits per byte", f"{prefix}val bpb", steps, bpb, color=color, marker="o",
                 markersize=3)
        if run["hellaswag"]:
            steps, accs = zip(*run["hellaswag"])
            line("HellaSwag", f"{prefix}acc_norm", steps, accs, color=color, marker="o",
                 markersize=3)
        if run["core"]:
            steps, cores = zip(*run["core"])
            line("CORE", f"{prefix}CORE over {core_tasks(run)} tasks", steps, cores, color=color, marker="o",
                 markersize=3)

    for title in ("loss vs steps", "loss vs tokens"):
        if title in axes:
            label_loss_axis(axes[title], title, runs, drawn[title])
    if "bits per byte" in axes:
        finish_axis(axes["bits per byte"], "step", "validation bits per byte",
                    "validation bits per byte (tokenizer-independent)")
    if "HellaSwag" in axes:
        label_hellaswag_axis(axes["HellaSwag"], runs, drawn["HellaSwag"])
    if "CORE" in axes:
        label_core_axis(axes["CORE"], runs, drawn["CORE"])
    fig.suptitle(", ".join(run["name"] for run in runs))
    fig.tight_layout()
    return fig, drawn


def finish_axis(ax, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def label_loss_axis(ax, title, runs, drawn):
    """OpenAI GPT-2 124M's val loss where it applies, a shared y range, labels."""
    if any(run["fineweb_edu"] for run in runs):
        ax.axhline(GPT2_124M_VAL_LOSS, color="red", linestyle=":", linewidth=1.2)
        drawn["OpenAI GPT-2 124M val"] = ([], [GPT2_124M_VAL_LOSS])
        ax.plot([], [], color="red", linestyle=":", label=f"OpenAI GPT-2 124M val ({GPT2_124M_VAL_LOSS})")
    ylim = loss_ylim(runs)
    if ylim:
        ax.set_ylim(*ylim)
    if title == "loss vs tokens":
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(human))
        finish_axis(ax, "tokens", "loss (nats/token)", "loss vs tokens seen")
    else:
        finish_axis(ax, "step", "loss (nats/token)", "loss (train smoothed, val dashed)")


def label_hellaswag_axis(ax, runs, drawn):
    """The references of each run's model size (once each), chance, labels."""
    refs = {}
    for run in runs:
        if run["hellaswag"]:
            refs.update(hellaswag_references(run["config"]))
    for (label, acc), style in zip(refs.items(), ("dotted", "dashdot", (0, (5, 2)), (0, (1, 3)))):
        ax.axhline(acc, color="red", linestyle=style, linewidth=1.2, label=f"{label} ({acc})")
        drawn[label] = ([], [acc])
    ax.axhline(0.25, color="gray", linestyle=":", linewidth=1, label="chance (0.25)")
    finish_axis(ax, "step", "acc_norm", "HellaSwag accuracy (acc_norm)")


def core_tasks(run):
    """'20 of 22': over how many of CORE's tasks the run's last CORE was."""
    from evaluation import core

    n = int(run["core_tasks"][-1][1]) if run["core_tasks"] else "?"
    return f"{n} of {len(core.CORE_TASKS)}"


def label_core_axis(ax, runs, drawn):
    """OpenAI GPT-2's CORE over the tasks each run was scored on (once each), labels."""
    from evaluation import core

    refs = {}
    for run in runs:
        if run["core"] and run["core_gpt2"]:
            name = core.gpt2_name_for(run["config"].get("n_layer", 12), run["config"].get("n_embd", 768))
            refs[f"OpenAI GPT-2 {core.GPT2_LABELS[name or 'gpt2']} over the same {core_tasks(run)} tasks"] = \
                run["core_gpt2"][-1][1]
    for (label, value), style in zip(refs.items(), ("dotted", "dashdot", (0, (5, 2)), (0, (1, 3)))):
        ax.axhline(value, color="red", linestyle=style, linewidth=1.2, label=f"{label} ({value:.4f})")
        drawn[label] = ([], [value])
    finish_axis(ax, "step", "CORE (centered accuracy, mean over tasks)", "CORE")


def plot(run_dirs, out=None, smoothing=None):
    """Write the PNG; return (path, drawn series)."""
    runs = [load_run(d) for d in run_dirs]
    if out is None:
        out = Path(run_dirs[0]) / "plot.png" if len(run_dirs) == 1 else Path("plot.png")
    fig, drawn = make_figure(runs, smoothing)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, drawn
