"""torchrun with the project's exit status: `python -m trainer.launch` takes torchrun's flags.

    python -m trainer.launch --standalone --nproc_per_node=8 train_gpt2.py --preset gpt2-350m

torchrun turns any worker's non-zero exit into its own status 1 under a 30-line traceback, and
when it is itself sent SIGTERM (a `scancel`) it exits 1 whatever its workers did: a script or a
scheduler cannot tell a stopped run (3: resumable, run the same command) from bad input (2) or a
crash. This runs torchrun in-process (torch.distributed.run: the same flags, the same workers)
and, when they fail, prints the cause they recorded as the last line and exits with their status.

Workers record it through torchrun's own error-file mechanism: torchrun gives each worker a
TORCHELASTIC_ERROR_FILE, and record_exit() writes the one line there (plain torchrun shows it in
its failure table too). A worker that recorded nothing (a crash: its traceback is above) gets a
line naming its rank and status, and that status.
"""

import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def record_exit(line, status):
    """Worker side: leave this exit's one-line cause and status for the launcher (a no-op when
    not started by torchrun)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:  # torchrun's reader takes a string message with a timestamp; it ignores "status"
        Path(path).write_text(json.dumps({"message": line, "timestamp": int(time.time()),
                                          "status": status}))


def recorded_exit(log_dir, earlier_runs):
    """(line, status) of the lowest local rank that recorded its exit in this launch's newest
    attempt, else None; status None where torch's own @record wrote the file (an exception).
    torchrun's layout: LOG_DIR/RUNID_xxxx/attempt_N/LOCAL_RANK/error.json, a RUNID_xxxx folder
    per launch (earlier_runs: those of earlier launches, in a --log-dir given to us)."""
    found = []
    for path in glob.glob(os.path.join(log_dir, "*", "attempt_*", "*", "error.json")):
        run_folder, attempt, local_rank = Path(path).parts[-4:-1]
        if os.path.join(log_dir, run_folder) in earlier_runs:
            continue
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        message = data.get("message")
        if isinstance(message, dict):  # torch's @record: "ExceptionType: text", first line
            message = (message.get("message") or "").strip().split("\n")[0]
        if message:
            found.append((-int(attempt.split("_")[1]), int(local_rank), message.strip(),
                          data.get("status")))
    if not found:
        return None
    _, _, line, status = min(found)
    return line, status


def exit_status(code):
    """A process's exit code as a shell reports it: a signal N (negative code) is 128 + N."""
    return 128 - code if code < 0 else code


def check_train_flags(script, script_args):
    """train_gpt2.py's flags, checked here before any worker starts: a bad one is argparse's one
    line (exit 2) once, not once per rank amid torchrun's output."""
    if os.path.basename(script) == "train_gpt2.py":
        from trainer.config import parse_config

        parse_config(script_args)


def main(argv=None):
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    check_train_flags(args.training_script, args.training_script_args)
    with tempfile.TemporaryDirectory(prefix="launch-") as scratch:
        args.log_dir = args.log_dir or scratch  # where torchrun puts the workers' error files
        earlier_runs = set(glob.glob(os.path.join(args.log_dir, "*")))
        try:
            run(args)
            return 0
        except ChildFailedError as e:
            # the first rank that failed by itself, not one torchrun then stopped (a signal)
            rank, failure = min(e.failures.items(), key=lambda kv: (kv[1].exitcode < 0, kv[0]))
            status = exit_status(failure.exitcode)
            killed = f" ({failure.signal_name()})" if failure.exitcode < 0 else ""
            fallback = (f"error: {args.training_script} rank {rank} exited with status {status}"
                        f"{killed}; its output is above", status)
        except SignalException as e:  # torchrun passed the signal on and waited for the workers
            fallback = (f"{e.sigval.name}: the workers ended without recording an exit status",
                        128 + e.sigval)
        recorded = recorded_exit(args.log_dir, earlier_runs)
    if recorded is None:
        line, status = fallback
    else:
        line, status = recorded[0], recorded[1] if recorded[1] is not None else fallback[1]
    print(line, file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
