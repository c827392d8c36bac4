"""Train a model from a recipe, evaluate it, and write curves, confusion matrix and predictions.

The recipe (configs/*.yaml) overrides the defaults in tokenmix.config.schema; --set overrides
the recipe with dotted keys. Unknown keys and bad values are errors naming the key.
The run folder is run.output_dir/run.name (default: runs/<recipe name>); one run at a time
holds it (a second one stops, naming the first one's PID).
--resume continues under the checkpoint's stored config; --set may change the optimizer's
hyper-parameters, the schedule, train.epochs/max_steps, amp, augmentation and logging (applied
exactly from the checkpoint's step), not the model, data, batch size or seed. Resuming from an
older step moves the run's later checkpoints to RUN/branches/ and continues from there.

Examples:
  tokenmix train --config configs/digits_demo.yaml
  tokenmix train --config configs/cifar10_dfformer_s18.yaml --set optim.lr=2e-4 train.epochs=5
  tokenmix train --config configs/digits_demo.yaml --resume          # continue after a crash
  tokenmix train --resume runs/digits_demo --set optim.lr=5e-4        # continue at a lower rate
  tokenmix train --resume runs/digits_demo/checkpoints/step_00000400  # branch from an older step
  tokenmix train --config configs/dfformer_s18_in1k.yaml --smoke --set data.train=digits
  tokenmix train --config configs/digits_demo.yaml --print-config    # resolved config, no run
  (--smoke: 3 steps on 32 images, to check a recipe end to end before a long run)
  torchrun --nproc-per-node 8 -m tokenmix.cli.main train --config configs/dfformer_s18_in1k.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="recipe YAML (configs/*.yaml)")
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
        "--smoke", action="store_true", help="shrink the run to a few steps on a few images"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from tokenmix.config import dump_yaml, load_config, to_dict
    from tokenmix.engine import checkpoint as ckpt
    from tokenmix.engine.train import fit

    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        logging.getLogger().setLevel(logging.WARNING)
    overrides = (SMOKE if args.smoke else []) + list(args.overrides)
    if args.config is None and not args.resume:
        raise ValueError("give --config RECIPE.yaml (or --resume CHECKPOINT to continue a run)")
    cfg = load_config(args.config, overrides) if args.config is not None else None
    resume = None
    if args.resume:
        resume = _find_checkpoint(args.resume, cfg, args.config)
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
        run_dir = _run_dir(cfg, args.config)
        if not args.print_config and ckpt.list_checkpoints(run_dir / "checkpoints"):
            raise ValueError(
                f"{run_dir} already holds checkpoints of an earlier run; add --resume to continue "
                "it, or pick a new folder with --set run.name=NAME"
            )
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    result = fit(cfg, run_dir, resume=resume)
    if os.environ.get("RANK", "0") == "0":
        final = result.final
        line = f"final top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  loss {final['loss']:.4f}"
        if "ema_top1" in final:
            line += f"  (EMA top-1 {final['ema_top1']:.2f}%)"
        print(line)
        print(f"{result.steps} steps in {result.wall_time_s:.0f} s; run folder {result.run_dir}")
        for path in result.plots:
            print(f"  {path}")
    return 0


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
