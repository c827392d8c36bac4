"""Train a model from a recipe, evaluate it, and write curves, confusion matrix and predictions.

The recipe is a YAML file, or the name of one shipped with tokenmix (`--config digits_demo`,
from any folder; `configs/` of the repository holds the same files). It overrides the defaults
in tokenmix.config.schema; --set overrides the recipe with dotted keys. Unknown keys and bad
values are errors naming the key.
The run folder is run.output_dir/run.name (default: runs/<recipe name>); one run at a time
holds it (a second one stops, naming the first one's PID). The run starts with a header: the
model (parameters, GMACs), device and amp, data sizes, steps and the run folder.
--resume continues under the checkpoint's stored config; --set may change the optimizer's
hyper-parameters, the schedule, train.epochs/max_steps, amp, augmentation and logging (applied
exactly from the checkpoint's step), not the model, data, batch size or seed. Resuming from an
older step moves the run's later checkpoints to RUN/branches/ and continues from there.
--smoke checks a recipe end to end before a long run, like Lightning's fast_dev_run: 3 steps
on 32 images, in its own folder (runs/<name>-smoke, replaced by the next smoke run) that keeps
the plots and results but no checkpoints, with an amp this machine runs (auto where the
recipe's fp16 or bf16 does not run natively here); the real run's folder is not touched.

Examples:
  tokenmix train --config digits_demo                      # a packaged recipe, from any folder
  tokenmix train --config configs/digits_demo.yaml
  tokenmix train --config configs/cifar10_dfformer_s18.yaml --set optim.lr=2e-4 train.epochs=5
  tokenmix train --config configs/digits_demo.yaml --resume          # continue after a crash
  tokenmix train --resume runs/digits_demo --set optim.lr=5e-4        # continue at a lower rate
  tokenmix train --resume runs/digits_demo/checkpoints/step_00000400  # branch from an older step
  tokenmix train --config dfformer_s18_in1k --smoke --set data.train=digits
  tokenmix train --config configs/digits_demo.yaml --print-config    # resolved config, no run
  torchrun --nproc-per-node 8 -m tokenmix.cli.main train --config configs/dfformer_s18_in1k.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

HELP = "train from a YAML recipe (resumable, DDP with torchrun)"

log = logging.getLogger("tokenmix")

# --smoke: every recipe shrunk to a few steps on a few images, to check it runs end to end.
SMOKE = [
    "train.max_steps=3",
    "train.batch_size=8",
    "optim.accum_steps=1",
    "data.train_limit=32",
    "data.val_limit=16",
    "data.num_workers=0",
    "log.every_steps=1",
    "eval.grid_images=8",
    "checkpoint.keep_best=false",
]
SMOKE_SUFFIX = "-smoke"  # the smoke run's folder: <run folder>-smoke


def recipes_dir() -> Path:
    """The recipes shipped inside the package (``configs/`` of the repository links here)."""
    from importlib.resources import files

    return Path(str(files("tokenmix") / "configs"))


def packaged_recipes() -> list[str]:
    """Names of the shipped recipes, for ``--config NAME``."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe(value: str | Path) -> Path:
    """The recipe file ``--config`` names: a file as given, else a shipped recipe of that name
    (``digits_demo``, ``digits_demo.yaml``, or ``configs/digits_demo.yaml`` run elsewhere than
    the repository root)."""
    path = Path(value)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = recipes_dir() / name
    if path.parent in (Path("."), Path("configs")) and packaged.is_file():
        if path.parent != Path("."):
            log.info("%s is not here; using the packaged recipe %s", path, packaged)
        return packaged
    raise FileNotFoundError(
        f"--config {value}: no such recipe file, and no packaged recipe of that name "
        f"(packaged: {', '.join(packaged_recipes())})"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="recipe YAML, or a packaged recipe's name: " + ", ".join(packaged_recipes()),
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. optim.lr=1e-3 model.kwargs.dims=[8,16,24,32]",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue a run: its latest checkpoint (no value), a step checkpoint or a run folder",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="3 steps on 32 images in RUN-smoke/, no checkpoints: check a recipe end to end",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from tokenmix.config import dump_yaml, load_config, to_dict
    from tokenmix.engine import checkpoint as ckpt
    from tokenmix.engine.runlock import RunLockedError
    from tokenmix.engine.train import fit

    is_main = os.environ.get("RANK", "0") == "0"
    if not is_main:  # under torchrun, rank 0 speaks for all
        logging.getLogger().setLevel(logging.WARNING)
    if args.smoke and args.resume:
        raise ValueError("--smoke starts a fresh check of a recipe; it does not --resume a run")
    overrides = (SMOKE if args.smoke else []) + list(args.overrides)
    if args.config is None and not args.resume:
        raise ValueError("give --config RECIPE (or --resume CHECKPOINT to continue a run)")
    config_path = resolve_recipe(args.config) if args.config is not None else None
    cfg = load_config(config_path, overrides) if config_path is not None else None
    if cfg is not None and args.smoke:
        amp = _smoke_amp(cfg.train.amp, cfg.train.device)
        if amp != cfg.train.amp:
            overrides.append(f"train.amp={amp}")
            cfg = load_config(config_path, overrides)
    resume = None
    if args.resume:
        resume = _find_checkpoint(args.resume, cfg, config_path)
        stored = _stored_config(resume)
        resumed_cfg = load_config(overrides=overrides, base=stored)
        if cfg is not None:
            changed = _diff(to_dict(cfg), to_dict(resumed_cfg))
            if changed:
                log.warning(
                    "resuming with the checkpoint's config; the recipe differs in %s",
                    ", ".join(changed),
                )
        cfg = resumed_cfg
        run_dir = resume.parent.parent
    else:
        assert cfg is not None
        run_dir = _run_dir(cfg, config_path)
        if args.smoke:
            run_dir = run_dir.with_name(run_dir.name + SMOKE_SUFFIX)
        elif not args.print_config and ckpt.list_checkpoints(run_dir / "checkpoints"):
            raise ValueError(
                f"{run_dir} already holds checkpoints of an earlier run; add --resume to continue "
                "it, or pick a new folder with --set run.name=NAME"
            )
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if is_main:
        _warn_about_schedule(cfg)
    try:
        result = fit(cfg, run_dir, resume=resume, on_start=_log_header)
    except RunLockedError:
        raise  # another run holds the folder: its checkpoints are not ours to remove
    except BaseException:
        if args.smoke and is_main:
            _drop_checkpoints(run_dir)
        raise
    if args.smoke and is_main:
        _drop_checkpoints(run_dir)
    if is_main:
        final = result.final
        line = f"final top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  loss {final['loss']:.4f}"
        if "ema_top1" in final:
            line += f"  (EMA top-1 {final['ema_top1']:.2f}%)"
        print(line)
        print(f"{result.steps} steps in {result.wall_time_s:.0f} s; run folder {result.run_dir}")
        for path in result.plots:
            print(f"  {path}")
        if args.smoke:
            print("smoke run passed (no checkpoints kept); run the same command without --smoke")
    return 0


def _smoke_amp(amp: str, device_preference: str) -> str:
    """The recipe's amp if it runs natively on this machine, else ``auto``: a smoke run checks
    the recipe, not this machine's (missing or emulated, tens of times slower) half floats."""
    from tokenmix import kernels
    from tokenmix.engine.distributed import resolve_device

    device = resolve_device(device_preference)
    runs_here = {
        "fp16": device.type == "cuda",
        "bf16": kernels.native_bf16(device),
    }.get(amp, True)
    if runs_here:
        return amp
    log.info("--smoke: train.amp=%s does not run natively on %s; using amp auto", amp, device)
    return "auto"


def _drop_checkpoints(run_dir: Path) -> None:
    """A smoke run keeps its plots and results, not its weights (nor an earlier smoke's)."""
    for name in ("checkpoints", "branches"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _warn_about_schedule(cfg: Any) -> None:
    sched, epochs = cfg.sched, cfg.train.epochs
    if sched.warmup_epochs > 0 and sched.warmup_epochs >= epochs:
        log.warning(
            "sched.warmup_epochs=%g >= train.epochs=%d: the learning rate warms up for the whole "
            "run and never reaches optim.lr=%g; lower sched.warmup_epochs or raise train.epochs",
            sched.warmup_epochs,
            epochs,
            cfg.optim.lr,
        )


def run_header(trainer: Any) -> str:
    """What a run is about to do, in a few lines: model (parameters, GMACs), device, amp,
    data sizes, steps and run folder, read from a built :class:`~tokenmix.engine.train.Trainer`.
    """
    import dataclasses

    import torch

    from tokenmix import kernels
    from tokenmix.engine.build import build_model

    cfg, model, c = trainer.cfg, trainer.model, trainer.counters
    size = tuple(model.pretrained_cfg.input_size)
    params = sum(p.numel() for p in model.parameters())
    try:  # counted on a copy on the meta device: no memory, no compute, the live model untouched
        from tokenmix.bench.flops import count_macs

        with torch.device("meta"):
            twin = build_model(
                dataclasses.replace(cfg.model, pretrained=False), num_classes=trainer.num_classes
            )
        macs = f"{count_macs(twin, size) / 1e9:.3g} GMACs/image"
    except Exception as e:  # an informational line must not stop a run
        log.debug("GMACs not counted: %s", e)
        macs = "GMACs not counted"
    dtype = kernels.resolve_amp(cfg.train.amp, trainer.device)
    precision = "float32" if dtype is None else str(dtype).removeprefix("torch.")
    world = trainer.dist.world_size
    tc = cfg.train
    planned = f"{tc.epochs} epochs x {trainer.steps_per_epoch} steps of {tc.batch_size} images" + (
        f" ({cfg.optim.accum_steps} micro-batches each)" if cfg.optim.accum_steps > 1 else ""
    )
    if trainer.total_steps < tc.epochs * trainer.steps_per_epoch:
        steps = f"{trainer.total_steps} (train.max_steps; the schedule spans {planned})"
    else:
        steps = f"{trainer.total_steps}: {planned}"
    if c.step:
        steps += f"; resuming at step {c.step}"
    if cfg.aug.size_schedule:
        steps += "; training sizes " + ", ".join(
            f"{side} px from epoch {start}" for start, side in cfg.aug.size_schedule
        )
    threads = torch.get_num_threads()
    lines = [
        f"run {trainer.run_dir}",
        f"  model   {cfg.model.name} at {size[1]}x{size[2]}, {trainer.num_classes} classes: "
        f"{params / 1e6:.3g} M params, {macs}",
        f"  device  {trainer.device} ({world} process{'es' * (world > 1)}, "
        f"{threads} thread{'s' * (threads > 1)}), amp {tc.amp} ({precision})"
        + (f", {trainer.allocator}" if trainer.device.type == "cpu" else ""),
        f"  data    {trainer.train_set.describe() or cfg.data.train}: {len(trainer.train_set)} "
        f"train / {len(trainer.val_set)} eval images",
        f"  steps   {steps}",
    ]
    return "\n".join(lines)


def _log_header(trainer: Any) -> None:
    log.info("%s", run_header(trainer))


def _run_dir(cfg: Any, config_path: Path | None) -> Path:
    name = cfg.run.name or (config_path.stem if config_path is not None else "run")
    return Path(cfg.run.output_dir) / name


def _find_checkpoint(value: str, cfg: Any, config_path: Path | None) -> Path:
    """The step checkpoint ``--resume`` points to: a step folder as given, else the newest
    intact checkpoint of the run (the recipe's, or the folder given).

    A damaged newest checkpoint (a truncated file) is skipped with a warning naming the bad
    file; the run then continues from the one before as a new branch, and the damaged one is
    moved aside with the rest of the abandoned line (see :mod:`tokenmix.engine.resume`).
    """
    from tokenmix.engine import checkpoint as ckpt

    if value == "latest":
        if cfg is None:
            raise ValueError("--resume without a path needs --config to find the run folder")
        where = _run_dir(cfg, config_path)
    else:
        where = Path(value)
    if (where / ckpt.STATE_FILE).is_file():
        return where
    ckpt_dir = where / "checkpoints" if (where / "checkpoints").is_dir() else where
    found = ckpt.newest_intact_checkpoint(ckpt_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint to resume in {where}")
    return found


def _stored_config(checkpoint: Path) -> dict[str, Any]:
    from tokenmix.engine import checkpoint as ckpt

    meta = ckpt.read_metadata(checkpoint / ckpt.MODEL_FILE)
    if "config" not in meta:
        raise ValueError(f"{checkpoint}: no config stored in {ckpt.MODEL_FILE}; not a tokenmix run")
    return json.loads(meta["config"])


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in a:
        if isinstance(a[key], dict) and isinstance(b.get(key), dict) and key != "kwargs":
            keys += _diff(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b.get(key):
            keys.append(f"{prefix}{key}")
    return keys
