"""Evaluation: score a language model by the likelihood it gives to continuations.

- scoring.py: what every benchmark shares: rows of tokens with a continuation mask through the
  model in one padded forward, left-cropping to the model's context, ranks sharing the examples
- hellaswag_data.py: HellaSwag's validation set: download, cache, checks
- hellaswag.py: HellaSwag's two renderings (build-nanogpt's, lm-evaluation-harness's) and scoring
- core.py: CORE (the DCLM paper's 22 in-context tasks) computed as nanochat computes it
- core_hellaswag.py: CORE's hellaswag.jsonl built from HellaSwag's validation set
- models.py: what the command lines share: the model to score (OpenAI's GPT-2 or any causal LM
  folder through transformers, or a training checkpoint) and the process group under torchrun

The command lines are `hellaswag.py` and `core_eval.py` at the top of the repository; training
calls evaluate_gpt of each benchmark (trainer/evaluation.py).
"""
