"""The training loop on fake tensors, in milliseconds: ``SegTask`` (accumulation, schedules, EMA, state)
and ``fit`` with its callbacks (early stop, time limit, divergence, order of hooks). The end-to-end
training tests (test_train.py, test_faults.py) check the same loop on real runs."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from torch import nn

from kseg.errors import TrainError
from kseg.training.evaluation import EpochStats
from kseg.training.foldstate import RunProgress
from kseg.training.loop import EARLY, OUT_OF_TIME, Callback, EarlyStopping, FiniteLoss, TimeLimit, fit
from kseg.training.task import SegTask

CPU = torch.device("cpu")


def _batches(epoch: int, n: int = 4, size: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + epoch)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 2, (size, 8, 8), generator=g)) for _ in range(n)]


def _task(lr: float = 0.1, norm: bool = True, **kwargs) -> SegTask:
    torch.manual_seed(0)
    middle = nn.BatchNorm2d(4) if norm else nn.Identity()  # batch norm sees a batch: no accumulation equals it
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), middle, nn.ReLU(), nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = kwargs.pop("scheduler", None)
    return SegTask(
        model, nn.CrossEntropyLoss(), optimizer, CPU, scheduler=scheduler(optimizer) if scheduler else None, **kwargs
    )


def _validate(scores: list[float], progress: RunProgress):
    """A validation that reports ``scores`` epoch after epoch."""

    def validate(epoch: int, train_loss: float, images_per_s: float, started: float) -> EpochStats:
        score = scores[epoch]
        return EpochStats(
            epoch + 1,
            0.0,
            train_loss,
            0.5,
            score,
            {},
            {},
            images_per_s,
            0.0,
            best=score > progress.best_score,
            val_score=score,
        )

    return validate


def _weights(task: SegTask) -> list[torch.Tensor]:
    return [p.detach().clone() for p in task.model.state_dict().values()]


def test_accumulated_batches_make_one_step_equal_to_their_union():
    a, b = _batches(0, n=2, size=2)
    accumulated, union = _task(accumulate=2, norm=False), _task(norm=False)
    accumulated.train_epoch([a, b])
    union.train_epoch([(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))])
    assert accumulated.steps_done == union.steps_done == 1
    for left, right in zip(_weights(accumulated), _weights(union), strict=True):
        torch.testing.assert_close(left, right)


def test_a_last_partial_accumulation_still_steps():
    task = _task(accumulate=2)
    task.train_epoch(_batches(0, n=5))
    assert task.steps_done == 3  # 2 + 2 + the last one alone


def test_a_per_step_schedule_moves_every_step_and_a_plateau_one_only_when_the_score_stalls():
    per_step = _task(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (step + 1)))
    per_step.train_epoch(_batches(0, n=3))
    assert per_step.lr == pytest.approx(0.1 / 4)

    plateau = _task(
        scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1),
        per_step=False,
    )
    progress = RunProgress()
    lrs = []

    class Lr(Callback):
        def on_epoch_end(self, epoch, stats, progress):
            lrs.append(plateau.lr)

    fit(plateau, _batches, _validate([0.5, 0.6, 0.6, 0.6, 0.6], progress), progress, epochs=5, seed=1, callbacks=[Lr()])
    assert lrs[:3] == [0.1, 0.1, 0.1] and lrs[3] == pytest.approx(0.05)  # two epochs without a better score


def test_early_stopping_stops_after_patience_epochs_without_a_better_score():
    notes = []
    progress = RunProgress()
    reason = fit(
        _task(),
        _batches,
        _validate([0.5, 0.7, 0.6, 0.65, 0.9, 0.9], progress),
        progress,
        epochs=6,
        seed=1,
        callbacks=[EarlyStopping(2, "row_dice", notes.append)],
    )
    assert reason == EARLY and len(progress.history) == 4
    assert (progress.best_epoch, progress.best_score, progress.bad_epochs) == (2, 0.7, 2)
    assert notes == ["early stop: no better validation row_dice for 2 epochs (train.patience)"]


def test_the_time_limit_stops_at_an_epoch_end_unless_it_is_the_last():
    progress = RunProgress()
    past = time.monotonic() - 1
    assert (
        fit(
            _task(),
            _batches,
            _validate([0.1] * 3, progress),
            progress,
            epochs=3,
            seed=1,
            callbacks=[TimeLimit(past, 3)],
        )
        == OUT_OF_TIME
    )
    assert len(progress.history) == 1
    progress = RunProgress()
    assert (
        fit(_task(), _batches, _validate([0.1], progress), progress, epochs=1, seed=1, callbacks=[TimeLimit(past, 1)])
        is None
    )


def test_a_resumed_task_goes_on_exactly_as_one_that_never_stopped():
    def make() -> SegTask:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        task = _task(scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=12))
        task.ema = AveragedModel(task.model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
        return task

    whole = make()
    progress = RunProgress()
    fit(whole, _batches, _validate([0.1, 0.2, 0.3], progress), progress, epochs=3, seed=7)

    first = make()
    progress = RunProgress()
    fit(first, _batches, _validate([0.1, 0.2, 0.3], progress), progress, epochs=1, seed=7)
    saved = copy.deepcopy(first.state_dict())
    resumed = make()
    resumed.load_state_dict(saved)
    fit(resumed, _batches, _validate([0.1, 0.2, 0.3], progress), progress, epochs=3, seed=7)

    assert resumed.steps_done == whole.steps_done == 12 and resumed.lr == whole.lr
    for left, right in zip(resumed.state_dict()["model"].values(), whole.state_dict()["model"].values(), strict=True):
        torch.testing.assert_close(left, right)  # the EMA's weights, what best.pt keeps


def test_a_new_schedule_is_stepped_on_to_where_the_saved_run_was():
    task = _task(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (step + 1)))
    task.train_epoch(_batches(0, n=3))
    state = task.state_dict()
    other = _task()  # a run that had no schedule
    other.load_state_dict(state, new_schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s))
    assert other.steps_done == 3 and other.lr == pytest.approx(0.1 * 0.5**3)


def test_a_non_finite_loss_stops_the_run_before_its_step_reaches_the_weights():
    task = _task()
    before = [p.detach().clone() for p in task.model.parameters()]  # (batch norm's running mean sees the nan)
    images, masks = _batches(0, n=1)[0]
    images[0, 0, 0, 0] = math.nan
    progress = RunProgress()
    with pytest.raises(TrainError, match=r"fold 3, epoch 1, step 1: the training loss is nan .*lower train.lr"):
        fit(
            task,
            lambda epoch: [(images, masks)],
            _validate([0.1], progress),
            progress,
            epochs=1,
            seed=1,
            callbacks=[FiniteLoss("fold 3", 0.1)],
        )
    assert task.steps_done == 0
    for left, right in zip(before, task.model.parameters(), strict=True):
        torch.testing.assert_close(left, right)


def test_hooks_run_in_order_and_close_runs_even_when_the_loop_fails():
    calls = []

    class Spy(Callback):
        def on_epoch_start(self, epoch):
            calls.append(f"start {epoch}")

        def on_batch(self, epoch, step, steps, loss, images):
            calls.append(f"batch {epoch}.{step}/{steps}")

        def on_epoch_end(self, epoch, stats, progress):
            calls.append(f"end {epoch} best={stats.best}")

        def on_fit_end(self, reason, progress):
            calls.append(f"fit end {reason}")

        def close(self):
            calls.append("close")

    progress = RunProgress()
    fit(
        _task(),
        lambda e: _batches(e, n=2),
        _validate([0.2, 0.1], progress),
        progress,
        epochs=2,
        seed=1,
        callbacks=[Spy()],
    )
    assert calls == [
        "start 0", "batch 0.0/2", "batch 0.1/2", "end 0 best=True",
        "start 1", "batch 1.0/2", "batch 1.1/2", "end 1 best=False",
        "fit end None", "close",
    ]  # fmt: skip
    calls.clear()

    def broken(epoch, *_):
        raise RuntimeError("validation failed")

    with pytest.raises(RuntimeError):
        fit(_task(), lambda e: _batches(e, n=1), broken, RunProgress(), epochs=2, seed=1, callbacks=[Spy()])
    assert calls[-1] == "close" and "fit end None" not in calls


def test_a_resumed_progress_starts_at_its_next_epoch():
    progress = RunProgress(epoch=2, best_score=0.4, best_epoch=2, history=[{"val_dice": 0.3}, {"val_dice": 0.4}])
    seen = []
    fit(
        _task(),
        lambda e: seen.append(e) or _batches(e, n=1),
        _validate([0, 0, 0.5], progress),
        progress,
        epochs=3,
        seed=1,
    )
    assert seen == [2] and progress.best_epoch == 3 and len(progress.history) == 3


def test_a_compile_that_fails_at_the_first_forward_pass_trains_uncompiled(monkeypatch):
    from kseg.training.build import compiled

    def broken_compile(model):
        def forward(*_args):
            raise RuntimeError("no C compiler")  # as inductor fails, at the first call, not at torch.compile

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    notes = []
    model = nn.Conv2d(3, 2, 1)
    wrapped = compiled(model, True, torch.device("cuda"), notes.append)  # the device is only looked at
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(wrapped(x), model(x))
    torch.testing.assert_close(wrapped(x), model(x))
    assert notes == ["torch.compile failed at the first forward pass (RuntimeError); training uncompiled"]
    assert list(wrapped.parameters()) == list(model.parameters())  # the optimiser's parameters, once
    assert compiled(model, True, torch.device("cpu"), notes.append) is model  # compile is for CUDA only
