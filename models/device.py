"""Which device a command runs on: what training, evaluation and sampling all ask first."""

import torch


def pick_device_type(choice):
    """auto: cuda if present, then Apple's mps, else cpu; an explicit choice must exist."""
    if choice == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(choice, False):
        raise ValueError(f"--device {choice} but no {choice} device is available; use --device auto")
    return choice
