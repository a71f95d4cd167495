"""Plot training runs: loss against steps and tokens, HellaSwag accuracy and CORE.

    python plot.py runs/gpt2-124m                        # writes runs/gpt2-124m/plot.png
    python plot.py runs/a runs/b -o compare.png          # several runs overlaid

The figure is made by trainer/plots.py (what it reads, and when the reference lines are drawn).
"""

import argparse
import sys

from trainer.plots import load_run, plot


def missing_hellaswag(runs):
    """A line for each run without HellaSwag, saying why (the report's reason)."""
    from trainer.report import find_manifest
    from trainer.report_markdown import why_no_hellaswag

    lines = []
    for run in runs:
        if not run["hellaswag"]:
            data = run["config"].get("data")
            tokenizer = ((data and find_manifest(data, run["dir"])) or {}).get("tokenizer")
            lines.append(f"{run['name']}: no HellaSwag panel: not run: "
                         f"{why_no_hellaswag(run['config'], tokenizer)}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python plot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (with log.jsonl)")
    parser.add_argument("-o", "--out", help="PNG to write (default RUN_DIR/plot.png for one run, "
                                            "else plot.png)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="EMA factor for the train loss curve, in [0, 1) (default: a window "
                             "of ~2%% of the steps)")
    args = parser.parse_args(argv)
    if args.smoothing is not None and not 0 <= args.smoothing < 1:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    try:
        out, _ = plot(args.runs, args.out, args.smoothing)
    except (ValueError, OSError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2
    for line in missing_hellaswag([load_run(d) for d in args.runs]):
        print(line)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
