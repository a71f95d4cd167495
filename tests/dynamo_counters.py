"""Run train_gpt2.main once per named argument list in one process (under torchrun: on every
rank) and write what Dynamo counted for each run: rank 0 writes {name: {"status", "counters"}}
as JSON to the path given first. One launch instead of one per run saves the suite seconds.

    torchrun --nproc_per_node=2 tests/dynamo_counters.py OUT.json '{"ddp": [...argv...], ...}'
"""

import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch._dynamo  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

import train_gpt2  # noqa: E402


def use_fresh_store(run_index, agent_store):
    """Point the next process group at a new TCPStore (rank 0 hosts it on a free port). A group
    re-created on torchrun's store finds the previous group's keys there, and gloo may dial the
    previous run's closed port."""
    key = f"dynamo_counters/port/{run_index}"
    if int(os.environ["RANK"]) == 0:
        with socket.socket() as s:
            s.bind((os.environ["MASTER_ADDR"], 0))
            agent_store.set(key, str(s.getsockname()[1]))
    os.environ.update(MASTER_PORT=agent_store.get(key).decode(), TORCHELASTIC_USE_AGENT_STORE="False")


def main(out_path, runs):
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                is_master=False, timeout=timedelta(minutes=5))
    results = {}
    for i, (name, argv) in enumerate(runs.items()):
        use_fresh_store(i, agent_store)
        torch._dynamo.reset()  # each run compiles afresh and is counted alone
        counters.clear()
        status = train_gpt2.main(argv)
        results[name] = {"status": status, "counters": {k: dict(v) for k, v in counters.items()}}
    if int(os.environ["RANK"]) == 0:
        Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
