"""The pipeline's progress bars: tqdm on stderr, honest after a resume and quiet in a log file.

- On a terminal the bar redraws up to 10 times a second; into a file (a Slurm log) only once every
  LOG_EVERY_S, since each redraw there is a line kept for good (~20 MB over a 10-hour job at
  tqdm's pace). TQDM_MININTERVAL=SECONDS sets another pace.
- A resumed run starts where the last one stopped: the first position measured is taken as the
  bar's starting point, so the rate and the ETA count this session's work only, not everything
  done before counted as read in the first instant.
"""

import os
import sys

from tqdm import tqdm

LOG_EVERY_S = 60


def progress_bar(**kwargs):
    """A tqdm bar on stderr; `kwargs` as tqdm's."""
    pace = {} if "TQDM_MININTERVAL" in os.environ or sys.stderr.isatty() else {
        "mininterval": LOG_EVERY_S}
    return tqdm(file=sys.stderr, dynamic_ncols=True, **pace, **kwargs)


def advance(bar, position):
    """Move `bar` to `position`. The first position is where this session starts: it counts as
    done, not as work done in the first instant (tqdm's `initial`, as if the bar had started
    there)."""
    if not getattr(bar, "started_at_first_position", False):
        bar.started_at_first_position = True
        bar.reset()  # the clock and the rate start now
        bar.initial = bar.n = bar.last_print_n = position
        bar.refresh()
        return
    bar.update(position - bar.n)


def progress(limit, source, written, by_bytes):
    """A bar and the function that measures how far we are: tokens against the limit when there
    is one, else bytes of the source read (a hub download's ETA), else documents."""
    common = dict(smoothing=0.05, unit_scale=True)
    if limit is not None:
        return (progress_bar(total=limit, initial=written, unit="tok", **common),
                lambda writer: writer.written + writer.fill)
    if by_bytes and source.num_bytes:
        return (progress_bar(total=source.num_bytes, unit="B", unit_divisor=1024, **common),
                lambda writer: source.bytes_read)
    return (progress_bar(total=source.num_documents, unit="doc", **common),
            lambda writer: writer.end_doc)


def show(bar, writer, measure):
    advance(bar, measure(writer))
    bar.set_postfix(refresh=False, docs=f"{writer.end_doc:,}",
                    tokens=f"{writer.written + writer.fill:,}", shards=len(writer.manifest["shards"]))
