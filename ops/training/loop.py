"""The training loop every trainer shares.

A trainer supplies what is specific to it, ``loss_fn(batch: StepBatch) -> loss``, and the loop
does the rest the same way for all: resume from the newest checkpoint, learning-rate warmup,
backward, gradient clipping, optimizer step, EMA update, loss/step-time logging (averaged over
processes), checkpoints every ``checkpoint_every`` steps, and a tqdm bar on the main process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ops.tracking.runs import MlflowRun
from ops.training.batches import GlobalBatchPlan, StepBatch
from ops.training.checkpoint import Checkpoint, CheckpointStore
from ops.training.ema import EMA

LossFn = Callable[[StepBatch], torch.Tensor]


@dataclass(frozen=True)
class LoopSettings:
    """How long and how carefully to train; from a stage's config section."""

    steps: int
    checkpoint_every: int
    log_every: int = 10
    max_grad_norm: float | None = 1.0
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    description: str = "train"

    @classmethod
    def from_config(cls, cfg: dict[str, Any], description: str) -> LoopSettings:
        return cls(
            steps=int(cfg["steps"]),
            checkpoint_every=int(cfg.get("checkpoint_every", 0) or 0),
            log_every=int(cfg.get("log_every", 10)),
            max_grad_norm=cfg.get("max_grad_norm"),
            learning_rate=float(cfg["learning_rate"]),
            warmup_steps=int(cfg.get("warmup_steps", 0)),
            description=description,
        )

    def lr_at(self, step: int) -> float:
        """Linear warmup to ``learning_rate``; a function of the step, so resume needs no state."""
        if self.warmup_steps <= 0:
            return self.learning_rate
        return self.learning_rate * min(1.0, (step + 1) / self.warmup_steps)


@dataclass
class LoopResult:
    """What a finished loop reports (JSON-able through ``as_dict``)."""

    final_step: int
    resumed_from: int
    final_loss: float | None
    loss_curve: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0
    world_size: int = 1
    global_batch_size: int = 0
    local_batch_size: int = 0
    samples_per_rank: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_loop(
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    plan: GlobalBatchPlan,
    settings: LoopSettings,
    store: CheckpointStore,
    *,
    ema: EMA | None = None,
    run: MlflowRun | None = None,
    resume: Checkpoint | None = None,
) -> LoopResult:
    """Train ``model`` (already ``accelerator.prepare``-d, with ``optimizer``) to ``settings.steps``.

    ``resume`` (from ``store.latest()``) restores model, EMA, optimizer and RNG and continues
    at its step; the step fixes the data order position (see ``GlobalBatchPlan``).
    Checkpoints store the MLflow run id, so a resumed run keeps logging into the same run.
    """
    run = run or MlflowRun(None, None)
    unwrapped = accelerator.unwrap_model(model)
    modules: dict[str, Any] = {"model": unwrapped}
    if ema is not None:
        modules["ema"] = ema
    start, curve = 0, []
    if resume is not None:
        state = store.load(resume, accelerator, modules=modules, optimizer=optimizer)
        start, curve = resume.step, list(state.get("loss_curve", []))
    model.train()
    bar = tqdm(
        total=settings.steps,
        initial=start,
        desc=settings.description,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    window: list[torch.Tensor] = []
    window_start = began = time.perf_counter()
    for step in range(start, settings.steps):
        lr = settings.lr_at(step)
        for group in optimizer.param_groups:  # a group's lr_scale: its rate relative to lr
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = loss_fn(plan.batch(step))
        accelerator.backward(loss)
        if settings.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(unwrapped)
        window.append(loss.detach().float())
        done = step + 1
        bar.update(1)
        if done % settings.log_every == 0 or done == settings.steps:
            mean = accelerator.reduce(torch.stack(window).mean(), reduction="mean").item()
            seconds = (time.perf_counter() - window_start) / len(window)
            curve.append([done, mean])
            run.log_metrics(
                {
                    "loss": mean,
                    "step_time_s": seconds,
                    "samples_per_s": plan.global_batch_size / seconds,
                    "lr": lr,
                },
                done,
            )
            bar.set_postfix(loss=f"{mean:.4f}")
            window, window_start = [], time.perf_counter()
        every = settings.checkpoint_every
        if every and done % every == 0 and done < settings.steps:
            state = {
                "samples_seen": done * plan.global_batch_size,
                "global_batch_size": plan.global_batch_size,
                "loss_curve": curve,
                "mlflow_run_id": run.run_id,
            }
            store.save(accelerator, done, modules=modules, optimizer=optimizer, state=state)
    bar.close()
    seconds = time.perf_counter() - began
    trained = max(settings.steps - start, 0)
    # every process reports what it trained on: proof that all of them took part
    local = torch.tensor([trained * plan.local_batch_size], device=accelerator.device)
    samples_per_rank = accelerator.gather(local).cpu().tolist()
    return LoopResult(
        final_step=max(settings.steps, start),
        resumed_from=start,
        final_loss=curve[-1][1] if curve else None,
        loss_curve=curve,
        seconds=seconds,
        samples_per_second=trained * plan.global_batch_size / seconds if trained > 0 else 0.0,
        world_size=accelerator.num_processes,
        global_batch_size=plan.global_batch_size,
        local_batch_size=plan.local_batch_size,
        samples_per_rank=samples_per_rank,
    )


def publish_and_clear(
    accelerator: Any, store: CheckpointStore, publish: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """After training: the main process exports the model (``publish``, its summary returned;
    ``{}`` elsewhere), then, once every process is past that point, the checkpoints are
    removed. The order matters: a failure while exporting leaves them for the next resume."""
    published = publish() if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        store.clear()
    return published
