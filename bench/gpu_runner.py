"""Each row of bench/gpu.py under its own time limit: the rows run in a worker process (bench/gpu.py
--worker), one at a time as the parent names them on its stdin; a row still running at its limit
(a hung NCCL collective, a compilation gone wrong) is stopped by killing the worker's process
group, reported as such, and the next rows run in a new worker. Rows that the estimate says no
longer fit in the budget (the rows before them ran long) are skipped with a line saying so.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback

MESSAGE = '{"bench": "gpu'  # the start of the worker's JSON lines; its other output passes through
WORKER_START_LIMIT_S = 300.0  # import torch, CUDA and NCCL start-up, on a cold, busy machine


class Worker:
    """A worker process in its own session (its compile workers die with it when stopped)."""

    def __init__(self, command):
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1, start_new_session=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)  # the worker closed its output: it exited

    def message(self, limit_s):
        """The worker's next JSON message, None when it exited first; TimeoutError past limit_s."""
        deadline = time.monotonic() + limit_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError from None
            if line is None:
                return None
            if line.startswith(MESSAGE):
                return json.loads(line)
            sys.stdout.write(line)

    def run(self, name, limit_s):
        """The row's JSON message; None when the worker exited; TimeoutError past limit_s."""
        try:
            self.process.stdin.write(name + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it exited after its last row
            return None
        return self.message(limit_s)

    def stop(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self):
        """Let it finish (it destroys its process group), or stop it."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.stop()
        try:  # what it printed last (a compile worker it left may hold the pipe open)
            while (line := self.lines.get(timeout=5)) is not None:
                sys.stdout.write(line)
        except queue.Empty:
            pass


def start_worker(command):
    """A Worker that said it is ready, or (None, why not)."""
    worker = Worker(command)
    try:
        ready = worker.message(WORKER_START_LIMIT_S)
    except TimeoutError:
        worker.stop()
        return None, f"its worker did not start within {WORKER_START_LIMIT_S:.0f} s"
    if ready is None:
        return None, f"its worker exited at start-up (status {worker.process.wait()})"
    return worker, None


def run_rows(plan, command, budget_s):
    """plan: [(row name, estimated seconds, limit in seconds, why it is skipped or None)] in
    order; each row's dict is printed as a JSON line as it ends; returns them all."""
    rows, start, worker = [], time.monotonic(), None
    try:
        for name, estimate, limit, skipped in plan:
            row = {"bench": "gpu", "row": name, "estimate_s": round(estimate, 1)}
            t0 = time.monotonic()
            left = budget_s - (t0 - start)
            if not skipped and estimate > left:  # the rows before it ran longer than estimated
                skipped = f"estimated {estimate:.0f} s, {max(left, 0):.0f} s of the budget left"
            if skipped:
                row["skipped"] = skipped
            else:
                if worker is None:  # its start is not the row's time
                    worker, why_not = start_worker(command)
                    row.update({"error": why_not} if why_not else {})
                    row["worker_start_s"], t0 = round(time.monotonic() - t0, 3), time.monotonic()
                if worker is not None:
                    worker, outcome = run_one(worker, name, limit)
                    row.update(outcome)
            row["seconds"] = round(time.monotonic() - t0, 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    except BaseException:  # Ctrl-C above all: the worker, in a session of its own, did not get it
        if worker is not None:
            worker.stop()
            worker = None
        raise
    finally:
        if worker is not None:
            worker.close()
    return rows


def run_one(worker, name, limit):
    """(the worker, or None when it is gone; the row's figures or its error)."""
    try:
        reply = worker.run(name, limit)
    except TimeoutError:
        worker.stop()
        return None, {"error": f"stopped: still running after its {limit:.0f} s limit (a hung "
                               f"collective?); the next rows run in a new process"}
    if reply is None:
        return None, {"error": f"its worker died (exit status {worker.process.wait()})"}
    return worker, {k: v for k, v in reply.items() if k not in ("bench", "row")}


def serve(rows_by_name, after_each):
    """The worker's side: say ready, then run each row named on stdin, answering with its JSON
    line. A row's failure (an out-of-memory, anything) is its "error"; after_each() frees
    what it left."""
    print(json.dumps({"bench": "gpu-worker", "ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        function, args = rows_by_name[name]
        row = {"bench": "gpu", "row": name}
        try:
            row.update(function(*args))
        except Exception as e:
            traceback.print_exc()
            lines = str(e).strip().splitlines() or [""]
            row["error"] = f"{type(e).__name__}: {lines[0][:300]}"
        after_each()
        print(json.dumps(row), flush=True)
