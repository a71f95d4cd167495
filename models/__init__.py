"""The models and what every tool shares about them: the ground floor under trainer/, evaluation/,
sample.py and the export. Nothing here imports those.

    gpt2.py        GPT-2, readable top to bottom
    modern.py      the speedrun recipe's model: rotary, RMSNorm, QK-norm, gated MLP, untied head
    checkpoint.py  the checkpoint file: write, read safely, turn into a model
    hf.py          Hugging Face conversions: OpenAI's GPT-2 weights in, exports out
    device.py      which device a command runs on
"""

from models.gpt2 import GPT, GPTConfig
from models.modern import ModernConfig, ModernGPT

# config["arch"] -> (model class, config class); GPT-2's configs (and older checkpoints) have none
ARCHITECTURES = {"gpt2": (GPT, GPTConfig), "modern": (ModernGPT, ModernConfig)}


def build_model(config):
    """The model a config dict (a checkpoint's config["model"]) describes, on the default device."""
    arch = config.get("arch", "gpt2")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    model_class, config_class = ARCHITECTURES[arch]
    return model_class(config_class.from_dict(config))
