"""Continuing a run from a checkpoint: which settings may change, and branches.

Settings. A resumed run trains under the config it is given (the command line: the
checkpoint's stored config plus ``--set``), and ``config.yaml`` records that config, so every
key that differs from the checkpoint's must either take effect exactly or be refused.
:data:`RULES` decides per key (an exact key first, else its section):

* refused (:class:`ResumeConfigError` lists them): what the saved state was made under and
  cannot be re-interpreted: the architecture (``model.*``: the weights' shapes), the data and
  its input pipeline (``data.*``: the loader position points into that data set and order),
  ``train.batch_size`` and ``optim.accum_steps`` (steps per epoch, the loader position),
  ``train.seed`` (the data order and every random draw already made), ``optim.name`` (the
  saved optimizer state is that optimizer's), ``loss.kind`` / ``loss.token_labels`` (the
  model's outputs and dense targets), ``ema.enabled`` (the EMA weights exist or not), and
  ``checkpoint.monitor`` and ``eval.hflip`` / ``shift`` / ``tta`` (the best value so far was
  measured with them).
  Within ``data``, only what does not change the samples may change: ``num_workers``,
  ``cache``, ``bad_images``, ``max_pixels`` and ``allow_outside_root``.
* applied from the next step: everything else. The optimizer's hyper-parameters
  (``optim.lr``, ``weight_decay``, ``betas``, ``eps``, ``momentum``) are set in its parameter
  groups, and the learning-rate schedule is rebuilt from the new ``optim.lr``, ``sched.*``
  and ``train.epochs`` and continued at the checkpoint's step, so the rate at step ``s`` is
  exactly the one a run started with the new values would have at ``s``. ``train.amp`` keeps
  the gradient scaler while fp16 stays on and starts a fresh one when fp16 is turned on;
  augmentation, loss weights, clipping, EMA decay, logging, evaluation and checkpoint cadence
  are read every step anyway.

Branches. Resuming from step ``N`` when the run folder holds later checkpoints (an explicit
``--resume`` of an older step, or a fallback past a damaged newest checkpoint) starts a new
line of the run. The later checkpoints, a ``best.safetensors`` and ``results.json`` from after
``N``, and a copy of ``metrics.jsonl`` are moved to ``RUN/branches/<n>_from_step_<N>/``
(moved, never deleted), so the new line's checkpoints neither interleave with the old ones
nor get pruned in their favour, and the next plain ``--resume`` follows the new line.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenmix.config import Config, load_config, to_dict

from . import checkpoint as ckpt

log = logging.getLogger("tokenmix")

BRANCHES_DIR = "branches"

# key or section -> (may change on resume, why)
RULES: dict[str, tuple[bool, str]] = {
    "model": (False, "the checkpoint's weights are of this architecture"),
    "model.pretrained": (True, "no effect: the weights come from the checkpoint"),
    "data": (False, "the loader position and the weights belong to this data and input pipeline"),
    "data.num_workers": (True, "loader processes only"),
    "data.bad_images": (True, "applies to images read from now on"),
    "data.max_pixels": (True, "a decoding guard; applies to images read from now on"),
    "data.allow_outside_root": (True, "decides only whether a list file opens, not its samples"),
    "data.cache": (True, "where decoded images are kept: speed only, the same pixels"),
    "aug": (True, "augmentation is drawn afresh every step"),
    "loss": (True, "the loss is computed afresh every step"),
    "loss.kind": (False, "the model's outputs depend on it"),
    "loss.token_labels": (False, "the dense targets of the steps done came from it"),
    "optim": (True, "set in the optimizer's parameter groups"),
    "optim.lr": (True, "the schedule is rebuilt for it and continued at the checkpoint's step"),
    "optim.name": (False, "the saved optimizer state is that optimizer's"),
    "optim.accum_steps": (False, "the micro-batch size and the loader position depend on it"),
    "sched": (True, "the schedule is rebuilt for it and continued at the checkpoint's step"),
    "train": (True, "read every step"),
    "train.epochs": (True, "the run's length; the schedule is rebuilt for it"),
    "train.batch_size": (False, "steps per epoch and the loader position depend on it"),
    "train.seed": (False, "the data order and every random draw of the steps done came from it"),
    "ema": (True, "read every step"),
    "ema.enabled": (False, "the checkpoint has EMA weights or has none"),
    "checkpoint": (True, "read every step"),
    "checkpoint.monitor": (False, "the best value so far was measured with it"),
    "eval": (True, "read at every evaluation"),
    "eval.hflip": (False, "the best value so far was measured with it"),
    "eval.shift": (False, "the best value so far was measured with it"),
    "eval.tta": (False, "the best value so far was measured with it"),
    "log": (True, "read at every log line"),
    "run": (True, "names the folder only; a resumed run stays in its checkpoint's folder"),
}


class ResumeConfigError(ValueError):
    """A resume asked to change settings the checkpoint cannot continue under."""


def rule(key: str) -> tuple[bool, str]:
    """``(may change, why)`` for a dotted config key: its own rule, else its section's."""
    if key in RULES:
        return RULES[key]
    section = key.split(".", 1)[0]
    if section in RULES:
        return RULES[section]
    return False, "not known to the resume rules"


def _flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``section.field -> value`` (dict fields such as ``model.kwargs`` stay one value)."""
    out: dict[str, Any] = {}
    for section, fields in cfg.items():
        if isinstance(fields, Mapping):
            for name, value in fields.items():
                out[f"{section}.{name}"] = value
        else:
            out[section] = fields
    return out


def config_changes(stored: Mapping[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint's value, new value)`` for each key where ``cfg`` differs.

    ``stored`` is the config dict a checkpoint records; it is loaded through the schema
    first, so keys added to the schema since it was written compare as their defaults.
    """
    old = json.loads(json.dumps(to_dict(load_config(base=stored))))
    new = json.loads(json.dumps(to_dict(cfg)))
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def check_resume_changes(stored: Mapping[str, Any], cfg: Config, source: Path) -> list[str]:
    """The changes a resume from ``source`` applies, as ``key old -> new`` lines.

    Raises:
        ResumeConfigError: some changed keys cannot change on resume; the message lists
            each with its reason, and what can change.
    """
    changes = config_changes(stored, cfg)
    refused = [(k, a, b) for k, a, b in changes if not rule(k)[0]]
    if refused:
        lines = "; ".join(f"{k} ({a!r} -> {b!r}: {rule(k)[1]})" for k, a, b in refused)
        raise ResumeConfigError(
            f"cannot resume {source} with these settings changed: {lines}. Drop those overrides "
            "to continue the run, or start a new run from its weights with --set run.name=NEW "
            "model.pretrained=PATH. Changeable on resume: optim.lr, optim.weight_decay, "
            "optim.clip_grad and the other optim hyper-parameters, sched.*, train.epochs, "
            "train.max_steps, train.amp, aug.*, loss weights, ema.decay, checkpoint cadence, "
            "eval.*, log.*"
        )
    return [f"{k} {a!r} -> {b!r} ({rule(k)[1]})" for k, a, b in changes]


def _branch_dir(run_dir: Path, step: int) -> Path:
    root = run_dir / BRANCHES_DIR
    n = 1 + sum(1 for p in root.iterdir() if p.is_dir()) if root.is_dir() else 1
    while (dest := root / f"{n:03d}_from_step_{step:08d}").exists():
        n += 1
    return dest


def _weights_step(path: Path) -> int | None:
    """The step recorded in a weights file's header; None when unreadable."""
    try:
        return int(ckpt.read_metadata(path).get("step", "0"))
    except (ckpt.CheckpointError, ValueError):
        return None


def _results_step(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def move_later_aside(run_dir: Path, step: int) -> Path | None:
    """Move what the run folder holds from after ``step`` to a new branch folder.

    Later step checkpoints (damaged ones too), a ``best.safetensors`` and ``results.json``
    from after ``step`` (or unreadable) are moved; ``metrics.jsonl`` is copied (the resumed
    run truncates its own). Nothing happens when no checkpoint or best weights are later.
    Call it holding the run's lock.

    Returns:
        The branch folder, or None when there was nothing to move.
    """
    ckpt_dir = run_dir / "checkpoints"
    later: list[Path] = []
    if ckpt_dir.is_dir():
        steps = [
            (int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := ckpt.STEP_DIR.match(p.name))
        ]
        later = [p for s, p in sorted(steps, reverse=True) if s > step]
    best = ckpt_dir / ckpt.BEST_FILE
    best_step = _weights_step(best) if best.is_file() else None
    best_later = best.is_file() and (best_step is None or best_step > step)
    if not later and not best_later:
        return None
    dest = _branch_dir(run_dir, step)
    (dest / "checkpoints").mkdir(parents=True)
    moved = []
    for p in later:  # newest first: a kill half-way leaves the old line shortened, not holed
        shutil.move(str(p), str(dest / "checkpoints" / p.name))
        moved.append(p.name)
    if best_later:
        shutil.move(str(best), str(dest / "checkpoints" / ckpt.BEST_FILE))
        moved.append(f"{ckpt.BEST_FILE} (step {best_step if best_step is not None else '?'})")
    results = run_dir / "results.json"
    results_step = _results_step(results) if results.is_file() else step
    if results_step is None or results_step > step:
        shutil.move(str(results), str(dest / "results.json"))
        moved.append("results.json")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        shutil.copy2(metrics, dest / "metrics.jsonl")
        moved.append("a copy of metrics.jsonl")
    if step == 0:
        why = f"starting a fresh run in {run_dir}, which holds an earlier run's checkpoints"
    else:
        why = (
            f"resuming {run_dir} at step {step}, before its later checkpoints: the run "
            "continues as a new branch"
        )
    log.warning("%s; moved %s to %s", why, ", ".join(moved), dest)
    return dest
