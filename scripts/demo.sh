#!/usr/bin/env bash
# `make demo`: the whole system, end to end, on a laptop: no GPU, no network, a few minutes.
#
#   1. corpus   the documentation every Python installation ships (pydoc's reference-manual
#               topics + the standard library's docstrings), ~1.3 MB of English text
#   2. shards   python -m pipeline.fineweb (GPT-2 BPE, the same tokenizer as the real run)
#   3. train    torchrun --nproc_per_node=2 train_gpt2.py on CPU (DDP over gloo), through
#               python -m trainer.launch (torchrun with the trainer's exit status): a small
#               GPT-2-vocabulary model, validation loss and samples along the way, a checkpoint
#   4. sample   python sample.py from the checkpoint (KV-cache generation)
#   5. plot     python plot.py (loss against steps and tokens)
# and the run report train_gpt2.py writes at the end (RUN/report.md, python -m trainer.report).
#
# Environment: PYTHON (default .venv/bin/python), DEMO_SOURCE (any `--source` the pipeline takes:
# a .txt/.jsonl/.parquet file or folder, hf:NAME when online; default: the corpus of step 1),
# DEMO_PROMPT (default "The Python interpreter"), DEMO_STEPS (default 300), DEMO_NPROC (default 2),
# DEMO_DATA (default data/demo), DEMO_RUN (default runs/demo). Each run starts afresh: it empties
# DEMO_DATA and DEMO_RUN (only folders an earlier demo made, marked by a .made-by-demo file).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
STEPS=${DEMO_STEPS:-300}
NPROC=${DEMO_NPROC:-2}
DATA=${DEMO_DATA:-data/demo}
RUN=${DEMO_RUN:-runs/demo}
PROMPT=${DEMO_PROMPT:-The Python interpreter}
CORPUS=${DATA}-corpus/python_docs.jsonl

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "demo: $PYTHON not found: run \`make setup\` first (or \`make demo\`, which does it)" >&2
    exit 2
fi
# one thread per process: torchrun would set it too (and print a banner about it); with 2 ranks
# on 2 cores more threads only contend
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
START=$SECONDS
say() { printf '\n==> [%s, %ds] %s\n' "$1" $((SECONDS - START)) "$2"; }

fresh_dir() {  # start afresh, but never delete a folder the demo did not make
    if [[ -e "$1" && ! -e "$1/.made-by-demo" ]]; then
        echo "demo: $1 exists and was not made by the demo; move it or set DEMO_DATA/DEMO_RUN" >&2
        exit 2
    fi
    rm -rf "$1" && mkdir -p "$1" && touch "$1/.made-by-demo"
}
fresh_dir "$DATA"
fresh_dir "$RUN"

# --- 1. corpus --------------------------------------------------------------------------------
if [[ -n "${DEMO_SOURCE:-}" ]]; then
    SOURCE=$DEMO_SOURCE
    say "1/5 corpus" "using DEMO_SOURCE=$SOURCE"
else
    say "1/5 corpus" "collecting the documentation this Python ships (pydoc topics, stdlib docstrings) -> $CORPUS"
    mkdir -p "$(dirname "$CORPUS")"
    "$PYTHON" - "$CORPUS" <<'EOF'
# One document per pydoc topic (the Language Reference's text) and one per top-level stdlib module
# (its docstrings), interleaved so the validation shard (the first one) samples both kinds.
import ast, json, sys, sysconfig
from pathlib import Path
from pydoc_data.topics import topics

reference = [text for _, text in sorted(topics.items())]
modules = []
for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        continue
    docs = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(
        node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    text = "\n\n".join(d for d in docs if d and len(d) > 40)
    if text:
        modules.append(f"{path.stem}\n\n{text}")
out = Path(sys.argv[1])
chars = 0
with open(out, "w", encoding="utf-8") as f:
    for i in range(max(len(reference), len(modules))):
        for docs in (reference, modules):
            if i < len(docs):
                f.write(json.dumps({"text": docs[i]}) + "\n")
                chars += len(docs[i])
print(f"{len(reference)} reference topics + {len(modules)} module docstrings: {chars:,} characters")
EOF
    SOURCE=$CORPUS
fi

# --- 2. shards --------------------------------------------------------------------------------
say "2/5 shards" "python -m pipeline.fineweb --source $SOURCE --out $DATA --prefix demo --shard-tokens 50000  (GPT-2 BPE)"
LIMIT=()
[[ -n "${DEMO_SOURCE:-}" ]] && LIMIT=(--max-tokens 2000000)  # the demo trains on ~300k tokens
"$PYTHON" -m pipeline.fineweb --source "$SOURCE" --out "$DATA" --prefix demo \
    --shard-tokens 50000 --workers "$NPROC" "${LIMIT[@]}"
INFO=$("$PYTHON" -m shards info "$DATA")
echo "$INFO" | grep -E '^(tokenizer|format|val|train):' 

# --- 3. train ---------------------------------------------------------------------------------
# 4 layers, 128 wide, GPT-2's 50,304-token vocabulary (whose output layer is most of the cost on
# a CPU): 6.9M parameters. 2 ranks x 4 sequences x 64 tokens = 512 tokens per step, ~0.3 s.
TRAIN_FLAGS=(--preset cpu-smoke --data "$DATA" --out-dir "$RUN" --resume never --device cpu
    --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --seq-len 64
    --micro-batch-size 4 --total-batch-size $((NPROC * 4 * 64))
    --max-steps "$STEPS" --warmup-steps 20 --lr 1.5e-3 --min-lr 1.5e-4 --shuffle true
    --eval-every 100 --val-tokens 16384 --num-samples 1 --sample-tokens 24
    --sample-prompt "$PROMPT" --checkpoint-every 0 --hellaswag-every 0)
LAUNCH=(python -m trainer.launch --standalone --nproc_per_node="$NPROC" train_gpt2.py)
say "3/5 train" "$(printf '%q ' "${LAUNCH[@]}" "${TRAIN_FLAGS[@]}")"
"$PYTHON" "${LAUNCH[@]:1}" "${TRAIN_FLAGS[@]}" 2>&1 | grep -v -E '^ *"[a-z_0-9]+": |^[{}]$' \
    | awk -v every=$((STEPS / 10 > 0 ? STEPS / 10 : 1)) \
        '!/^step +[0-9]+ \| loss/ { print; next } { split($0, f, " "); if (f[2] % every == 0) print }'
CKPT=$(ls "$RUN"/ckpt_*.pt | tail -1)
VAL=$("$PYTHON" - "$RUN/log.jsonl" <<'PY'
import json, sys
vals = [r for r in map(json.loads, open(sys.argv[1])) if "val_loss" in r]
first, last = vals[0], vals[-1]
print(f"{first['val_loss']:.3f} at step {first['step']} -> {last['val_loss']:.3f} at step {last['step']}")
PY
)

# --- 4. sample --------------------------------------------------------------------------------
say "4/5 sample" "$(printf '%q ' python sample.py --checkpoint "$CKPT" --prompt "$PROMPT" --num-samples 2 --max-new-tokens 48)"
"$PYTHON" sample.py --checkpoint "$CKPT" --prompt "$PROMPT" --num-samples 2 \
    --max-new-tokens 48 --device cpu

# --- 5. plot ----------------------------------------------------------------------------------
say "5/5 plot" "python plot.py $RUN -o $RUN/plot.png"
"$PYTHON" plot.py "$RUN" -o "$RUN/plot.png"

cat <<EOF

demo finished in $((SECONDS - START)) s. Validation loss: $VAL.
  shards:     $DATA/  (python -m shards info $DATA)
  log:        $RUN/log.jsonl
  checkpoint: $CKPT
  plot:       $RUN/plot.png
  report:     $RUN/report.md  (written by train_gpt2.py at the end; python -m trainer.report $RUN)
The real thing, GPT-2 124M on FineWeb-Edu (10B tokens) on GPUs:
  python -m pipeline.fineweb                          # -> data/edu_fineweb10B (~100 shards)
  python -m trainer.launch --standalone --nproc_per_node=8 train_gpt2.py   # torchrun, with its exit status
  sbatch slurm/train.sbatch                           # the same on a Slurm cluster (multi-node)
EOF
