"""CORE: the DCLM paper's 22 in-context tasks, centered accuracy averaged, computed as nanochat
computes it (nanochat/core_eval.py, scripts/base_eval.py), so its numbers compare with nanochat's.

The bundle (nanochat's eval_bundle.zip, `python core_eval.py --download`) holds core.yaml (each
task's file, type, shots and continuation delimiter), eval_meta_data.csv (random baselines, in
percent) and eval_data/<category>/<task>.jsonl. Per task:

- rows shuffled with random.Random(1337), then cut to max_per_task;
- each row's few-shot examples drawn from the other kept rows with random.Random(1234 + index),
  each rendered with its answer and followed by a blank line, then the row itself;
- every sequence starts with <|endoftext|> (GPT-2's BOS) and keeps its last `context` tokens;
- multiple_choice (one prompt per choice) and schema (one per context option, the same
  continuation) pick the lowest mean loss over the continuation tokens; language_modeling counts
  only when greedy decoding reproduces every continuation token;
- centered = (accuracy - b) / (1 - b), b the random baseline / 100; CORE = the mean over tasks.

A task whose file is absent, or that core.yaml does not list, is named and left out: CORE is then
over the tasks present, and every CORE figure says over how many of the 22.
"""

import csv
import json
import random
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from evaluation.scoring import (Logits, RowScores, check_gpt2_vocab, continuation_fits, crop_left,
                                max_over_ranks, rank_and_world, score_rows, sum_over_ranks)
from models.gpt2 import unwrap
from pipeline.tokenizer import GPT2_VOCAB_SIZE

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat's
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "data" / "eval_bundle"
SHUFFLE_SEED, FEWSHOT_SEED = 1337, 1234
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
ROW_FIELDS = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
              "language_modeling": ("context", "continuation")}
# CORE's 22 tasks, in nanochat's core.yaml order
CORE_TASKS = ("hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa",
              "commonsense_qa", "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande",
              "bigbench_dyck_languages", "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators",
              "bigbench_repeat_copy_logic", "squad", "coqa", "boolq", "bigbench_language_identification")
# OpenAI GPT-2's CORE over all 22 tasks, as nanochat reports it (dev/estimate_gpt3_core.ipynb,
# from the bundle's openai-community-gpt2*.csv; 1.5B: 0.256525 in its README and LEADERBOARD)
GPT2_CORE = {"gpt2": 0.1139, "gpt2-medium": 0.1849, "gpt2-large": 0.2146, "gpt2-xl": 0.2565}
GPT2_RESULTS = {"gpt2": "openai-community-gpt2.csv", "gpt2-medium": "openai-community-gpt2-medium.csv",
                "gpt2-large": "openai-community-gpt2-large.csv", "gpt2-xl": "openai-community-gpt2-xl.csv"}
GPT2_LABELS = {"gpt2": "124M", "gpt2-medium": "350M", "gpt2-large": "774M", "gpt2-xl": "1558M"}


class CoreUnavailable(RuntimeError):
    """The bundle cannot be read (absent, or a file malformed); the message is one line saying
    what to do."""


class Task(NamedTuple):
    label: str
    path: Path  # its jsonl
    task_type: str  # one of TASK_TYPES
    num_fewshot: int
    delimiter: str  # between a query (or context) and its continuation
    baseline: float  # random-guess accuracy, 0..1


class Rendered(NamedTuple):
    tokens: list  # one row of token ids per choice (language_modeling: one row)
    mask: list  # per row, 1 on the continuation tokens
    gold: int  # index of the right choice (language_modeling: 0)


# -----------------------------------------------------------------------------------------
# The bundle


def load_tasks(bundle=DEFAULT_BUNDLE):
    """(tasks whose file is present, in core.yaml's order; labels of the absent: core.yaml's tasks
    whose file is absent, then CORE's tasks that core.yaml does not list)."""
    import yaml

    bundle = Path(bundle)
    config, meta = bundle / "core.yaml", bundle / "eval_meta_data.csv"
    for path in (config, meta):
        if not path.is_file():
            raise CoreUnavailable(f"CORE bundle: {path} not found; fetch the bundle with "
                                  f"`python core_eval.py --download` where there is internet, or pass --bundle DIR")
    try:
        with open(meta, encoding="utf-8", newline="") as f:
            baselines = {row["Eval Task"]: float(row["Random baseline"]) / 100 for row in csv.DictReader(f)}
        entries = yaml.safe_load(config.read_text(encoding="utf-8"))["icl_tasks"]
        tasks = [Task(e["label"], bundle / "eval_data" / e["dataset_uri"], e["icl_task_type"],
                      int(e["num_fewshot"][0]), e.get("continuation_delimiter", " "),
                      baselines[e["label"]]) for e in entries]
    except (KeyError, TypeError, ValueError, IndexError, yaml.YAMLError) as e:
        raise CoreUnavailable(f"CORE bundle {bundle}: core.yaml or eval_meta_data.csv malformed "
                              f"({type(e).__name__}: {e}); fetch it again with `python core_eval.py --download`") from None
    for task in tasks:
        if task.task_type not in TASK_TYPES:
            raise CoreUnavailable(f"{config}: task {task.label} has type {task.task_type!r}, not one of "
                                  f"{', '.join(TASK_TYPES)}")
    present = [t for t in tasks if t.path.is_file()]
    if not present:
        raise CoreUnavailable(f"CORE bundle {bundle}: none of the {len(tasks)} task files of core.yaml is under "
                              f"{bundle / 'eval_data'}; fetch the bundle with `python core_eval.py --download`")
    listed = {t.label for t in tasks}
    return present, [t.label for t in tasks if not t.path.is_file()] + [x for x in CORE_TASKS if x not in listed]


def load_rows(task, max_per_task=None):
    """The task's rows, shuffled with Random(1337) and cut to max_per_task (None: all), as nanochat
    subsamples them. Its shots come from the kept rows, so there must be more than num_fewshot."""
    rows = []
    with open(task.path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line.strip())
                ok = all(key in row for key in ROW_FIELDS[task.task_type])
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise CoreUnavailable(f"{task.path}:{lineno}: not a {task.task_type} row (need "
                                      f"{', '.join(ROW_FIELDS[task.task_type])}); fetch the bundle again "
                                      f"with `python core_eval.py --download`")
            rows.append(row)
    random.Random(SHUFFLE_SEED).shuffle(rows)
    if max_per_task:
        rows = rows[:max_per_task]
    if len(rows) <= task.num_fewshot:
        raise CoreUnavailable(f"CORE task {task.label}: {len(rows)} rows kept, but its {task.num_fewshot}-shot "
                              f"prompts draw their shots from the other kept rows; pass --max-per-task "
                              f"{task.num_fewshot + 1} or more")
    return rows


def fewshot_rows(rows, index, k):
    """The k shots of rows[index]: a sample of the other rows, seeded by the index."""
    if k == 0:
        return []
    others = [i for i in range(len(rows)) if i != index]
    return [rows[i] for i in random.Random(FEWSHOT_SEED + index).sample(others, k)]


# -----------------------------------------------------------------------------------------
# Rendering


def render_prompts(task_type, item, delimiter, shots):
    """The prompt texts of one row, as nanochat's templates render them: each shot with its
    answer and a blank line, then the row. multiple_choice: one prompt per choice; schema: one per
    context option; language_modeling: [prompt without its continuation (stripped), with it]."""
    if task_type == "multiple_choice":
        prefix = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{prefix}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots)
        return [f"{prefix}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    # contexts are trimmed (some carry trailing whitespace); the bare prompt is stripped so that
    # its tokens are a prefix of the full prompt's
    prefix = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in shots)
    question = f"{prefix}{item['context'].strip()}{delimiter}"
    return [question.strip(), question + item["continuation"]]


def common_length(rows, from_end=False):
    """Length of the prefix (or suffix) that all token rows share."""
    n = 0
    for tokens in zip(*(reversed(r) if from_end else r for r in rows)):
        if any(t != tokens[0] for t in tokens):
            break
        n += 1
    return n


def render_example(task, rows, index, enc):
    """The token rows of rows[index] and where each continuation starts (see Rendered)."""
    item = rows[index]
    prompts = render_prompts(task.task_type, item, task.delimiter, fewshot_rows(rows, index, task.num_fewshot))
    tokens = [[enc.eot_token] + enc.encode_ordinary(p) for p in prompts]
    if task.task_type == "multiple_choice":  # the choices differ after a shared context
        starts = [common_length(tokens)] * len(tokens)
    elif task.task_type == "schema":  # the contexts differ before a shared continuation
        suffix = common_length(tokens, from_end=True)
        starts = [len(t) - suffix for t in tokens]
    else:
        without, tokens = tokens[0], tokens[1:]
        if tokens[0][: len(without)] != without or len(without) >= len(tokens[0]):
            raise ValueError(f"CORE task {task.label}, row {index}: the prompt without its continuation "
                             f"does not tokenize as a prefix of the prompt with it")
        starts = [len(without)]
    mask = [[0] * s + [1] * (len(t) - s) for t, s in zip(tokens, starts)]
    return Rendered(tokens, mask, int(item.get("gold", 0)))


# -----------------------------------------------------------------------------------------
# Scoring


class Prepared(NamedTuple):
    task: Task
    examples: list  # this rank's share of the rows that fit the context, rendered and cropped (Rendered)
    left_out: int  # this rank's rows whose continuation does not fit the context


def prepare(tasks, enc, context, max_per_task=None, rank=None, world_size=None):
    """Every task's rows, shots and tokens, built once per run (training scores them again every
    --core-every steps): rank r takes rows r, r + world_size, ... Rows are cropped to their last
    `context` tokens as nanochat crops them; a row whose continuation does not fit is left out.
    Tokens are kept as int32 arrays: 4 bytes a token, where a Python list takes ~36."""
    rank, world_size = rank_and_world(rank, world_size)
    prepared = []
    for task in tasks:
        rows = load_rows(task, max_per_task)
        examples, left_out = [], 0
        for index in range(rank, len(rows), world_size):
            rendered = render_example(task, rows, index, enc)
            if not all(continuation_fits(m, context) for m in rendered.mask):
                left_out += 1
                continue
            tokens, mask = crop_left(rendered.tokens, rendered.mask, context)
            examples.append(rendered._replace(tokens=[np.array(t, dtype=np.int32) for t in tokens],
                                              mask=[np.array(m, dtype=np.int8) for m in mask]))
        prepared.append(Prepared(task, examples, left_out))
    return prepared


def is_correct(task, rendered, scores):
    """Whether the model got one rendered row right, from the RowScores of its rows."""
    if task.task_type == "language_modeling":
        return bool(scores.greedy[0])
    return lowest_mean_loss((-scores.loglik / scores.n_tokens).tolist()) == rendered.gold


def lowest_mean_loss(mean_losses):
    """The choice nanochat picks, `mean_losses.index(min(mean_losses))`, NaN included: a choice
    whose tokens are a prefix of another's is all shared context, an empty continuation with a
    NaN mean loss. Nothing compares below NaN, so min() returns it only from first place: an
    empty choice 0 wins, an empty choice elsewhere is passed over. Of equal losses, the first."""
    return mean_losses.index(min(mean_losses))


def score_example(model_fn, task, rendered, enc, context, device="cpu", autocast_dtype=None):
    """Whether the model gets one rendered row right: its rows (one per choice) in one forward,
    each cropped to its last `context` tokens as nanochat crops them."""
    tokens, mask = crop_left(rendered.tokens, rendered.mask, context)
    return is_correct(task, rendered, score_rows(model_fn, tokens, mask, device, enc.n_vocab, autocast_dtype))


def score_task(model_fn, prepared, rounds, device, autocast_dtype, batch_size, lockstep, should_stop):
    """(correct, scored, left out) of this rank's share of a task, or None when `should_stop()`
    said so: `batch_size` examples (all their rows, right-padded) per forward, in `rounds` rounds,
    the same number on every rank (`should_stop` may run a collective). `lockstep`: a rank whose
    share is done makes a forward anyway (an FSDP model gathers its weights from all ranks in each)."""
    counts = torch.tensor([0, 0, prepared.left_out])
    for k in range(rounds):
        if should_stop is not None and should_stop():
            return None
        batch = prepared.examples[k * batch_size : (k + 1) * batch_size]
        if not batch:
            if lockstep:  # its result is not used
                score_rows(model_fn, [[0, 0]], [[0, 1]], device, GPT2_VOCAB_SIZE, autocast_dtype)
            continue
        scores = score_rows(model_fn, [row for r in batch for row in r.tokens], [m for r in batch for m in r.mask],
                            device, GPT2_VOCAB_SIZE, autocast_dtype)
        first = 0
        for rendered in batch:
            rows = slice(first, first + len(rendered.tokens))
            first = rows.stop
            counts += torch.tensor([is_correct(prepared.task, rendered, RowScores(*(t[rows] for t in scores))), 1, 0])
    return counts


def centered(accuracy, baseline):
    return (accuracy - baseline) / (1 - baseline)


def evaluate(model_fn, prepared, device="cpu", world_size=None, autocast_dtype=None, batch_size=8,
             lockstep=False, report=None, should_stop=None):
    """CORE over the prepared tasks (see prepare; every rank calls this with its own share): {"tasks":
    {label: {accuracy, centered, n, left_out}}, "core", "examples_per_second"}, or None when
    `should_stop()` (polled once per batch, at the same rounds on every rank) asked to stop early.
    `report(line)` is called after each task, on every rank."""
    _, world_size = rank_and_world(world_size=world_size)
    batches = torch.tensor([-(-len(p.examples) // batch_size) for p in prepared])
    rounds = max_over_ranks(batches, device, world_size).tolist()  # one collective for all tasks
    results, start, scored = {}, time.time(), 0
    for p, task_rounds in zip(prepared, rounds):
        task, task_start = p.task, time.time()
        counts = score_task(model_fn, p, task_rounds, device, autocast_dtype, batch_size, lockstep, should_stop)
        if counts is None:
            return None
        correct, n, left_out = sum_over_ranks(counts, device, world_size).tolist()
        accuracy = correct / max(n, 1)
        results[task.label] = {"accuracy": accuracy, "centered": centered(accuracy, task.baseline), "n": n,
                               "left_out": left_out}
        scored += n
        if report:
            skipped = f", {left_out} left out (continuation longer than the context)" if left_out else ""
            report(f"{task.label:<33} {task.num_fewshot:>2}-shot {task.task_type:<17} accuracy {accuracy:.4f} "
                   f"centered {results[task.label]['centered']:+.4f} ({n} examples{skipped}, "
                   f"{time.time() - task_start:.1f}s)")
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"tasks": results, "core": core, "examples_per_second": scored / max(time.time() - start, 1e-9)}


def evaluate_gpt(model, prepared, *, device="cpu", autocast_dtype=None, lockstep=False, should_stop=None):
    """CORE for our GPT during training over `prepared` (prepare(), once per run, context = the
    model's block_size): every rank must call it (the counts are summed across ranks). The plain
    module is used, in eval mode, and its training mode is restored afterwards."""
    raw = unwrap(model)
    check_gpt2_vocab(raw, "evaluate_gpt", "CORE")
    was_training = raw.training
    raw.eval()
    try:
        return evaluate(Logits(raw), prepared, device, autocast_dtype=autocast_dtype, lockstep=lockstep,
                        should_stop=should_stop)
    finally:
        raw.train(was_training)


# -----------------------------------------------------------------------------------------
# OpenAI GPT-2's results, to compare with


def gpt2_name_for(n_layer, n_embd):
    """The OpenAI GPT-2 of this shape ("gpt2", ...), or None."""
    from models.gpt2 import MODEL_CONFIGS

    for name, shape in MODEL_CONFIGS.items():
        if name in GPT2_LABELS and (shape.n_layer, shape.n_embd) == (n_layer, n_embd):
            return name
    return None


def gpt2_results(bundle, name="gpt2"):
    """{label: (accuracy, centered)} of OpenAI GPT-2 `name` as nanochat scored it, from the
    bundle's openai-community-gpt2*.csv ("Task, Accuracy, Centered" rows, then a CORE row);
    {} when the bundle lacks that file."""
    path = Path(bundle) / GPT2_RESULTS[name]
    if not path.is_file():
        return {}
    results = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        label, accuracy, centered_score = (field.strip() for field in line.split(","))
        if label != "CORE":
            results[label] = (float(accuracy), float(centered_score))
    return results


def gpt2_reference(labels, bundle, name="gpt2"):
    """OpenAI GPT-2 `name` on the tasks `labels`, to print beside a result: {"model", "tasks":
    {label: centered}, "core": their mean (None without the bundle's csv or one of the tasks),
    "core_all": its CORE over all 22 tasks}."""
    per_task = gpt2_results(bundle, name)
    tasks = {label: per_task[label][1] for label in labels if label in per_task}
    core = sum(tasks.values()) / len(tasks) if labels and len(tasks) == len(labels) else None
    return {"model": f"OpenAI GPT-2 {GPT2_LABELS[name]}", "tasks": tasks, "core": core,
            "core_all": GPT2_CORE[name]}


def core_line(result, missing, reference):
    """'CORE over 22 of 22 tasks 0.1234 (OpenAI GPT-2 124M: 0.1139)'; over fewer tasks, GPT-2's over
    the same tasks beside it, then its CORE over all of them."""
    n_tasks = len(result["tasks"]) + len(missing)
    over = f"CORE over {len(result['tasks'])} of {n_tasks} tasks {result['core']:.4f}"
    if not missing:
        return f"{over} ({reference['model']}: {reference['core_all']:.4f})"
    same = f"{reference['core']:.4f}" if reference["core"] is not None else "unknown"
    return f"{over} ({reference['model']} over the same tasks: {same}; over all {n_tasks}: {reference['core_all']:.4f})"
