"""The training loop: :func:`fit` runs a config from scratch or a checkpoint to a final evaluation.

One optimizer step = ``optim.accum_steps`` micro-batches per process: augment on the device,
forward under autocast, backward (DDP all-reduces gradients on the last micro-batch only),
then unscale, clip, step, schedule (per step) and EMA update. Losses stay on the device and
are read back every ``log.every_steps`` steps and before each checkpoint, which is also when a
non-finite loss is noticed: the run then stops naming the step where it first appeared, and
no checkpoint ever stores the damaged weights.

Reproducibility and resume. Every random draw of a step (augmentation, drop path, dropout,
MixToken) comes from generators reseeded from ``(train.seed, step, micro-batch, rank)`` at the
start of that micro-batch (:func:`seed_step`), and the data order from ``(seed, epoch)``
(:mod:`tokenmix.data.loader`). So a checkpoint needs only counters besides the weights and
optimizer state, and a run killed at any point and resumed with ``--resume`` repeats the
uninterrupted run's steps exactly on CPU (on GPU, up to non-deterministic kernels).

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``tb/``
(TensorBoard), ``checkpoints/`` (:mod:`tokenmix.engine.checkpoint`), ``plots/`` and
``results.json`` (the final evaluation), and ``.train.lock``: one run at a time holds it for
its whole life (:mod:`tokenmix.engine.runlock`), so two runs never mix in one folder. A
resume may change only the settings :mod:`tokenmix.engine.resume` allows, and applies those
exactly; resuming before the folder's latest checkpoint (or starting afresh in a folder that
holds checkpoints) moves the later ones to ``branches/`` instead of mixing or pruning them.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tokenmix.config import Config, dump_yaml, to_dict
from tokenmix.data.augment import AugmentedBatch
from tokenmix.data.token_labels import TokenLabelStore, token_label_targets

from .. import kernels
from ..viz.text import display_name
from . import checkpoint as ckpt
from .build import (
    Loss,
    attach_transforms,
    build_augment,
    build_loaders,
    build_loss,
    build_model,
    open_datasets,
)
from .distributed import (
    DistInfo,
    align_grad_strides,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from .ema import create_ema, load_ema
from .evaluate import EvalResult, evaluate, num_views
from .metrics import METRICS_FILE, MetricsWriter, progress_bar, read_metrics
from .optim import create_optimizer, create_scheduler
from .predict import grid_samples, predict_topk
from .resume import check_resume_changes, move_later_aside
from .runlock import RunFolderError, RunLock, describe_os_error

log = logging.getLogger("tokenmix")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving."""


@dataclass
class Counters:
    """Where training stands: what a checkpoint restores besides the state dicts."""

    epoch: int = 0  # epoch in progress
    step: int = 0  # optimizer steps done
    best_metric: float | None = None
    best_step: int | None = None


@dataclass
class FitResult:
    """What a finished run reports (also written to ``results.json``)."""

    run_dir: str
    steps: int
    epochs: int
    wall_time_s: float
    final: dict[str, float] = field(default_factory=dict)
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None
    best_step: int | None = None
    plots: list[str] = field(default_factory=list)


# --- small pieces with explicit inputs -------------------------------------------------------
def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and ``keys`` (NumPy's SeedSequence hashing)."""
    words = np.random.SeedSequence([seed, *(k & 0xFFFFFFFF for k in keys)]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


def seed_step(seed: int, step: int, micro: int, rank: int) -> int:
    """Reseed Python, NumPy and torch (CPU and CUDA) for one micro-batch; returns the seed.

    Making every draw a function of ``(seed, step, micro, rank)`` lets a resumed run continue
    the same random stream on any number of processes without saving generator states.
    """
    s = step_seed(seed, step, micro, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def autocast_context(device: torch.device, amp: str) -> Callable[[], AbstractContextManager]:
    """A factory of autocast contexts for ``train.amp`` (float32: a null context).

    ``auto`` is bf16 where the device has bf16 units and float32 elsewhere; an explicit bf16
    without them warns once and runs float32 (:func:`tokenmix.kernels.resolve_amp`).
    """
    try:
        dtype = kernels.resolve_amp(amp, device)
    except ValueError as e:
        raise ValueError(f"train.amp: {e}") from None
    if dtype is None:
        return nullcontext
    return lambda: kernels.autocast(device, dtype)


def micro_batches(batches: Iterable[Any], accum_steps: int) -> Iterator[list[Any]]:
    """Group loader batches into the ``accum_steps`` micro-batches of each optimizer step."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []


def forward_backward(
    model: nn.Module,
    batch: AugmentedBatch,
    dense: torch.Tensor | None,
    *,
    loss_fn: Loss,
    scaler: torch.amp.GradScaler,
    autocast: Callable[[], AbstractContextManager],
    loss_scale: float,
    sync: bool,
) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its detached, unscaled loss.

    ``sync=False`` skips DDP's gradient all-reduce (every micro-batch but the last);
    ``loss_scale = 1 / accum_steps`` makes accumulated gradients the micro-batches' mean.
    """
    no_sync = getattr(model, "no_sync", None)
    with no_sync() if (no_sync is not None and not sync) else nullcontext():
        with autocast():
            outputs = model(batch.images)
        loss = loss_fn(outputs, batch, dense)
        scaler.scale(loss * loss_scale).backward()
    return loss.detach()


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    clip_grad: float | None,
) -> None:
    """Unscale, clip the global gradient norm, step, update the loss scale, clear the grads."""
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def dense_targets(
    store: TokenLabelStore,
    dataset: Any,
    indices: torch.Tensor,
    batch: AugmentedBatch,
    grid: tuple[int, int],
    num_classes: int,
) -> torch.Tensor:
    """Token-label targets ``[B, N, C]``, cropped, flipped and mixed exactly as the images."""
    values, idx = store.load([dataset.sample_id(int(i)) for i in indices])
    device = batch.images.device
    dense, _ = token_label_targets(
        values.to(device), idx.to(device), batch.boxes, grid, num_classes, flip=batch.flips
    )
    if batch.mix.mode is None:
        return dense
    b, n, c = dense.shape
    maps = batch.mix.mix_maps(dense.transpose(1, 2).reshape(b, c, *grid))
    return maps.reshape(b, c, n).transpose(1, 2)


def is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor.endswith("loss") else value > best


# --- the run ---------------------------------------------------------------------------------
def fit(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    on_start: Callable[[Trainer], None] | None = None,
) -> FitResult:
    """Train ``cfg`` in ``run_dir``, from the step checkpoint ``resume`` when given.

    Joins the ``torchrun`` process group when launched by it; only rank 0 writes files, and
    rank 0 holds the run folder's lock from start to end. ``on_start(trainer)`` runs on rank 0
    once the run is built and restored, before the first step (the CLI's run header).

    Raises:
        RunLockedError: another run is using ``run_dir`` (the message names its PID).
        RunFolderError: ``run_dir`` cannot be written (read-only, full), naming the file.
        CheckpointWriteError: a checkpoint could not be written; earlier ones are intact.
        ResumeConfigError: ``cfg`` changes a setting the checkpoint cannot continue under.
    """
    dist = init_distributed(cfg.train.device)
    run_dir = Path(run_dir)
    new_folder = not run_dir.exists()
    lock = RunLock(run_dir) if dist.is_main else None
    try:
        if lock is not None:
            lock.acquire()
            remove_leftovers(run_dir)
        trainer = Trainer(cfg, run_dir, dist)
        if resume is not None:
            trainer.restore(Path(resume))
        elif dist.is_main:  # a fresh run: an earlier run's checkpoints go aside, not mixed in
            move_later_aside(run_dir, 0)
        if on_start is not None and dist.is_main:
            on_start(trainer)
        return trainer.run()
    except OSError as e:
        if isinstance(e, ckpt.CheckpointWriteError) or not _is_run_folder_error(e, run_dir):
            raise
        last = ckpt.latest_checkpoint(run_dir / "checkpoints")
        where = f"{e.filename} in the run folder {run_dir}" if e.filename else f"to {run_dir}"
        raise RunFolderError(
            f"{describe_os_error(e)} while writing {where}: {e}. "
            + (f"The last checkpoint {last.name} is intact; " if last else "")
            + "fix the cause, then continue with --resume"
        ) from e
    finally:
        if lock is not None:
            lock.release()
            # a run refused before it wrote anything (bad config) leaves no folder behind
            if new_folder and {p.name for p in run_dir.iterdir()} <= {lock.path.name}:
                shutil.rmtree(run_dir, ignore_errors=True)
        shutdown()


def _is_run_folder_error(e: OSError, run_dir: Path) -> bool:
    """Whether ``e`` is a failure to write the run folder (not, say, a missing data file).

    A file object's ``write`` (``metrics.jsonl``) reports no file name; then only the error
    codes that writing alone produces count.
    """
    if e.filename is None:
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    try:
        Path(e.filename).resolve().relative_to(run_dir.resolve())
    except (TypeError, ValueError):
        return False
    return True


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files and folders killed writes left in ``run_dir`` (call it
    holding the run's lock: a live run's temporaries look the same)."""
    removed = ckpt.remove_leftovers(run_dir / "checkpoints")
    for name in ("config.yaml", "results.json", METRICS_FILE):
        tmp = run_dir / f".{name}.tmp"
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    if removed:
        log.info("removed leftovers of an interrupted write: %s", ", ".join(map(str, removed)))


class Trainer:
    """The live objects of one run and the steps of its loop, each a short method.

    Args:
        cfg: the checked config.
        run_dir: where this run writes (rank 0 only).
        dist: this process's place in the process group.
    """

    def __init__(self, cfg: Config, run_dir: Path, dist: DistInfo) -> None:
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.device = dev = dist.device
        tc, world, accum = cfg.train, dist.world_size, cfg.optim.accum_steps
        if tc.batch_size % (world * accum):
            raise ValueError(
                f"train.batch_size={tc.batch_size} must be divisible by processes x "
                f"optim.accum_steps = {world} x {accum}"
            )
        self.autocast = autocast_context(dev, tc.amp)
        if tc.cpu_threads is not None:
            torch.set_num_threads(tc.cpu_threads)
        self.allocator = "system malloc"
        if dev.type == "cpu" and tc.cpu_allocator == "retain":
            retained = kernels.retain_freed_memory()
            self.allocator = retained or "system malloc (retain needs glibc's mallopt)"
        seed_step(tc.seed, -1, 0, 0)  # initial weights: identical on every rank

        self.train_set, self.val_set = open_datasets(cfg.data, seed=tc.seed)
        self.classes = list(self.train_set.classes)
        self.num_classes = cfg.model.num_classes or len(self.classes)
        if self.num_classes != len(self.classes):
            raise ValueError(
                f"model.num_classes={self.num_classes} but the data has {len(self.classes)} classes"
            )
        token_labeling = cfg.loss.kind == "token_labeling"
        if token_labeling and cfg.aug.size_schedule:
            raise ValueError(
                "aug.size_schedule cannot be used with loss.kind=token_labeling: the token "
                "labels are cropped to the model's token grid, not the smaller one"
            )
        self.model = build_model(
            cfg.model, num_classes=self.num_classes, token_labeling=token_labeling
        )
        pcfg = self.model.pretrained_cfg
        img_size = (pcfg.input_size[1], pcfg.input_size[2])
        self.normalize = attach_transforms(self.train_set, self.val_set, cfg.data, pcfg).to(dev)
        self.train_loader, self.val_loader = build_loaders(
            self.train_set,
            self.val_set,
            cfg.data,
            micro_batch=tc.batch_size // (world * accum),
            eval_batch=max(1, (tc.eval_batch_size or tc.batch_size) // world),
            seed=tc.seed,
            rank=dist.rank,
            world_size=world,
            progress=cfg.log.progress and dist.is_main,
        )
        self.steps_per_epoch = self.train_loader.batches_per_epoch // accum
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set ({len(self.train_set)} images) is smaller than one step "
                f"(train.batch_size={tc.batch_size}); lower the batch size or add data"
            )
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)
        self.augment = build_augment(
            cfg.aug,
            img_size=img_size,
            num_classes=self.num_classes,
            smoothing=0.0 if token_labeling else cfg.loss.label_smoothing,
            mean=tuple(self.normalize.mean.flatten().tolist()),
            std=tuple(self.normalize.std.flatten().tolist()),
            seed=tc.seed,
        )
        self.loss_fn = build_loss(cfg.loss)
        self.store = (
            TokenLabelStore(cfg.loss.token_labels)
            if token_labeling and cfg.loss.token_labels
            else None
        )

        self.model.to(dev)
        if tc.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if tc.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.ema = create_ema(self.model, cfg.ema.decay) if cfg.ema.enabled else None
        self.optimizer = create_optimizer(self.model, cfg.optim)
        self.scheduler = create_scheduler(
            self.optimizer,
            cfg.sched,
            base_lr=cfg.optim.lr,
            steps_per_epoch=self.steps_per_epoch,
            epochs=tc.epochs,
        )
        self.scaler = torch.amp.GradScaler(dev.type, enabled=tc.amp == "fp16")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # what runs the training forward: DDP around the model, compiled if asked
        self.ddp: nn.Module = self.model
        if dist.distributed:
            align_grad_strides(self.model)
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        self.forward_model = torch.compile(self.ddp) if tc.compile else self.ddp

        self.counters = Counters()
        self.resumed = False
        self.ckpt_dir = run_dir / "checkpoints"
        self.meta = {
            "format": "tokenmix-train",
            "model": cfg.model.name,
            "config": json.dumps(to_dict(cfg)),
            "classes": json.dumps(self.classes),
        }
        self._window = torch.zeros((), device=dev)
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
        self.metrics: MetricsWriter | None = None

    # --- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything besides the weights that continuing this run needs."""
        return {
            "counters": asdict(self.counters),
            "loader": self.train_loader.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "seed": self.cfg.train.seed,
        }

    def restore(self, path: Path) -> None:
        """Load a step checkpoint (weights, EMA, optimizer, schedule, scaler, counters, loader).

        The run continues under ``self.cfg``: settings that differ from the checkpoint's
        stored config are applied exactly or refused (:mod:`tokenmix.engine.resume`), and
        checkpoints of this folder later than ``path`` are moved to a branch folder.
        """
        state = ckpt.load_train_state(path)
        stored = ckpt.read_metadata(path / ckpt.MODEL_FILE).get("config")
        changes = check_resume_changes(json.loads(stored), self.cfg, path) if stored else []
        self.model.load_state_dict(ckpt.load_checkpoint_weights(path))
        if self.ema is not None:
            if not (path / ckpt.EMA_FILE).is_file():
                raise ValueError(f"{path}: ema.enabled=true but the checkpoint has no EMA weights")
            load_ema(
                self.ema, ckpt.load_checkpoint_weights(path, ckpt.EMA_FILE), state["ema_updates"]
            )
        self._restore_optimization(state)
        self.train_loader.load_state_dict(state["loader"])
        self.counters = Counters(**state["counters"])
        self.resumed = True
        if self.dist.is_main:
            move_later_aside(self.run_dir, self.counters.step)
        barrier()
        if changes and self.dist.is_main:
            log.warning("resuming with changed settings: %s", "; ".join(changes))
        log.info(
            "resumed %s at epoch %d, step %d", path, self.counters.epoch + 1, self.counters.step
        )

    def _restore_optimization(self, state: dict[str, Any]) -> None:
        """Optimizer, schedule and scaler state, with the hyper-parameters of ``self.cfg``.

        The saved param groups carry the old run's lr, weight decay, betas, ...; they are
        overwritten with those of the freshly built optimizer. The scheduler keeps its step
        count but takes its base rates and lambda from the fresh one, which was built from
        the current ``optim.lr``, ``sched.*`` and ``train.epochs``; so the rate continues
        exactly as a run started with the current config would have it at this step (and,
        with an unchanged config, bit for bit as before).
        """
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, values in zip(self.optimizer.param_groups, fresh, strict=True):
            group.update(values)
        sched = self.scheduler
        sched.load_state_dict(state["scheduler"])
        sched.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        lrs = [
            base * fn(sched.last_epoch)
            for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)
        ]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = lrs
        if not self.scaler.is_enabled():
            return  # fp16 off from here: the saved scale, if any, has no use
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        else:
            log.info("train.amp=fp16 from this resume on: starting a fresh gradient scaler")

    def save(self) -> None:
        """A step checkpoint (rank 0 writes; every rank waits for it)."""
        if self.dist.is_main:
            c = self.counters
            ckpt.save_checkpoint(
                self.ckpt_dir,
                c.step,
                model_state=self.model.state_dict(),
                train_state=self.state(),
                meta={**self.meta, "step": c.step, "epoch": c.epoch},
                ema_state=self.ema.module.state_dict() if self.ema is not None else None,
                keep_last=self.cfg.checkpoint.keep_last,
            )
        barrier()

    def save_best(self, results: dict[str, float]) -> None:
        """Keep the weights with the best monitored metric in ``best.safetensors``."""
        cc, c = self.cfg.checkpoint, self.counters
        value = results.get(cc.monitor)
        if not cc.keep_best or value is None or not is_better(value, c.best_metric, cc.monitor):
            return
        c.best_metric, c.best_step = value, c.step
        use_ema = cc.monitor.startswith("ema_") and self.ema is not None
        net = self.ema.module if use_ema else self.model
        if self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            meta = {
                **self.meta,
                "step": c.step,
                "epoch": c.epoch,
                "monitor": cc.monitor,
                "value": value,
                "weights": "ema" if use_ema else "model",
            }
            ckpt.save_best(self.ckpt_dir, net.state_dict(), meta)

    # --- steps ------------------------------------------------------------------------------
    def train_step(self, group: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """One optimizer step over the micro-batches in ``group``."""
        accum, step = len(group), self.counters.step
        for m, (images, labels, indices) in enumerate(group):
            self.augment.generator.manual_seed(
                seed_step(self.cfg.train.seed, step, m, self.dist.rank)
            )
            batch = self.augment(
                images.to(self.device, non_blocking=True),
                labels,
                indices=indices,
                epoch=self.counters.epoch,
            )
            if self.cfg.train.channels_last:
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            dense = None
            if self.store is not None:
                dense = dense_targets(
                    self.store,
                    self.train_set,
                    indices,
                    batch,
                    self.model.grid_size,
                    self.num_classes,
                )
            last = m == accum - 1
            loss = forward_backward(
                self.forward_model if last else self.ddp,
                batch,
                dense,
                loss_fn=self.loss_fn,
                scaler=self.scaler,
                autocast=self.autocast,
                loss_scale=1.0 / accum,
                sync=last,
            )
            self._window += loss / accum
            bad = (self._first_bad < 0) & ~torch.isfinite(loss)
            self._first_bad = torch.where(bad, step, self._first_bad)
        optimizer_step(self.optimizer, self.scaler, self.params, self.cfg.optim.clip_grad)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.counters.step += 1
        self._window_steps += 1

    def flush_log(self) -> float | None:
        """Read back the mean loss since the last flush (one sync), check it, record it."""
        if self._window_steps == 0:
            return None
        flags = torch.stack([self._window / self._window_steps, (self._first_bad >= 0).float()])
        total = all_reduce_sum(flags).tolist()  # the one device sync of the window
        loss, c = total[0] / self.dist.world_size, self.counters
        if total[1] > 0 or not math.isfinite(loss):
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            at = int(self._first_bad) if int(self._first_bad) >= 0 else c.step - 1
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) at step {at + 1} (epoch {c.epoch + 1}); stopped "
                f"without saving. Last good checkpoint: {last or 'none'}. Try a lower optim.lr, "
                "optim.clip_grad, or train.amp=none."
            )
        elapsed = time.perf_counter() - self._window_start
        assert self.metrics is not None
        self.metrics.write(
            "train",
            c.step,
            epoch=round(c.step / self.steps_per_epoch, 4),
            loss=loss,
            lr=self.optimizer.param_groups[0]["lr"],
            samples_per_s=round(
                self._window_steps * self.cfg.train.batch_size / max(elapsed, 1e-9), 2
            ),
        )
        self._window = torch.zeros((), device=self.device)
        self._window_steps, self._window_start = 0, time.perf_counter()
        return loss

    def evaluate(self, last: bool = False) -> dict[str, EvalResult]:
        """Evaluate the model (and its EMA), record the metrics, update the best weights.

        ``last``: the run's final evaluation, the one ``eval.tta: last`` saves the test-time
        views for.
        """
        ec = self.cfg.eval
        tta = last or ec.tta == "every"
        hflip, shift = (ec.hflip, ec.shift) if tta else (False, 0)
        results: dict[str, EvalResult] = {}
        nets = {"": self.model, "ema_": self.ema.module if self.ema is not None else None}
        for prefix, net in nets.items():
            if net is None:
                continue
            results[prefix] = evaluate(
                net,
                ((x, y) for x, y, _ in self.val_loader),
                num_classes=self.num_classes,
                device=self.device,
                prepare=self.normalize,
                autocast=self.autocast,
                total=len(self.val_loader.sampler),
                progress=self.cfg.log.progress and self.dist.is_main,
                hflip=hflip,
                shift=shift,
            )
        values: dict[str, float] = {}
        for prefix, r in results.items():
            values.update(r.as_dict(prefix))
        c = self.counters
        assert self.metrics is not None
        views = num_views(hflip, shift)
        self.metrics.write("eval", c.step, epoch=c.epoch, views=views, **values)
        if self.dist.is_main:
            log.info(
                "eval at step %d (%d view%s per image): %s",
                c.step,
                views,
                "s" if views > 1 else "",
                ", ".join(f"{k} {v:.4g}" for k, v in values.items()),
            )
        self.save_best(values)
        return results

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> FitResult:
        """Train to ``train.epochs`` (or ``train.max_steps``), evaluate, write results and plots."""
        t0 = time.perf_counter()
        cfg, c, dist = self.cfg, self.counters, self.dist
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write(self.run_dir / "config.yaml", lambda p: p.write_text(dump_yaml(cfg)))
        self.metrics = MetricsWriter(
            self.run_dir,
            enabled=dist.is_main,
            tensorboard=cfg.log.tensorboard,
            # a fresh run drops what a killed first attempt (no checkpoint yet) logged
            resume_step=(
                self.counters.step
                if self.resumed or (self.run_dir / METRICS_FILE).is_file()
                else None
            ),
        )
        every_steps = cfg.checkpoint.every_steps
        results: dict[str, EvalResult] = {}
        try:
            while self.counters.step < self.total_steps:
                c = self.counters
                self.train_loader.set_epoch(c.epoch)
                self.forward_model.train()
                bar = progress_bar(
                    self.steps_per_epoch * cfg.train.batch_size,
                    desc=f"epoch {c.epoch + 1}/{cfg.train.epochs}",
                    initial=(c.step - c.epoch * self.steps_per_epoch) * cfg.train.batch_size,
                    enabled=cfg.log.progress and dist.is_main,
                )
                for group in micro_batches(self.train_loader, cfg.optim.accum_steps):
                    self.train_step(group)
                    bar.update(cfg.train.batch_size)
                    save_now = every_steps is not None and c.step % every_steps == 0
                    if c.step % cfg.log.every_steps == 0 or save_now:
                        loss = self.flush_log()
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    if c.step >= self.total_steps:
                        break
                    if save_now and c.step % self.steps_per_epoch:  # epoch ends save below
                        self.save()
                bar.close()
                self.flush_log()
                if c.step % self.steps_per_epoch == 0:
                    c.epoch += 1
                finished = c.step >= self.total_steps
                if finished or c.epoch % cfg.eval.every_epochs == 0:
                    results = self.evaluate(last=finished)
                if (
                    finished
                    or c.epoch % cfg.checkpoint.every_epochs == 0
                    or (every_steps is not None and c.step % every_steps == 0)
                ):
                    self.save()
            if not results:  # resumed a finished run: report what it holds
                results = self.evaluate(last=True)
            return self.finish(results, time.perf_counter() - t0)
        finally:
            self.metrics.close()

    def finish(self, results: dict[str, EvalResult], wall_time: float) -> FitResult:
        """``results.json``, learning curves, confusion matrix and prediction grid (rank 0)."""
        c, cfg = self.counters, self.cfg
        final = results[""]
        values: dict[str, float] = {}
        for prefix, r in results.items():
            values.update(r.as_dict(prefix))
        out = FitResult(
            run_dir=str(self.run_dir),
            steps=c.step,
            epochs=c.epoch,
            wall_time_s=round(wall_time, 2),
            final=values,
            per_class_accuracy=dict(
                zip(map(display_name, self.classes), final.per_class_accuracy, strict=True)
            ),  # display names: a non-UTF-8 folder name must still give valid JSON
            best_metric=c.best_metric,
            best_step=c.best_step,
        )
        if self.dist.is_main:
            if cfg.log.plots:
                out.plots = [str(p) for p in self.plot(final)]
            text = json.dumps(asdict(out), indent=2, allow_nan=True)
            ckpt.atomic_write(self.run_dir / "results.json", lambda p: p.write_text(text))
        return out

    def plot(self, final: EvalResult) -> list[Path]:
        """Learning curves, the confusion matrix and a grid of predictions on eval images."""
        from tokenmix.viz.plots import plot_confusion, plot_curves, plot_prediction_grid

        plots_dir = self.run_dir / "plots"
        paths = [
            plot_curves(read_metrics(self.run_dir), plots_dir / "curves.png"),
            plot_confusion(final.confusion, self.classes, plots_dir / "confusion.png"),
        ]
        images, picks = grid_samples(self.val_set, self.cfg.eval.grid_images)  # no skipped ones
        if picks:
            preds = predict_topk(
                self.model,
                images,
                prepare=self.normalize,
                classes=self.classes,
                k=3,
                autocast=self.autocast,
            )
            truths = [self.classes[self.val_set.label(int(i))] for i in picks]
            paths.append(
                plot_prediction_grid(images, preds, plots_dir / "predictions.png", truths=truths)
            )
        return paths
