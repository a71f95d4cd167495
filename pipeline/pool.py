"""The tokenizer worker pool: chunks of documents in, their tokens out, in source order.

Ordered: results come back in the order the documents went in, whatever worker finished first,
so the token stream is the same for any number of workers. Bounded: a fixed window of chunks is in
flight, never the whole (streamed, 10B-token) source. Loud: a worker that dies (the kernel's OOM
killer, a segfault) stops the run within a second with one line saying which worker, how it died
and what to do; `multiprocessing.Pool` would quietly replace it and wait forever for its task,
which is why this is a `concurrent.futures.ProcessPoolExecutor` (BrokenProcessPool on a death).
"""

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, TimeoutError
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from pipeline.killpoints import kill_point

# A worker task is a chunk of whole documents, cut at whichever limit comes first: large enough
# that inter-process overhead is noise (~60k tokens for FineWeb-Edu's ~4 KB documents), small
# enough that the chunks in flight are a few MB whatever the source.
CHUNK_DOCS = 64
CHUNK_CHARS = 1 << 20
TASKS_PER_WORKER = 2  # in flight per worker: keeps every worker busy while the main process writes
ORPHAN_CHECK_S = 0.5
DEATH_CHECK_S = 1.0  # how often a wait for a result looks at the workers
SHARED_MACHINE_WORKERS = 8  # default workers outside a Slurm job: a login node is shared


def available_cores():
    """Cores this process may use (a Slurm allocation or taskset), not all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def default_workers():
    """(workers, why): every core of a Slurm job or taskset, which are ours; on a whole machine
    outside a job, which others may share (a login node), half its cores, at most
    SHARED_MACHINE_WORKERS."""
    cores = available_cores()
    if os.environ.get("SLURM_JOB_ID"):
        return cores, f"all {cores} cores of this Slurm job"
    if cores < (os.cpu_count() or cores):
        return cores, f"all {cores} cores this process may use"
    workers = max(1, min(cores // 2, SHARED_MACHINE_WORKERS))
    return workers, (f"half of this machine's {cores} cores, at most {SHARED_MACHINE_WORKERS}: "
                     "outside a Slurm job the machine may be shared")


class WorkerDied(Exception):
    """A tokenizer process ended without finishing its chunk; the message says which and why."""


_worker_tokenizer = None


def _init_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    # The executor stops workers with SIGTERM: a handler inherited from the forking process
    # (a trainer's, say) would leave them alive and the pool's exit hanging
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A run killed outright (kill -9, the OOM killer) cannot stop its workers; they would wait
    # for work forever, holding their memory: each leaves once its parent is gone.
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _exit_when_orphaned(parent):
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(1)


def tokenize_chunk(texts):
    """Token ids of a chunk of documents, concatenated, and the number of tokens of each."""
    kill_point("tokenize")
    tokens, lengths = [], []
    for text in texts:
        ids = _worker_tokenizer.encode_doc(text)
        tokens.extend(ids)
        lengths.append(len(ids))
    return np.array(tokens, dtype=np.uint16), np.array(lengths, dtype=np.int64)


def chunked(documents):
    chunk, chars = [], 0
    for text in documents:
        chunk.append(text)
        chars += len(text)
        if len(chunk) == CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


class _RecordingContext:
    """A multiprocessing context that remembers the processes it starts: the executor's
    BrokenProcessPool does not say which worker died or how, their exit codes do."""

    def __init__(self, base):
        self.base, self.processes = base, []

    def Process(self, *args, **kwargs):  # noqa: N802 (the context API's name)
        process = self.base.Process(*args, **kwargs)
        self.processes.append(process)
        return process

    def __getattr__(self, name):
        return getattr(self.base, name)


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal
        return f"signal {number}"


class TokenizerPool:
    """`workers` processes tokenizing with `tokenizer`; a context manager."""

    def __init__(self, tokenizer, workers):
        # fork: workers inherit the loaded tokenizer at once. They only tokenize, so threads the
        # parent may already run (fsspec's IO loop for hub files) are of no concern to them.
        base = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.context = _RecordingContext(base)
        self.workers = workers
        self.first_dead = None  # the worker whose death _result found, if it found one
        self.executor = ProcessPoolExecutor(workers, mp_context=self.context,
                                            initializer=_init_worker, initargs=(tokenizer,))

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        # on an error, chunks not yet started are dropped rather than tokenized for nothing
        self.executor.shutdown(wait=True, cancel_futures=error is not None)

    def tokenized_chunks(self, documents, first_doc=0):
        """Yield (index of the chunk's first document, tokens, tokens per document) in order.

        A bounded window of tasks, not Executor.map: map submits its whole input at once, which
        for a streamed source means unbounded memory whenever reading outpaces tokenizing.
        """
        pending = deque()
        try:
            for chunk in chunked(documents):
                pending.append((first_doc, self.executor.submit(tokenize_chunk, chunk)))
                first_doc += len(chunk)
                if len(pending) > TASKS_PER_WORKER * self.workers:
                    doc, future = pending.popleft()
                    yield (doc, *self._result(future))
            while pending:
                doc, future = pending.popleft()
                yield (doc, *self._result(future))
        except BrokenProcessPool:  # from submit() or result(), whichever comes first
            raise WorkerDied(self._death()) from None

    def _result(self, future):
        """future.result(), looking at the workers every DEATH_CHECK_S while it waits.

        A worker killed while it sends its result leaves half a message in the result pipe, and
        the executor's reader thread then waits for the rest forever (CPython 3.11's
        ProcessPoolExecutor; seen here about one kill in ten): the pool never breaks and the run
        hangs. So when a worker has died, the others are killed too and the parent's copy of the
        pipe's write end is closed: with no writer left the reader gets EOF and the executor
        breaks the pool as it does for any death (BrokenProcessPool on every future)."""
        while True:
            try:
                return future.result(timeout=DEATH_CHECK_S)
            except TimeoutError:
                dead = [p for p in self.context.processes if p.exitcode is not None]
                if dead:
                    self.first_dead = self.first_dead or dead[0]  # before the others are killed
                    for process in self.context.processes:
                        if process.exitcode is None:
                            process.kill()
                    self.executor._result_queue._writer.close()  # no public way to unblock it

    def _death(self):
        """One line: which worker died, how, the likely cause and what to do."""
        self.executor.shutdown(wait=True)  # the others are stopped (SIGTERM) and every one reaped
        ended = [(i, p) for i, p in enumerate(self.context.processes, 1) if p.exitcode]
        # the first to die is the one not stopped by the executor's SIGTERM afterwards
        first = next(((i, p) for i, p in ended if p is self.first_dead), None) or \
            next(((i, p) for i, p in ended if p.exitcode != -signal.SIGTERM), ended[0] if ended else None)
        fix = (f"finished shards are kept: run the same command again, with fewer --workers (now "
               f"{self.workers}) if it ran out of memory")
        if first is None:
            return f"a tokenizer worker ended unexpectedly; {fix}"
        number, process = first
        code = process.exitcode
        if code < 0:
            name = signal_name(-code)
            why = ("likely the kernel's OOM killer (out of memory)" if code == -signal.SIGKILL else
                   "a crash" if code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT) else
                   "stopped from outside")
            how = f"was killed by {name}: {why}"
        else:
            how = f"exited with status {code}: a crash in the tokenizer"
        return f"tokenizer worker {number} of {self.workers} (pid {process.pid}) {how}; {fix}"
