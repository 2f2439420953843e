"""The training task: what one optimisation step needs and nothing else (no config, no disk, no process
group), in the manner of Lightning's module and torchgeo's ``BaseTask``. ``kseg.training.build`` makes one
from a config; ``kseg.training.loop.fit`` drives it epoch by epoch; the unit tests drive it with fake
tensors."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from kseg.models.checkpoint import unwrap
from kseg.runtime import autocast

Batch = tuple[torch.Tensor, torch.Tensor]
BatchTransform = Callable[[torch.Tensor, torch.Tensor], Batch]
BatchHook = Callable[[int, int, float, int], None]  # step, steps, loss, images


class SegTask:
    """Model, EMA, loss, optimiser, schedule and gradient scaler, and the step that uses them.

    Args:
        model: The model being trained, on ``device``.
        loss_fn: ``loss(logits, masks)``.
        optimizer: Over ``model``'s parameters.
        device: Where batches go.
        scheduler: The learning-rate schedule, or ``None``.
        per_step: Step the schedule after every optimiser step; otherwise ``end_epoch`` steps it with the
            epoch's validation score (a plateau schedule).
        ema: An ``AveragedModel`` of ``model`` updated after every optimiser step (what validation and
            inference use), or ``None``.
        amp: The autocast dtype, or ``None`` for full precision; float16 scales the loss.
        accumulate: Batches whose gradients add up to one optimiser step.
        clip_grad: Clip the gradient norm to this, or ``None``.
        channels_last: Feed images in channels-last memory format.
        batch_transform: Batch-level augmentation on the CPU tensors (CutMix, copy-paste), or ``None``.
        forward_model: What the forward pass calls (``model`` compiled or wrapped for DDP); ``model`` by default.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        scheduler: Any = None,
        per_step: bool = True,
        ema: AveragedModel | None = None,
        amp: torch.dtype | None = None,
        accumulate: int = 1,
        clip_grad: float | None = None,
        channels_last: bool = False,
        batch_transform: BatchTransform | None = None,
        forward_model: nn.Module | None = None,
    ):
        self.model, self.loss_fn, self.optimizer, self.device = model, loss_fn, optimizer, device
        self.scheduler, self.per_step, self.ema, self.amp = scheduler, per_step and scheduler is not None, ema, amp
        self.accumulate, self.clip_grad, self.channels_last = accumulate, clip_grad, channels_last
        self.batch_transform = batch_transform
        self.forward_model = forward_model if forward_model is not None else model
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        self.steps_done = 0

    @property
    def eval_model(self) -> nn.Module:
        """What validation, ``best.pt`` and inference use: the EMA's model, or the trained one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, batches: Iterable[Batch], on_batch: BatchHook | None = None) -> tuple[float, int]:
        """One pass over ``batches``; returns ``(sum of batch loss x images, images)``. ``on_batch`` sees each
        batch's loss before its gradients reach the weights (it may raise to stop a diverged run)."""
        self.forward_model.train()
        running, seen = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        steps = len(batches) if isinstance(batches, Sized) else -1
        for step, (images, masks) in enumerate(batches):
            value = float(self.forward_backward(images, masks).detach())
            if on_batch is not None:
                on_batch(step, steps, value, len(images))
            if (step + 1) % self.accumulate == 0 or step + 1 == steps:
                self.optimizer_step()
            running += value * len(images)
            seen += len(images)
        return running, seen

    def forward_backward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The loss of one batch, its gradients (scaled, divided by ``accumulate``) added to the parameters'."""
        if self.batch_transform is not None:
            images, masks = self.batch_transform(images, masks)
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.forward_model(images)
        loss = self.loss_fn(logits, masks)
        self.scaler.scale(loss / self.accumulate).backward()
        return loss

    def optimizer_step(self) -> None:
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self.per_step:
            self.scheduler.step()

    def end_epoch(self, score: float) -> None:
        """Step a plateau schedule with the epoch's validation score (per-step schedules step themselves)."""
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step(score)

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimisation state, in ``last.pt``'s keys (with EMA, ``model`` holds the averaged
        weights, what inference loads, and ``raw_model`` the trained ones)."""
        state = {
            "model": self.eval_model.state_dict() if self.ema is not None else unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "steps_done": self.steps_done,
        }
        if self.ema is not None:
            state["raw_model"] = unwrap(self.model).state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    def load_state_dict(
        self, state: dict[str, Any], *, new_schedule: Callable[[torch.optim.Optimizer], Any] | None = None
    ) -> None:
        """The reverse of ``state_dict``. With ``new_schedule`` the saved schedule is not restored: a new one
        is built on the restored optimiser and stepped on to ``steps_done`` (the run's length changed, so
        the saved schedule no longer fits)."""
        self.model.load_state_dict(state.get("raw_model", state["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(state["model"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps_done = int(state["steps_done"])
        if new_schedule is None:
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            return
        self.scheduler = new_schedule(self.optimizer)
        self.per_step = self.scheduler is not None
        if self.per_step:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(self.steps_done):
                    self.scheduler.step()
