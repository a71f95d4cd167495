"""The trainer's parts, each behind a small interface; train_gpt2.py puts them together.

config (TrainConfig, presets, flags), distributed (device, process group, DDP/FSDP wrapping,
full-state gathering), checkpoint (atomic save/load, resume across world sizes), evaluation
(validation loss, samples, HellaSwag), metrics (log.jsonl, wandb, throughput), signals (stop
requests), run_folder (one writer per run folder, what a start may do in a folder holding a
run). Lower layers (models/, shards/, pipeline/) never import from here.
"""
