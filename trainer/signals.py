"""Stopping a run gracefully: the loop finishes its step, or ends an evaluation early, checkpoints
and exits with status 3.

A stop is asked for by SIGUSR1 (Slurm's pre-emption warning), SIGTERM, SIGINT (Ctrl-C), or by a
file RUN/STOP (`touch RUN/STOP`). The file is the fallback where a signal cannot reach the
workers: torchrun starts them in sessions of their own, and Slurm sites that track processes by
process group (proctrack/pgid) never deliver `scancel --signal=USR1 JOB.0` to them; the batch
script touches RUN/STOP as well. The loop reads `requested()` every step and all ranks agree
through one all-reduce, so none is left waiting in a collective. Evaluations (validation, samples,
HellaSwag, CORE: minutes at GPT-2 scale) poll a StopPoll every few batches, at the same
iterations on every rank, and end early together.

One request often arrives as several signals, and none of them may end the process before its
checkpoint is written:
- a `scancel` (or a preemption) signals every process of the step, and torchrun passes its own
  SIGTERM on to its workers: each rank gets SIGTERM twice, a fraction of a second apart;
- a preemption with GraceTime sends SIGTERM at once and again when the grace time ends, and only
  then allows KillWait seconds before SIGKILL.
So a stop that a scheduler or launcher started (SIGTERM, SIGUSR1) is never hurried by another
SIGTERM: the machinery that sends them follows up with SIGKILL when it means "now" (Slurm after
KillWait, torchrun after its --shutdown-timeout). Only a person at a terminal asks for "now"
with a signal: a Ctrl-C more than SAME_REQUEST_S seconds after the first signal ends the process
at once, and so does a SIGTERM after a first Ctrl-C, since torchrun passes a person's second
Ctrl-C on to its workers as SIGTERM. (Python runs a handler between bytecodes: a rank blocked
inside a collective hears nothing until it returns; its launcher's SIGKILL or
--dist-timeout-min ends it.)
"""

import os
import signal
import time
from pathlib import Path

import torch


class StopRequest:
    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    # Signals this close to the first are one request: torchrun (polling every 0.1 s) and srun
    # pass a Ctrl-C on within a second, a few seconds on a loaded node; a person who means "now"
    # presses again after seeing the step not end for some seconds.
    SAME_REQUEST_S = 5.0

    def __init__(self, stop_file, announce=False):
        self.stop_file = Path(stop_file)
        self.announce = announce  # one process (rank 0) says what a signal started
        self.reason = None
        self.first_signal_at, self.first_signal = None, None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.first_signal_at is None:
            self.first_signal_at, self.first_signal = time.monotonic(), signum
            self.reason = self.reason or signal.Signals(signum).name
            if self.announce:  # os.write: a print() interrupted mid-print would raise
                now = (f" (Ctrl-C again after {self.SAME_REQUEST_S:.0f} s ends the process at once, "
                       f"without a checkpoint)" if signum == signal.SIGINT else "")
                os.write(2, f"{self.reason}: finishing this step (an evaluation ends early), then a "
                            f"checkpoint and exit 3{now}\n".encode())
        elif (signal.SIGINT in (signum, self.first_signal) and signum != signal.SIGUSR1
              and time.monotonic() - self.first_signal_at > self.SAME_REQUEST_S):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # ends the process as the signal does, skipping clean-up

    def requested(self):
        """Whether this rank was asked to stop (a signal, or RUN/STOP exists)."""
        if self.reason is None and self.stop_file.exists():
            self.reason = f"{self.stop_file.name} file"
        return self.reason is not None

    def seconds_since_signal(self):
        """Seconds since the first stop signal (None without one): the margin a launcher's kill
        deadline (KillWait, torchrun's --shutdown-timeout) must leave for the stop checkpoint."""
        return None if self.first_signal_at is None else time.monotonic() - self.first_signal_at

    def acknowledge(self):
        """The stop was carried out (checkpoint written): remove RUN/STOP so that the same
        command, run again, resumes instead of stopping at once."""
        self.stop_file.unlink(missing_ok=True)

    def restore(self):
        """Give the signals back to their former handlers (train_gpt2.main may run in-process)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class StopPoll:
    """`should_stop` for the evaluation loops: every rank calls it at the same iterations, and every
    `every`-th call (the first included) all ranks agree through one all-reduce whether any was
    asked to stop; once they have, it stays True. `vote()` agrees at once."""

    def __init__(self, stop, runtime, every=4):
        self.stop, self.runtime, self.every = stop, runtime, every
        self.calls, self.agreed = 0, False

    def __call__(self):
        self.calls += 1
        if self.agreed or (self.calls - 1) % self.every:
            return self.agreed
        return self.vote()

    def vote(self):
        flag = torch.tensor(float(self.stop.requested()), device=self.runtime.device)
        self.agreed = self.agreed or self.runtime.all_reduce(flag).item() > 0
        return self.agreed

    def requested_here(self):
        """This rank's own request, no collective: for work that one rank does alone (samples)."""
        return self.stop.requested()
