"""Where the tests find ../shared, the folder of real data beside the repository: CI has it, a
user's clone does not. A test may use it for extra coverage only: every assertion holds with and
without it. GPT2_SHARED_DIR points elsewhere; `.ci/run` sets it to a missing folder and runs the
tests that import this module again, so a test that needs the folder fails there.

    from shared_data import SHARED_DIR
"""

import os
from pathlib import Path

SHARED_DIR = Path(os.environ.get("GPT2_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
