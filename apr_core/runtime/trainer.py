"""The training loop shared by fine-tuning and distillation.

One optimizer step consumes a *global batch* of ``batch_size x grad_accum x processes``
examples, drawn in order from a permutation of the training set that depends only on the seed
and the epoch. The loss of every micro-batch is its summed token loss divided by the number of
target tokens in the whole global batch (the normalisation transformers fixed in 2024: dividing
each micro-batch by its own count over-weights short answers), times the number of processes,
because DDP averages gradients across them. So one process with twice the accumulation and two
processes give the same update.

Around that: AdamW (torch's fused kernel where the parameters allow it; bitsandbytes' 8-bit or
paged 8-bit AdamW on CUDA), linear warmup then
cosine decay, gradient clipping, autocast in the run's compute dtype when it is not float32,
gradient checkpointing, periodic evaluation, a JSON log and a loss-curve PNG. Multi-process runs
go through accelerate (``accelerate launch`` or ``torchrun``: DDP); only rank 0 writes. An
accelerate FSDP configuration is refused (`refuse_fsdp` says why).

Checkpoints (every ``save_steps`` optimizer steps, on Ctrl-C or SIGTERM, and at the end) hold
the trainable parameters, the optimizer and scheduler states and the step; they are atomic
directories (`apr_core.runtime.checkpoint`). Ctrl-C or SIGTERM finishes the optimizer step in
progress (every process agrees on where to stop), saves and exits with code 130 or 143; a
second signal stops at once, losing only that step. Randomness inside a step (dropout) is seeded from
(seed, step, process, micro-batch), and the data position follows from the step, so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import AprError

OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit")


def refuse_fsdp() -> None:
    """One clear error instead of a run that would not do what was asked under an accelerate FSDP
    configuration (``accelerate launch --use_fsdp``, ``ACCELERATE_USE_FSDP=true``).

    Checkpoints and outputs are written by rank 0 from its module's parameters, which FSDP
    shards, and gathering them (accelerate's ``get_state_dict`` on every rank, the optimizer's
    sharded state likewise) has never run: accelerate does FSDP only on GPUs, and on a CPU it
    silently trains with DDP instead (measured with accelerate 1.15), so it cannot be tested here.
    """
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise AprError("FSDP is not supported yet (checkpoints and outputs are written from rank 0's parameters, "
                       "which FSDP shards): launch without --use_fsdp to train with DDP")


class Interrupted(AprError):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint (exit code 128 + the signal:
    130 for Ctrl-C, 143 for SIGTERM, as a shell reports them)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


@dataclass
class TrainSettings:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    eval_steps: int | None = None
    save_steps: int | None = None
    gradient_checkpointing: bool = False
    seed: int = 0
    trim_heap: bool = True  # CPU: `malloc.trim_slack` before each step (`heap_trim_pays` says when)


@dataclass
class TrainResult:
    steps: int
    examples: int
    target_tokens: int
    train_loss: float | None
    eval_loss: float | None
    eval_loss_before: float | None
    seconds: float
    tokens_per_second: float
    resumed_from: int | None
    log: list[dict[str, Any]] = field(default_factory=list)


def _seed_of(*parts: Any) -> int:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the training set in ``epoch``: a function of (seed, epoch) only."""
    import random

    order = list(range(n))
    random.Random(_seed_of(seed, "epoch", epoch)).shuffle(order)
    return order


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def collate(examples, device):
    """Right-padded ids, attention mask and target mask (batch x longest)."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    attn = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(e.mask)
    mask[:, 0] = False  # position 0 is never a target
    return ids.to(device), attn.to(device), mask.to(device)


FUSED_DEVICES = ("cpu", "cuda")


def fusable(params) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: dense floating-point tensors on
    the CPU or CUDA, all on one device type. It reads and writes each parameter, gradient and
    moment once per step, where the default CPU implementation makes a dozen passes per tensor
    (0.06 s against 0.17-0.47 s per step for SmolLM2-135M's weights on this machine), and it is
    what transformers' Trainer picks by default since torch 2.8."""
    kinds = {p.device.type for p in params}
    return (len(kinds) == 1 and kinds <= set(FUSED_DEVICES)
            and all(p.is_floating_point() and not p.is_sparse for p in params))


def make_optimizer(name: str, params, lr: float, weight_decay: float, device: str):
    import torch

    if name == "adamw":
        params = list(params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fusable(params) or None)
    if not device.startswith("cuda"):
        raise AprError(f"--optimizer {name} needs CUDA (bitsandbytes' 8-bit optimizers); use adamw on the CPU")
    from .startup import quiet_bitsandbytes

    with quiet_bitsandbytes():
        import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged-adamw-8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=lr, weight_decay=weight_decay)


def heap_trim_pays(adapter: bool) -> bool:
    """Whether trimming the C heap before each CPU step is worth its page faults: for adapter
    training (LoRA, QLoRA), not when every weight trains.

    The trim hands the holes a step's freed activations left back to the kernel, and the next
    step faults in every page of them again. Training an adapter, those holes are most of the
    heap: a SmolLM2 LoRA run peaked 0.24-0.33 GB lower trimmed (3.04-3.14 against 3.37-3.42 GB,
    below the peft + Trainer baseline's 3.29 GB) for 5-7% of its tokens/s. Training every weight,
    ``zero_grad`` also frees the gradients (4 bytes per parameter) each step, so the trim makes
    the backward pass fault those in as well: a SmolLM2 full run lost 13-15% of its tokens/s
    (118 against 138, 109 against 125 tok/s) to save 0.15-0.19 GB of a 4.5-4.7 GB peak, whose
    weights, gradients and moments the trim cannot touch; untrimmed it peaks level with the
    baseline (4.79-4.86 against 4.71-4.80 GB, 1.00-1.02x, over three benchmark runs), at 1.00-1.05x
    its tokens/s (docs/finetune.md)."""
    return adapter


class Trainer:
    """Train the parameters of ``module`` that require gradients.

    :param module: an ``nn.Module`` whose ``forward(ids, attention_mask, target_mask)`` returns
        ``(summed loss, target count)`` for a micro-batch (e.g. `CausalLMLoss`).
    :param train, held_out: tokenized `Example` lists.
    :param save_state: ``save_state(module, directory)`` writes what a checkpoint keeps of the
        model (the adapter, or every weight); ``load_state(module, directory)`` restores it.
    """

    def __init__(self, module, train: list, held_out: list, settings: TrainSettings, context,
                 workdir: Path, save_state: Callable, load_state: Callable, fingerprint: str) -> None:
        if not train:
            raise AprError("no training examples")
        self.module, self.train, self.held_out = module, train, held_out
        self.s, self.context, self.workdir = settings, context, Path(workdir)
        self.save_state, self.load_state, self.fingerprint = save_state, load_state, fingerprint

    # ------------------------------------------------------------------ schedule
    def plan_steps(self, world: int) -> tuple[int, int]:
        """(optimizer steps per epoch, total steps)."""
        per_step = self.s.batch_size * self.s.grad_accum * world
        n = len(self.train)
        per_epoch = n // per_step if world > 1 else math.ceil(n / per_step)
        if per_epoch == 0:
            raise AprError(f"{n} training examples are fewer than one global batch of {per_step} "
                           f"(batch size x gradient accumulation x processes)")
        total = per_epoch * self.s.epochs
        if self.s.max_steps:
            total = min(total, self.s.max_steps)
        return per_epoch, total

    def global_batch(self, step: int, per_epoch: int, world: int) -> list:
        epoch, index = divmod(step, per_epoch)
        order = permutation(len(self.train), self.s.seed, epoch)
        per_step = self.s.batch_size * self.s.grad_accum * world
        return [self.train[i] for i in order[index * per_step:(index + 1) * per_step]]

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        import torch
        from accelerate import Accelerator

        from . import checkpoint, malloc, threads

        device = self.context.device
        refuse_fsdp()
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        acc = Accelerator(cpu=not device.startswith("cuda"))
        world, rank = acc.num_processes, acc.process_index
        per_epoch, total = self.plan_steps(world)
        warmup = round(self.s.warmup_ratio * total)
        dtype = getattr(torch, self.context.compute_dtype())
        autocast = dtype != torch.float32
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        if not trainable:
            raise AprError("nothing to train: the model has no trainable parameters")
        optimizer = make_optimizer(self.s.optimizer, trainable, self.s.learning_rate, self.s.weight_decay, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup))
        model, optimizer = acc.prepare(self.module, optimizer)
        dev = acc.device

        start_step, log, resumed = 0, [], None
        found = checkpoint.latest(self.workdir)
        if self.context.resume and found is None:
            raise AprError(f"--resume: no complete checkpoint in {checkpoint.directory(self.workdir)}")
        if found is not None and not self.context.resume:
            raise AprError(f"{found[0]} holds step {found[1]['step']} of an earlier run: pass --resume to continue "
                           f"it, or delete {self.workdir} to start over")
        if found is not None:
            path, meta = found
            if meta.get("fingerprint") != self.fingerprint:
                raise AprError(f"--resume: the checkpoint in {path} belongs to a run with other data or settings")
            self.load_state(acc.unwrap_model(model), path)
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
            start_step, log, resumed = int(meta["step"]), list(meta.get("log", [])), int(meta["step"])
            threads.resume_with(meta.get("threads"), self.context.log)
            self.context.log(f"resuming from {path} (step {start_step} of {total})")

        def save(step: int, final: bool = False) -> None:
            acc.wait_for_everyone()
            if acc.is_main_process:
                with checkpoint.write(self.workdir, step, {"fingerprint": self.fingerprint, "log": log,
                                                           "total_steps": total, "threads": torch.get_num_threads(),
                                                           "settings": asdict(self.s)}) as stage:
                    self.save_state(acc.unwrap_model(model), stage)
                    torch.save(optimizer.state_dict(), stage / "optimizer.pt")
                    torch.save(scheduler.state_dict(), stage / "scheduler.pt")
                checkpoint.keep_last(self.workdir, 1 if final else 2)
            acc.wait_for_everyone()

        eval_before = self.evaluate(model, dev, dtype, autocast) if not resumed and self.held_out else None
        if resumed:
            eval_before = next((r.get("eval_loss_before") for r in log if "eval_loss_before" in r), None)
        elif eval_before is not None:
            log.append({"step": 0, "eval_loss_before": eval_before})
        began, seen_tokens, train_loss = time.perf_counter(), 0, None
        bar = self._bar(total, start_step)
        stop = _StopRequest()
        try:
            for step in range(start_step, total):
                if stop.agreed(acc):
                    save(step)
                    raise Interrupted(f"interrupted at step {step} of {total}; checkpoint saved in "
                                      f"{checkpoint.directory(self.workdir)}; rerun the same command with "
                                      f"--resume", stop.signum)
                if dev.type == "cpu" and self.s.trim_heap:
                    malloc.trim_slack()  # the holes the last step's activations left (runtime/malloc.py)
                batch = self.global_batch(step, per_epoch, world)
                n_targets = sum(e.targets for e in batch)
                micro = [batch[i:i + self.s.batch_size] for i in range(0, len(batch), self.s.batch_size)]
                mine = micro[rank::world]
                step_loss, step_tokens = 0.0, 0
                model.train()
                for j, examples in enumerate(mine):
                    torch.manual_seed(_seed_of(self.s.seed, "step", step, rank, j))
                    ids, attn, mask = collate(examples, dev)
                    sync = acc.no_sync(model) if j < len(mine) - 1 else contextlib.nullcontext()
                    with sync, torch.autocast(dev.type, dtype=dtype, enabled=autocast):
                        total_loss, _count = model(ids, attn, mask)
                        loss = total_loss * (world / max(n_targets, 1))
                    acc.backward(loss)
                    step_loss += float(total_loss.detach())
                    step_tokens += int(attn.sum())
                if self.s.max_grad_norm:
                    acc.clip_grad_norm_(trainable, self.s.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                train_loss = _mean_over_processes(acc, step_loss, n_targets, world)
                seen_tokens += step_tokens
                row: dict[str, Any] = {"step": step + 1, "loss": round(train_loss, 6),
                                       "lr": scheduler.get_last_lr()[0], "targets": n_targets,
                                       "tokens": step_tokens * world,
                                       "seconds": round(time.perf_counter() - began, 3)}
                due = bool(self.s.eval_steps) and (step + 1) % self.s.eval_steps == 0
                epoch_end = self.context.on_eval is not None and (step + 1) % per_epoch == 0 and step + 1 < total
                if (due or epoch_end) and self.held_out:
                    row["eval_loss"] = self.evaluate(model, dev, dtype, autocast)
                    if self.context.on_eval is not None:
                        self.context.on_eval(step + 1, row["eval_loss"], (step + 1) / per_epoch)
                log.append(row)
                self._advance(bar, row, seen_tokens, began)
                if self.s.save_steps and (step + 1) % self.s.save_steps == 0 and step + 1 < total:
                    save(step + 1)
        finally:
            stop.restore()
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - began  # training only; the evaluations are not counted
        eval_loss = self.evaluate(model, dev, dtype, autocast) if self.held_out else None
        if eval_loss is not None:
            log.append({"step": total, "eval_loss": eval_loss})
        save(total, final=True)
        self.module = acc.unwrap_model(model)
        last = next((r["loss"] for r in reversed(log) if "loss" in r), train_loss)
        return TrainResult(steps=total, examples=len(self.train), target_tokens=sum(e.targets for e in self.train),
                           train_loss=last, eval_loss=eval_loss, eval_loss_before=eval_before,
                           seconds=round(seconds, 3),
                           tokens_per_second=round(seen_tokens * world / seconds, 2) if seconds > 0 else 0.0,
                           resumed_from=resumed, log=log)

    def evaluate(self, model, device, dtype, autocast) -> float:
        """Mean loss per target token over the held-out examples (every process sees all of them)."""
        import torch

        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.held_out), self.s.batch_size):
                ids, attn, mask = collate(self.held_out[i:i + self.s.batch_size], device)
                with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                    loss, n = model(ids, attn, mask)
                total += float(loss)
                count += int(n)
        return round(total / max(count, 1), 6)

    # ------------------------------------------------------------------ progress
    def _bar(self, total: int, start: int):
        from ..progress import enabled

        if not enabled(self.context.quiet):
            return None
        import sys

        from tqdm import tqdm

        return tqdm(total=total, initial=start, desc="training", file=sys.stderr, dynamic_ncols=True, leave=False)

    def _advance(self, bar, row, tokens: int, began: float) -> None:
        if bar is None:
            return
        rate = tokens / max(time.perf_counter() - began, 1e-9)
        post = {"loss": f"{row['loss']:.4f}", "tok/s": f"{rate:.0f}"}
        if "eval_loss" in row:
            post["eval"] = f"{row['eval_loss']:.4f}"
        bar.set_postfix(post)
        bar.update(1)


class _StopRequest:
    """Ctrl-C / SIGTERM during training: remember it and stop at the next step boundary (a second
    signal raises KeyboardInterrupt at once). Processes agree through an all-reduce."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def agreed(self, acc) -> bool:
        if acc.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=acc.device)
        return float(acc.reduce(flag, reduction="sum")) > 0

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _mean_over_processes(acc, loss_sum: float, n_targets: int, world: int) -> float:
    """The global batch's mean loss per target token (summed over processes)."""
    if world == 1:
        return loss_sum / max(n_targets, 1)
    import torch

    t = torch.tensor([loss_sum], device=acc.device)
    return float(acc.reduce(t, reduction="sum")) / max(n_targets, 1)


def write_log(log: list[dict[str, Any]], directory: Path) -> dict[str, str]:
    """``train_log.json`` and, with matplotlib, ``loss.png`` (train and eval loss by step)."""
    from . import malloc

    (directory / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    written = {"log": "train_log.json"}
    malloc.trim_heap()  # training's freed memory goes back before matplotlib's import adds its own
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(5, 3.2))
    train = [(r["step"], r["loss"]) for r in log if "loss" in r]
    evals = [(r["step"], r.get("eval_loss", r.get("eval_loss_before"))) for r in log
             if "eval_loss" in r or "eval_loss_before" in r]
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out", linewidth=1, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "loss.png", dpi=110)
    plt.close(fig)
    written["chart"] = "loss.png"
    return written
