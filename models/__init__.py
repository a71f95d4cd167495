"""The models and what every tool shares about them: the ground floor under trainer/, evaluation/,
sample.py and the export. Nothing here imports those.

    gpt2.py        GPT-2, readable top to bottom
    checkpoint.py  the checkpoint file: write, read safely, turn into a model
    hf.py          Hugging Face conversions: OpenAI's GPT-2 weights in, exports out
    device.py      which device a command runs on
"""
