"""One fold's training run as an object with small steps: built from the config (model, EMA, loss,
optimiser, schedule, loader), then ``restore`` (from ``last.pt``), ``train_epoch``, ``validate`` and
``save``; ``kseg.training.train.train_fold`` drives it epoch by epoch. Everything random in an epoch
(shuffling, augmentations, dropout) is seeded from ``(train.seed, epoch)``, so a run resumed from
``last.pt`` continues exactly as if it had never stopped."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from kseg import __version__
from kseg.config import Config, save_resolved
from kseg.data.reading import MaskSpec
from kseg.data.split import fold_tables, with_pseudo_rows
from kseg.errors import TrainError
from kseg.io import remove_stale
from kseg.metrics.scores import pixel_metrics
from kseg.models.averaging import epochs_to_average
from kseg.models.build import build_model
from kseg.models.checkpoint import (
    checkpoint_mismatch,
    inference_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from kseg.models.weights import normalization_note
from kseg.plotting import training_curves
from kseg.prediction.predictor import PredictOptions, Predictor
from kseg.runtime import (
    PRECISION_NAMES,
    amp_dtype,
    autocast,
    epoch_seed,
    loader_workers,
    pin_memory,
    resolve_device,
    seed_everything,
)
from kseg.training import distributed
from kseg.training.dataset import (
    PseudoRows,
    TrainDataset,
    copy_paste,
    cutmix,
    paste_classes,
    rare_class_weights,
    train_loader,
)
from kseg.training.evaluation import EpochStats, evaluate, instance_buffer, oof_truth, summarize, validation_score
from kseg.training.foldstate import FoldResult, NoteCallback, RunProgress, StepCallback, check_finite
from kseg.training.losses import loss_from_config
from kseg.training.optim import build_optimizer, build_scheduler
from kseg.workspace.workdir import WorkDir


class FoldRun:
    """One fold's training: built from the config, then driven epoch by epoch by ``train_fold``.

    Args:
        cfg: The experiment config.
        fold: Fold number of ``folds.csv`` to hold out.
        resume: Continue from ``fold<N>/last.pt``.
        on_step: Progress ``callback(epoch, step, steps, loss, images_per_s)`` (rank 0 only).
        on_note: Called with one-line notes (device, precision, weights, resume point).
        pseudo: Pseudo-labelled images added to the training rows (never to validation), and their share
            of each batch.
    """

    def __init__(
        self,
        cfg: Config,
        fold: int,
        *,
        resume: bool = False,
        on_step: StepCallback | None = None,
        on_note: NoteCallback | None = None,
        pseudo: PseudoRows | None = None,
    ):
        self.cfg, self.fold = cfg, fold
        self.on_step, self.note = on_step, on_note or (lambda _msg: None)
        self.work = WorkDir(cfg.workdir)
        self.rank, self.world = distributed.init()
        self.main = self.rank == 0
        self.stale = self._recover() if self.main else []
        distributed.barrier(self.world)  # every rank then reads the recovered last.pt
        self.device = resolve_device(cfg.runtime)
        self.amp = amp_dtype(cfg.runtime.amp, self.device)
        self.train_rows, self.val_rows, counts = fold_tables(cfg.data, cfg.workdir, fold)
        if len(self.train_rows) == 0 or len(self.val_rows) == 0:
            raise TrainError(
                f"fold {fold} leaves {len(self.train_rows)} training and {len(self.val_rows)} validation images; "
                "run 'kseg split' with fewer folds"
            )
        self.pseudo_share = 0.0
        if pseudo is not None:
            self.train_rows = with_pseudo_rows(self.train_rows, self.val_rows, pseudo.rows)
            self.pseudo_share = pseudo.share
        self.counts = counts
        self.class_pixels = counts.sum(0) if counts is not None else None
        self.classes = list(cfg.data.classes)
        self.spec = MaskSpec.from_config(cfg.data)
        checkpoint = self._resume_checkpoint() if resume else None
        self._build_model(checkpoint)
        self._build_training()
        self.progress = RunProgress()
        if checkpoint is not None:
            self.restore(checkpoint)
        self.train_model = self._wrapped_model()
        self.predictor = Predictor([self.eval_model], PredictOptions.from_config(cfg), self.device, self.amp)

    # ------------------------------------------------------------------------------------ setup

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.amp]

    def _recover(self) -> list[Path]:
        """Finish the commit a killed run started (its staged epoch is complete), then remove what it left
        half-written; returns the removed files. Only this run writes in its fold folder."""
        if self.work.roll_forward(self.fold):
            self.note(f"completed the last epoch's commit of an interrupted run in {self.work.fold_dir(self.fold)}")
        return remove_stale(self.work.fold_dir(self.fold))

    def _resume_checkpoint(self) -> dict[str, Any]:
        last = self.work.last(self.fold)
        if not last.is_file():
            raise TrainError(
                f"no checkpoint to resume: {last} does not exist; run 'kseg train --fold {self.fold}' without --resume"
            )
        checkpoint = load_checkpoint(last)
        mismatch = checkpoint_mismatch(checkpoint, self.cfg.model, self.classes, self.cfg.multilabel)
        if mismatch:
            raise TrainError(f"{last} {mismatch}; resume with the same model and classes, or train without --resume")
        done = int(checkpoint.get("epoch", 0))
        if done > self.cfg.train.epochs:
            raise TrainError(
                f"{last} has already trained {done} epochs but train.epochs is {self.cfg.train.epochs}; to train on, "
                f"set train.epochs above {done}; the best epoch so far is in best.pt already"
            )
        if (checkpoint.get("ema_decay") is not None) != (self.cfg.train.ema is not None):
            raise TrainError(
                f"{last} was trained with train.ema {checkpoint.get('ema_decay')} and the config says "
                f"{self.cfg.train.ema}; resume with the same train.ema, or train without --resume"
            )
        return checkpoint

    def _build_model(self, checkpoint: dict[str, Any] | None) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
        model_cfg = cfg.model if checkpoint is None else cfg.model.model_copy(update={"encoder_weights": None})
        model, source = build_model(model_cfg, len(self.classes))  # a resumed run takes its weights from last.pt
        self.weights_from = str(source)
        self.weights_note = normalization_note(source.report, cfg.data.mean, cfg.data.std)
        if checkpoint is not None:
            # with EMA, "model" holds the averaged weights (what inference loads), "raw_model" the trained ones
            model.load_state_dict(checkpoint.get("raw_model", checkpoint["model"]))
            self.weights_from = f"resumed from {self.work.last(self.fold)} (epoch {checkpoint['epoch']})"
        model.to(self.device)
        if cfg.runtime.channels_last:  # faster on GPUs and, measured here, on CPUs too (scripts/bench_train.py)
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = None
        if cfg.train.ema is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # BatchNorm statistics are averaged too (use_buffers), so the averaged model needs no recalibration
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
            if checkpoint is not None:
                self.ema.module.load_state_dict(checkpoint["model"])
                self.ema.n_averaged.fill_(checkpoint["ema_updates"])
        self.eval_model = self.ema.module if self.ema is not None else model

    def _build_training(self) -> None:
        cfg = self.cfg
        self.loss_fn = loss_from_config(cfg, self.class_pixels).to(self.device)
        self.val_loss_fn = loss_from_config(cfg, self.class_pixels)  # on the CPU, where validation probabilities land
        self.optimizer = build_optimizer(cfg.train, self.model)
        self.dataset = TrainDataset.from_config(self.train_rows, cfg)
        self.sample_weights = None
        if cfg.train.sampling == "rare":
            if self.counts is None:
                raise TrainError("train.sampling: rare needs the class pixel counts of 'kseg split'; run it first")
            self.sample_weights = rare_class_weights(self.counts)
        self.steps_per_epoch = math.ceil(len(self.loader(0)) / cfg.train.accumulate)
        self.scheduler = build_scheduler(cfg.train, self.optimizer, self.steps_per_epoch)
        self.per_step = self.scheduler is not None and cfg.train.scheduler != "plateau"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        aug = cfg.train.augment
        self.mixing = aug.cutmix > 0 or aug.copy_paste > 0
        self.pasted = (
            paste_classes(aug.copy_paste_classes, self.classes, self.class_pixels) if aug.copy_paste > 0 else []
        )

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """The training batches of one epoch (this rank's share)."""
        cfg = self.cfg
        return train_loader(
            self.dataset,
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            epoch=epoch,
            workers=loader_workers(cfg.runtime),
            sample_weights=self.sample_weights,
            rank=self.rank,
            world=self.world,
            pin_memory=pin_memory(cfg.runtime, self.device),
            pseudo_share=self.pseudo_share,
        )

    def _wrapped_model(self) -> nn.Module:
        model: nn.Module = self.model
        if self.cfg.runtime.compile and self.device.type == "cuda":
            try:
                model = torch.compile(model)  # type: ignore[assignment]
            except Exception as exc:  # compile is an optimisation: never a reason to stop
                self.note(f"torch.compile unavailable ({type(exc).__name__}); training uncompiled")
        return distributed.wrap(model, self.device, self.world)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Optimiser, scaler, scheduler, RNG and progress from a ``last.pt``."""
        cfg = self.cfg
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.progress = RunProgress.from_checkpoint(checkpoint)
        if self.scheduler is not None:
            if checkpoint["total_epochs"] == cfg.train.epochs or not self.per_step:
                self.scheduler.load_state_dict(checkpoint["scheduler"])
            else:  # train.epochs changed: the schedule is stretched to the new length from where it was
                # built again on the restored optimiser (a shorter run may have had no schedule, nor its keys)
                self.scheduler = build_scheduler(cfg.train, self.optimizer, self.steps_per_epoch)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for _ in range(checkpoint["steps_done"]):
                        self.scheduler.step()
                self.note(f"train.epochs {checkpoint['total_epochs']} -> {cfg.train.epochs}: schedule stretched")
        if checkpoint.get("rng"):
            set_rng_state(checkpoint["rng"])

    def prepare_outputs(self) -> None:
        """The fold folder, its resolved config and the OOF truth (rank 0)."""
        cfg = self.cfg
        if not self.main:
            return
        self.work.fold_dir(self.fold).mkdir(parents=True, exist_ok=True)
        if self.stale:
            names = ", ".join(p.name for p in self.stale)
            self.note(f"removed {len(self.stale)} unfinished file(s) of an interrupted run: {names}")
        save_resolved(cfg, self.work.fold_config(self.fold))
        if cfg.train.save_oof and not self.work.oof_masks(self.fold).is_file():
            masks, table = oof_truth(self.val_rows, self.spec, (cfg.data.image_size[0], cfg.data.image_size[1]))
            self.work.write_oof_truth(self.fold, masks, table)

    # ------------------------------------------------------------------------------------ steps

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training batches. Returns ``(mean loss over every rank, images per second)``."""
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.train.seed, epoch))
        loader = self.loader(epoch)
        self.train_model.train()
        running, seen, t0 = 0.0, 0, time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        n_batches = len(loader)
        for step, (images, masks) in enumerate(loader):
            loss = self._forward_backward(images, masks)
            value = float(loss.detach())  # a non-finite one stops the run before its step reaches the weights
            check_finite(
                value, f"fold {self.fold}, epoch {epoch + 1}, step {step + 1}: the training loss", cfg.train.lr
            )
            if (step + 1) % cfg.train.accumulate == 0 or step + 1 == n_batches:
                self._optimizer_step()
            running += value * len(images)
            seen += len(images)
            if self.on_step and self.main:
                speed = seen * self.world / max(time.perf_counter() - t0, 1e-9)
                self.on_step(epoch, step + 1, n_batches, running / seen, speed)
        images_per_s = seen * self.world / max(time.perf_counter() - t0, 1e-9)
        return distributed.mean_over_ranks(running, seen, self.world), images_per_s

    def _forward_backward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        aug = self.cfg.train.augment
        if self.mixing:  # batch-level augmentations, on the CPU tensors, from the epoch-seeded generator
            images, masks = cutmix(images, masks, aug.cutmix)
            images, masks = copy_paste(images, masks, aug.copy_paste, self.pasted)
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        if self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.train_model(images)
        loss = self.loss_fn(logits, masks)
        self.scaler.scale(loss / self.cfg.train.accumulate).backward()
        return loss

    def _optimizer_step(self) -> None:
        if self.cfg.train.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.steps_done += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self.per_step:
            self.scheduler.step()

    def validate(self, epoch: int, train_loss: float, images_per_s: float, started: float) -> EpochStats:
        """Score the held-out fold (rank 0); keeps its OOF probabilities when the epoch is the best so far."""
        stats = self.score(self.predictor, epoch + 1, train_loss, images_per_s, started)
        check_finite(stats.val_loss, f"fold {self.fold}, epoch {epoch + 1}: the validation loss", self.cfg.train.lr)
        if stats.best:
            self.progress.best_score, self.progress.best_epoch, self.progress.bad_epochs = stats.val_score, epoch + 1, 0
        else:
            self.progress.bad_epochs += 1
        return stats

    def score(
        self, predictor: Predictor, epoch: int, train_loss: float, images_per_s: float, started: float
    ) -> EpochStats:
        """Validate ``predictor``'s model as an epoch is validated. Its OOF probabilities are left staged
        (``oof.npy.next``, for ``save`` to commit) only when it beats the best score so far."""
        cfg = self.cfg
        oof: Any = None  # a numpy memmap
        if cfg.train.save_oof:
            oof = self.work.open_oof(self.fold, (len(self.val_rows), len(self.classes), *cfg.data.image_size))
        for model in predictor.models:
            model.eval()
        sub = cfg.submission
        fbeta = instance_buffer(len(self.val_rows), len(self.classes), sub.metric, sub.beta)
        val_loss, counts = evaluate(
            predictor, self.val_rows, self.spec, self.val_loss_fn, channels=cfg.model.in_channels, oof=oof, fbeta=fbeta
        )
        dice, class_dice, class_iou = summarize(counts, self.classes)
        score = validation_score(counts, None if fbeta is None else fbeta[0], cfg.scored_classes, sub.metric)
        accuracy, precision, recall = pixel_metrics(counts)
        improved = score > self.progress.best_score
        if oof is not None:
            oof.flush()
            del oof
            if not improved:  # only the best model's probabilities are kept
                self.work.staged(self.fold, "oof.npy").unlink(missing_ok=True)
        return EpochStats(
            epoch=epoch,
            lr=self.optimizer.param_groups[0]["lr"],
            train_loss=train_loss,
            val_loss=val_loss,
            val_dice=dice,
            class_dice=class_dice,
            class_iou=class_iou,
            images_per_s=images_per_s,
            seconds=time.perf_counter() - started,
            best=improved,
            pixel_accuracy=accuracy,
            class_precision=dict(zip(self.classes, precision.tolist(), strict=True)),
            class_recall=dict(zip(self.classes, recall.tolist(), strict=True)),
            val_score=score,
        )

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything ``last.pt`` needs for an exact resume (``best.pt`` keeps its ``inference_state``)."""
        p = self.progress
        state = {
            "model": self.eval_model.state_dict() if self.ema is not None else unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": epoch + 1,
            "total_epochs": self.cfg.train.epochs,
            "steps_done": p.steps_done,
            "best_score": p.best_score,
            "best_epoch": p.best_epoch,
            "bad_epochs": p.bad_epochs,
            "history": p.history,
            "config": self.cfg.model_dump(mode="json"),
            "classes": self.classes,
            "fold": self.fold,
            "kseg_version": __version__,
            "rng": rng_state(),
        }
        if self.ema is not None:
            state["raw_model"] = unwrap(self.model).state_dict()
            state["ema_decay"] = self.cfg.train.ema
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    def save(self, epoch: int, best: bool) -> None:
        """The epoch's ``last.pt``, ``metrics.csv``, if best ``best.pt`` and ``oof.npy`` (and its weights when
        ``train.average`` takes them), put in place together (a kill leaves the last set whole); ``curves.png``."""
        state = self.state(epoch)
        names = ["last.pt", "metrics.csv"]
        if best:
            save_checkpoint(self.work.staged(self.fold, "best.pt"), inference_state(state))
            names.insert(0, "best.pt")
            if self.work.staged(self.fold, "oof.npy").exists():
                names.insert(1, "oof.npy")
        keep = self.averaged_epochs()
        if epoch + 1 in keep:
            snapshot = self.work.snapshot(self.fold, epoch + 1).name
            save_checkpoint(self.work.staged(self.fold, snapshot), {"model": state["model"], "epoch": epoch + 1})
            names.append(snapshot)
        save_checkpoint(self.work.staged(self.fold, "last.pt"), state)
        table = pd.DataFrame(self.progress.history)
        self.work.write_metrics(self.fold, table, staged=True)
        self.work.commit(self.fold, names)
        for old in set(self.work.snapshot_epochs(self.fold)) - set(keep):
            self.work.snapshot(self.fold, old).unlink(missing_ok=True)  # no longer among those averaged
        training_curves(table, self.work.curves(self.fold), self.fold)

    def averaged_epochs(self) -> list[int]:
        """The epochs (1-based) ``train.average`` takes as the history stands; none without it."""
        k = self.cfg.train.average
        if k is None:
            return []
        return epochs_to_average(self.progress.history, k, self.cfg.train.average_rule)

    def share_progress(self) -> None:
        """Rank 0's history and best-so-far on every rank."""
        p = self.progress
        p.history = distributed.broadcast(p.history, self.rank, self.world)
        p.best_score, p.best_epoch, p.bad_epochs = distributed.broadcast(
            (p.best_score, p.best_epoch, p.bad_epochs), self.rank, self.world
        )

    def result(self, stopped_early: bool) -> FoldResult:
        p = self.progress
        return FoldResult(
            fold=self.fold,
            dir=self.work.fold_dir(self.fold),
            best_epoch=p.best_epoch,
            best_score=p.best_score,
            epochs_done=len(p.history),
            stopped_early=stopped_early,
            metrics=pd.DataFrame(p.history),
            weights_from=self.weights_from,
            device=str(self.device),
            precision=self.precision,
            metric=self.cfg.submission.metric,
        )
