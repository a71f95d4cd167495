"""What the training loop measures every N steps: validation loss and bits per byte, text
samples, HellaSwag, CORE.

    evaluator = Evaluator(cfg, parallel, val_loader, tokenizer, metrics, autocast_dtype, stop_poll)
    evaluator.run(step, last_step)   # on every rank; evaluations due at `step` run, results logged;
                                     # False: a stop request ended one early (on every rank alike)

Evaluations see the model after `step` updates, through the plain module run eagerly, and use
generators of their own, so the training RNG stream (and so an exact resume) is untouched.
Under FSDP each forward gathers weights from every rank: all ranks then run the same forwards.
A stop request (signals.StopPoll, polled every few batches at the same iterations on every rank)
ends the evaluation in progress with nothing logged for it; the loop checkpoints at once and the
resumed run evaluates that step again.
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from pipeline.tokenizer import GPT2_VOCAB_SIZE, get_gpt2_encoding


class Evaluator:
    def __init__(self, cfg, parallel, val_loader, tokenizer, metrics, autocast_dtype=None,
                 stop_poll=None):
        self.cfg, self.parallel, self.val_loader = cfg, parallel, val_loader
        self.should_stop = stop_poll  # signals.StopPoll, or None: never ends early
        self.tokenizer, self.metrics = tokenizer, metrics
        self.runtime = parallel.runtime
        self.autocast_dtype = autocast_dtype
        # raw bytes each token stands for: bits per byte compare across tokenizers, nats per
        # GPT-2 token do not
        self.token_bytes = None
        if tokenizer is not None:
            self.token_bytes = torch.as_tensor(tokenizer.token_byte_lengths(), device=self.runtime.device)
        self.hellaswag_examples = load_hellaswag(cfg, tokenizer, self.runtime)
        if self.hellaswag_examples and len(self.hellaswag_examples) < self.runtime.world_size:
            if self.runtime.master:
                print(f"warning: HellaSwag evaluation skipped: {len(self.hellaswag_examples)} "
                      f"examples for {self.runtime.world_size} ranks; raise --hellaswag-limit")
            self.hellaswag_examples = None
        self.core_tasks, self.core_missing = load_core(cfg, tokenizer, self.runtime)
        self.core_prepared = None  # rows, shots and tokens: built at the first CORE evaluation, then kept

    def autocast(self):
        device_type = self.runtime.device.type
        return torch.autocast(device_type, self.autocast_dtype) if self.autocast_dtype else nullcontext()

    def run(self, step, last_step):
        """The evaluations due at `step`; False when a stop request ended one early."""
        with self.parallel.eager():  # the compiled training regions would recompile for these
            ran = self.run_due(step, last_step)
        # one more vote after any evaluation: a request that came after the last poll, or that
        # only rank 0's samples heard, stops here rather than after another training step
        return not (ran is None or (ran and self.should_stop is not None and self.should_stop.vote()))

    def run_due(self, step, last_step):
        """Whether any evaluation was due; None when a stop request ended one early."""
        cfg, master, due = self.cfg, self.runtime.master, False
        if self.val_loader is not None and (step % cfg.eval_every == 0 or last_step):
            due, result = True, self.validation_loss()
            if result is None:
                return None
            val_loss, val_bpb = result
            self.metrics.log({"step": step, "val_loss": val_loss, "val_bpb": val_bpb})
            if master:
                bpb_text = f" | {val_bpb:.4f} bits/byte" if val_bpb is not None else ""
                print(f"step {step:5d} | val loss {val_loss:.4f}{bpb_text} "
                      f"({self.val_loader.num_tokens:,} tokens)")
            if self.tokenizer is not None and cfg.num_samples and (master or self.parallel.lockstep):
                samples = self.samples(step)
                if samples is None and self.parallel.lockstep:  # all ranks stopped together
                    return None
                if samples is not None and master:  # rank 0 alone stopped: the next vote tells all
                    for text in samples:
                        print(f"sample: {text!r}")
                    self.metrics.log_samples(step, samples)
        if self.hellaswag_examples and (step % cfg.hellaswag_every == 0 or last_step):
            # build-nanogpt's scoring every time; lm-evaluation-harness's too at the end, so the
            # run report holds both
            for style in ("default", "harness") if last_step else ("default",):
                due, result = True, self.hellaswag(style)
                if result is None:
                    return None
                self.log_hellaswag(step, style, result)
        core_every = cfg.core_every if cfg.core_every != "auto" else 0  # auto: the last step only
        # not at step 0, as nanochat: an untrained model's CORE is a minute's work for nothing
        if self.core_tasks and (last_step or (core_every and step > 0 and step % core_every == 0)):
            due, result = True, self.core()
            if result is None:
                return None
            self.log_core(step, result)
        return due

    def log_hellaswag(self, step, style, result):
        prefix = "hellaswag" if style == "default" else f"hellaswag_{style}"
        self.metrics.log({"step": step, f"{prefix}_acc_norm": result["acc_norm"],
                          f"{prefix}_acc": result["acc"], f"{prefix}_n": result["n"]})
        if self.runtime.master:
            from evaluation import hellaswag

            shape = self.parallel.module.config
            refs = "; ".join(f"{label}: {acc}" for label, acc in
                             hellaswag.references_for(shape.n_layer, shape.n_embd, style))
            print(f"step {step:5d} | HellaSwag ({style} style) acc_norm {result['acc_norm']:.4f} on "
                  f"{result['n']} examples" + (f" ({refs})" if refs else ""))

    def core(self):
        from evaluation import core

        if self.core_prepared is None:  # each rank its share of every task's rows
            self.core_prepared = core.prepare(self.core_tasks, get_gpt2_encoding(),
                                              self.parallel.module.config.block_size,
                                              self.cfg.core_max_per_task or None)
        return core.evaluate_gpt(self.parallel.module, self.core_prepared, device=self.runtime.device,
                                 autocast_dtype=self.autocast_dtype, lockstep=self.parallel.lockstep,
                                 should_stop=self.should_stop)

    def log_core(self, step, result):
        """log.jsonl and wandb: "core" and over how many of CORE's 22 tasks ("core_tasks"), GPT-2's
        CORE over the same tasks ("core_gpt2", the OpenAI model of this size, else 124M), the absent
        tasks, and each task's figures ("core_per_task")."""
        from evaluation import core

        shape = self.parallel.module.config
        name = core.gpt2_name_for(shape.n_layer, shape.n_embd) or "gpt2"
        reference = core.gpt2_reference(list(result["tasks"]), self.cfg.core_bundle or core.DEFAULT_BUNDLE, name)
        tasks = {label: {"accuracy": r["accuracy"], "centered": r["centered"], "n": r["n"],
                         "gpt2_centered": reference["tasks"].get(label)} for label, r in result["tasks"].items()}
        self.metrics.log({"step": step, "core": result["core"], "core_tasks": len(tasks),
                          "core_gpt2": reference["core"], "core_gpt2_model": reference["model"], "core_missing": ",".join(self.core_missing),
                          "core_per_task": tasks})
        if self.runtime.master:
            print(f"step {step:5d} | {core.core_line(result, self.core_missing, reference)} "
                  f"[{result['examples_per_second']:.1f} examples/s]")

    @torch.no_grad()
    def validation_loss(self):
        """(mean cross-entropy in nats per token, bits per byte or None) over the val loader's
        tokens, summed over ranks: the same for any world size (per-token losses summed in
        float64, whatever the batching). Bits per byte = summed nats / (ln 2 x the raw bytes of
        the target tokens). None when a stop request ended it early."""
        model, device = self.parallel.module, self.runtime.device
        was_training = model.training
        model.eval()
        total = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, tokens, bytes
        batches = iter(self.val_loader)
        # in lockstep a rank whose share is one batch shorter scores its first batch again,
        # unused; polling for a stop, it polls as often as the others
        lockstep, should_stop = self.parallel.lockstep, self.should_stop
        loader = self.val_loader
        rounds = loader.max_batches if lockstep or should_stop is not None else loader.num_batches
        first = None
        for _ in range(rounds):
            if should_stop is not None and should_stop():
                model.train(was_training)
                return None
            batch = next(batches, None)
            counted = batch is not None
            if not (counted or lockstep):
                continue
            x, y = batch if counted else first
            if first is None:
                first = (x, y)
            x, y = x.to(device), y.to(device)
            with self.autocast():
                logits = model(x)[0]
            if counted:
                losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
                total[0] += losses.double().sum()
                total[1] += y.numel()
                if self.token_bytes is not None:
                    total[2] += self.token_bytes[y].sum()
            del logits  # not alive through the next batch's forward
        self.runtime.all_reduce(total)
        model.train(was_training)
        loss_sum, tokens, num_bytes = total.tolist()
        bpb = loss_sum / (math.log(2) * num_bytes) if num_bytes else None
        return loss_sum / tokens, bpb

    def samples(self, step):
        """cfg.num_samples continuations of cfg.sample_prompt; a generator seeded by the step
        (the same on every rank: under FSDP all ranks generate the same tokens together). None
        when a stop request ended it early."""
        cfg, tokenizer = self.cfg, self.tokenizer
        try:
            prompt = tokenizer.encode(cfg.sample_prompt)[-cfg.block_size:]  # generate() crops as it goes
        except ValueError as e:  # e.g. a character outside a char vocabulary
            return [f"(no samples: --sample-prompt: {e})"]
        if not prompt:
            prompt = [tokenizer.eot if tokenizer.eot is not None else 0]
        device = self.runtime.device
        idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=device)
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed + step)
        # under FSDP every rank generates: they poll together; otherwise rank 0 alone, on its own
        should_stop = self.should_stop
        if should_stop is not None and not self.parallel.lockstep:
            should_stop = should_stop.requested_here
        with self.autocast():
            out = self.parallel.module.generate(idx, cfg.sample_tokens, top_k=50, generator=generator,
                                                vocab_size=tokenizer.vocab_size, should_stop=should_stop)
        return None if out is None else [tokenizer.decode(row.tolist()) for row in out]

    def hellaswag(self, style):
        from evaluation import hellaswag

        # each rank scores its share, the counts are summed
        return hellaswag.evaluate_gpt(self.parallel.module, self.hellaswag_examples, style=style,
                                      device=self.runtime.device, autocast_dtype=self.autocast_dtype,
                                      lockstep=self.parallel.lockstep, should_stop=self.should_stop)


def load_hellaswag(cfg, tokenizer, runtime):
    """HellaSwag examples from local files only (never a download: compute nodes may have no
    internet; the preflight has already refused a missing file), or None after one warning:
    never a crash. All ranks agree."""
    if not cfg.hellaswag_every:
        return None
    examples, reason = None, None
    if cfg.vocab_size < GPT2_VOCAB_SIZE or tokenizer is None or tokenizer.name != "gpt2":
        reason = "it needs a GPT-2-tokenizer model and shards"
    else:
        try:
            from evaluation import hellaswag

            examples = hellaswag.load_examples(cfg.hellaswag_data or None,
                                               limit=cfg.hellaswag_limit or None, download=False)
        except Exception as e:  # HellaSwagUnavailable (no local copy), bad file, ...
            reason = str(e)
    available = torch.tensor(float(examples is not None), device=runtime.device)
    # all ranks must run it (counts are all-reduced) or none
    runtime.all_reduce(available, op=torch.distributed.ReduceOp.MIN)
    if available.item() == 0:
        if runtime.master:
            print(f"warning: HellaSwag evaluation skipped: {reason or 'unavailable on another rank'}")
        return None
    return examples


def load_core(cfg, tokenizer, runtime):
    """(CORE tasks, labels of the tasks absent from the bundle) from the local bundle, or
    (None, []) after one warning when CORE cannot run; never a download, never a crash. With
    --core-every auto a missing bundle or a non-GPT-2 model skips CORE silently. All ranks agree."""
    if not cfg.core_every:
        return None, []
    from evaluation import core

    found, reason = None, None
    if cfg.vocab_size < GPT2_VOCAB_SIZE or tokenizer is None or tokenizer.name != "gpt2":
        reason = "it needs a GPT-2-tokenizer model and shards"
    else:
        try:
            found = core.load_tasks(cfg.core_bundle or core.DEFAULT_BUNDLE)
        except core.CoreUnavailable as e:
            reason = str(e)
    available = torch.tensor(float(found is not None), device=runtime.device)
    runtime.all_reduce(available, op=torch.distributed.ReduceOp.MIN)  # all ranks run it, or none
    if available.item() == 0:
        if runtime.master and (cfg.core_every != "auto" or cfg.core_bundle):
            print(f"warning: CORE evaluation skipped: {reason or 'unavailable on another rank'}")
        return None, []
    return found
