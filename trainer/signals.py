"""Stopping a run gracefully: the loop finishes its step, checkpoints and exits with status 3.

A stop is asked for by SIGUSR1 (Slurm's pre-emption warning), SIGTERM, SIGINT (Ctrl-C), or by a
file RUN/STOP (`touch RUN/STOP`). The file is the fallback where a signal cannot reach the
workers: torchrun starts them in sessions of their own, and Slurm sites that track processes by
process group (proctrack/pgid) never deliver `scancel --signal=USR1 JOB.0` to them; the batch
script touches RUN/STOP as well. The loop reads `requested()` every step and all ranks agree
through one all-reduce, so none is left waiting in a collective.
"""

import signal
from pathlib import Path


class StopRequest:
    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop_file):
        self.stop_file = Path(stop_file)
        self.reason = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        self.reason = self.reason or signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT):
            # a second TERM/INT acts at once: a rank stuck in a collective with a crashed peer
            # must not hold its GPUs until the process group times out
            signal.signal(signum, signal.SIG_DFL)

    def requested(self):
        """Whether this rank was asked to stop (a signal, or RUN/STOP exists)."""
        if self.reason is None and self.stop_file.exists():
            self.reason = f"{self.stop_file.name} file"
        return self.reason is not None

    def acknowledge(self):
        """The stop was carried out (checkpoint written): remove RUN/STOP so that the same
        command, run again, resumes instead of stopping at once."""
        self.stop_file.unlink(missing_ok=True)

    def restore(self):
        """Give the signals back to their former handlers (train_gpt2.main may run in-process)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
