"""Evaluation: score a language model by the likelihood it gives to continuations.

- scoring.py: what every benchmark shares: rows of tokens with a continuation mask through the
  model in one padded forward, left-cropping to the model's context, ranks sharing the examples
- hellaswag.py: HellaSwag's data, its two renderings (build-nanogpt's, lm-evaluation-harness's)
- core.py: CORE (the DCLM paper's 22 in-context tasks) computed as nanochat computes it
- core_hellaswag.py: CORE's hellaswag.jsonl built from HellaSwag's validation set
- models.py: what the command lines share: the model to score (OpenAI's GPT-2 through
  transformers, or a training checkpoint) and the process group under torchrun

The command lines are `hellaswag.py` and `core_eval.py` at the top of the repository; training
calls evaluate_gpt of each benchmark (trainer/evaluation.py).
"""
