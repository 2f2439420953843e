"""One fold's run: its ``SegTask`` and ``FoldData`` (``kseg.training.build``), where it stands
(``RunProgress``), how it is validated, and the files it writes under ``fold<N>/`` (an epoch's set committed
together through the fold's journal). ``kseg.training.train.train_fold`` runs it with the one loop,
``kseg.training.loop.fit``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from kseg import __version__
from kseg.config import Config, save_resolved
from kseg.data.reading import MaskSpec
from kseg.io import remove_stale
from kseg.metrics.scores import pixel_metrics
from kseg.models.averaging import epochs_to_average
from kseg.models.checkpoint import inference_state, rng_state, save_checkpoint, set_rng_state
from kseg.plotting import training_curves
from kseg.prediction.predictor import PredictOptions, Predictor
from kseg.runtime import PRECISION_NAMES, amp_dtype, resolve_device
from kseg.training import distributed
from kseg.training.build import FoldData, build_task, compiled, resume_checkpoint, steps_per_epoch
from kseg.training.dataset import PseudoRows
from kseg.training.distributed import Ranks
from kseg.training.evaluation import EpochStats, evaluate, instance_buffer, oof_truth, summarize, validation_score
from kseg.training.foldstate import FoldResult, NoteCallback, RunProgress, check_finite
from kseg.training.loop import Callback
from kseg.training.losses import loss_from_config
from kseg.training.optim import build_scheduler
from kseg.workspace.oof import OOF_PRESENCE, open_oof, stage_oof_presence, write_oof_truth
from kseg.workspace.workdir import WorkDir


class FoldRun:
    """One fold's training, built from the config.

    Args:
        cfg: The experiment config.
        fold: Fold number of ``folds.csv`` to hold out.
        resume: Continue from ``fold<N>/last.pt``.
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
        on_note: NoteCallback | None = None,
        pseudo: PseudoRows | None = None,
    ):
        self.cfg, self.fold = cfg, fold
        self.note = on_note or (lambda _msg: None)
        self.work = WorkDir(cfg.workdir)
        self.journal = self.work.journal(fold)
        self.ranks = Ranks.joined()
        self.stale = self._recover() if self.ranks.main else []
        self.ranks.barrier()  # every rank then reads the recovered last.pt
        self.device = resolve_device(cfg.runtime)
        self.amp = amp_dtype(cfg.runtime.amp, self.device)
        self.data = FoldData.from_config(cfg, fold, self.device, self.ranks, pseudo)
        self.classes = list(cfg.data.classes)
        self.spec = MaskSpec.from_config(cfg.data)
        checkpoint = None
        if resume:
            last = self.work.last(fold)
            checkpoint = resume_checkpoint(last, fold, cfg.model, self.classes, cfg.multilabel, cfg.train)
        built = build_task(cfg, self.data, self.device, self.amp, resumed=checkpoint is not None)
        self.task, self.weights_note, self.pasted = built.task, built.weights_note, built.pasted
        self.weights_from = built.weights_from
        self.progress = RunProgress()
        if checkpoint is not None:
            self.restore(checkpoint)
        self.task.forward_model = distributed.wrap(
            compiled(self.task.model, cfg.runtime.compile, self.device, self.note), self.device, self.ranks.world
        )
        self.val_loss_fn = loss_from_config(cfg, self.data.class_pixels)  # on the CPU, where probabilities land
        self.predictor = Predictor([self.task.eval_model], PredictOptions.from_config(cfg), self.device, self.amp)

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.amp]

    def _recover(self) -> list[str]:
        """Finish the commit a killed run started (its staged epoch is complete), then remove what it left
        half-written; returns the removed files' names. Only this run writes in its fold folder."""
        if self.journal.roll_forward():
            self.note(f"completed the last epoch's commit of an interrupted run in {self.work.fold_dir(self.fold)}")
        return [path.name for path in remove_stale(self.work.fold_dir(self.fold))]

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Weights, optimiser, scaler, schedule, RNG and progress from a ``last.pt``; a run whose
        ``train.epochs`` changed gets its per-step schedule stretched to the new length from where it was."""
        cfg = self.cfg
        stretch = checkpoint["total_epochs"] != cfg.train.epochs and self.task.per_step

        def new_schedule(optimizer: torch.optim.Optimizer) -> Any:
            return build_scheduler(cfg.train, optimizer, steps_per_epoch(self.data, cfg.train.accumulate))

        self.task.load_state_dict(checkpoint, new_schedule=new_schedule if stretch else None)
        if stretch:
            self.note(f"train.epochs {checkpoint['total_epochs']} -> {cfg.train.epochs}: schedule stretched")
        self.progress = RunProgress.from_checkpoint(checkpoint)
        self.weights_from = f"resumed from {self.work.last(self.fold)} (epoch {checkpoint['epoch']})"
        if checkpoint.get("rng"):
            set_rng_state(checkpoint["rng"])

    def prepare_outputs(self) -> None:
        """The fold folder, its resolved config and the OOF truth (rank 0)."""
        cfg = self.cfg
        if not self.ranks.main:
            return
        self.work.fold_dir(self.fold).mkdir(parents=True, exist_ok=True)
        if self.stale:
            self.note(f"removed {len(self.stale)} unfinished file(s) of an interrupted run: {', '.join(self.stale)}")
        save_resolved(cfg, self.work.fold_config(self.fold))
        if cfg.train.save_oof and not self.work.oof_masks(self.fold).is_file():
            size = (cfg.data.image_size[0], cfg.data.image_size[1])
            masks, table = oof_truth(self.data.val_rows, self.spec, size)
            write_oof_truth(self.work, self.fold, masks, table)

    def validate(self, epoch: int, train_loss: float, images_per_s: float, started: float) -> EpochStats:
        """Score the held-out fold after an epoch (rank 0); stops a run whose validation loss diverged."""
        stats = self.score(self.predictor, epoch + 1, train_loss, images_per_s, started)
        check_finite(stats.val_loss, f"fold {self.fold}, epoch {epoch + 1}: the validation loss", self.cfg.train.lr)
        return stats

    def score(
        self, predictor: Predictor, epoch: int, train_loss: float, images_per_s: float, started: float
    ) -> EpochStats:
        """Validate ``predictor``'s model as an epoch is validated. Its OOF probabilities are left staged
        (``oof.npy.next``, for ``save`` to commit) only when it beats the best score so far."""
        cfg, val_rows = self.cfg, self.data.val_rows
        oof: Any = None  # a numpy memmap
        presence = None
        if cfg.train.save_oof:
            oof = open_oof(self.work, self.fold, (len(val_rows), len(self.classes), *cfg.data.image_size))
            if predictor.has_presence:
                presence = np.zeros((len(val_rows), len(self.classes)), dtype=np.float32)
        for model in predictor.models:
            model.eval()
        sub = cfg.submission
        fbeta = instance_buffer(len(val_rows), len(self.classes), sub.metric, sub.beta)
        val_loss, counts = evaluate(
            predictor,
            val_rows,
            self.spec,
            self.val_loss_fn,
            channels=cfg.model.in_channels,
            oof=oof,
            presence=presence,
            fbeta=fbeta,
        )
        dice, class_dice, class_iou = summarize(counts, self.classes)
        score = validation_score(counts, None if fbeta is None else fbeta[0], cfg.scored_classes, sub.metric)
        accuracy, precision, recall = pixel_metrics(counts)
        improved = score > self.progress.best_score
        if oof is not None:
            oof.flush()
            del oof
            if not improved:  # only the best model's probabilities are kept
                self.journal.staged("oof.npy").unlink(missing_ok=True)
            elif presence is not None:
                stage_oof_presence(self.work, self.fold, presence)
        return EpochStats(
            epoch=epoch,
            lr=self.task.lr,
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
        task = self.task.state_dict()
        state = {
            **{key: task[key] for key in ("model", "optimizer", "scheduler", "scaler")},
            "epoch": epoch + 1,
            "total_epochs": self.cfg.train.epochs,
            "steps_done": task["steps_done"],
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
        if self.task.ema is not None:
            state.update(raw_model=task["raw_model"], ema_decay=self.cfg.train.ema, ema_updates=task["ema_updates"])
        return state

    def save(self, epoch: int, best: bool) -> None:
        """The epoch's ``last.pt``, ``metrics.csv``, if best ``best.pt`` and ``oof.npy`` (and its weights when
        ``train.average`` takes them), put in place together (a kill leaves the last set whole); ``curves.png``."""
        journal = self.journal
        state = self.state(epoch)
        names = ["last.pt", "metrics.csv"]
        if best:
            save_checkpoint(journal.staged("best.pt"), inference_state(state))
            names.insert(0, "best.pt")
            names[1:1] = self.staged_oof()
        keep = self.averaged_epochs()
        if epoch + 1 in keep:
            snapshot = self.work.snapshot(self.fold, epoch + 1).name
            save_checkpoint(journal.staged(snapshot), {"model": state["model"], "epoch": epoch + 1})
            names.append(snapshot)
        save_checkpoint(journal.staged("last.pt"), state)
        table = pd.DataFrame(self.progress.history)
        self.work.write_metrics(self.fold, table, staged=True)
        journal.commit(names)
        for old in set(self.work.snapshot_epochs(self.fold)) - set(keep):
            self.work.snapshot(self.fold, old).unlink(missing_ok=True)  # no longer among those averaged
        training_curves(table, self.work.curves(self.fold), self.fold)

    def staged_oof(self) -> list[str]:
        """The OOF files staged for the next commit: ``oof.npy`` and, from a model with a presence head,
        ``oof_presence.npy``. A head-less model's staged ``oof.npy`` makes an earlier run's presence scores
        stale: they are removed."""
        if not self.journal.staged("oof.npy").exists():
            return []
        if self.journal.staged(OOF_PRESENCE).exists():
            return ["oof.npy", OOF_PRESENCE]
        self.work.oof_presence(self.fold).unlink(missing_ok=True)
        return ["oof.npy"]

    def averaged_epochs(self) -> list[int]:
        """The epochs (1-based) ``train.average`` takes as the history stands; none without it."""
        k = self.cfg.train.average
        if k is None:
            return []
        return epochs_to_average(self.progress.history, k, self.cfg.train.average_rule)

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


class CommitEpoch(Callback):
    """Writes and commits each validated epoch's files (rank 0), after the schedule's step."""

    def __init__(self, run: FoldRun):
        self.run = run

    def on_epoch_end(self, epoch: int, stats: EpochStats | None, progress: RunProgress) -> None:
        if stats is not None:
            self.run.save(epoch, stats.best)
