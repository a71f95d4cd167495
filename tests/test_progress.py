"""The pipeline's progress bars (pipeline/progress.py): true for a single local file, after a
resume and in an array task, and quiet in a log file."""

import io
import re
import time
from types import SimpleNamespace

from tqdm import tqdm

from pipeline.inputs import open_source
from pipeline.progress import progress, show
from test_pipeline import make_docs, run_ok, write_jsonl


def test_a_single_local_jsonl_reports_the_bytes_read_as_it_goes(tmp_path):
    source = open_source(str(write_jsonl(tmp_path / "docs.jsonl", ["x" * 100] * 20_000)))
    seen = [source.bytes_read for i, _ in enumerate(source.documents()) if i % 5000 == 0]
    assert all(abs(b / source.num_bytes - k / 4) < 0.02 for k, b in enumerate(seen)), seen
    assert source.bytes_read == source.num_bytes


def test_a_resumed_run_counts_only_this_sessions_work(tmp_path):
    bar = tqdm(total=1000, file=io.StringIO(), mininterval=0, smoothing=0.05)
    writer = SimpleNamespace(position=600, end_doc=0, written=0, fill=0, manifest={"shards": []})
    show(bar, writer, lambda w: w.position)  # where the resume starts: the last run's work
    time.sleep(0.2)
    writer.position = 610  # 10 in 0.2 s or more: 390 to go take 8 s or more
    show(bar, writer, lambda w: w.position)
    assert bar.n == 610 and (bar.total - bar.n) / bar.format_dict["rate"] > 5


def test_in_a_log_file_the_bar_redraws_once_a_minute(capsys):
    source = SimpleNamespace(num_bytes=10_000, num_documents=None)
    for limit, by_bytes in [(1000, True), (None, True), (None, False)]:
        bar, _ = progress(limit, source, 0, by_bytes)
        assert bar.mininterval == 60, "not ~10 times a second, each a line of a Slurm log"


def test_an_array_tasks_bar_counts_bytes(tmp_path, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(300, seed=3))
    run_ok("--source", src, "--out", tmp_path / "array", "--num-tasks", 1, "--task-index", 0)
    size = tqdm.format_sizeof(src.stat().st_size, divisor=1024)
    assert re.search(rf"100%\|.*\| {re.escape(size)}/{re.escape(size)} \[.*B/s\]",
                     capsys.readouterr().err)
