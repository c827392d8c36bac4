"""A run killed with SIGKILL mid-epoch and resumed repeats the uninterrupted run exactly; a
resume applies the settings it may change exactly and refuses the others; resuming from an
older step moves the later checkpoints to a branch folder.

Everything random is on (random-resized crops, rotation, RandAugment, random erasing, Mixup and
CutMix, drop path) along with EMA, gradient accumulation and clipping, so the test covers every
source of state a resume has to restore.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tokenmix.cli.main import main
from tokenmix.config import Config, load_config, to_dict
from tokenmix.engine import checkpoint as ckpt
from tokenmix.engine import resume
from tokenmix.engine.metrics import read_metrics
from tokenmix.engine.optim import lr_factor
from tokenmix.engine.train import fit

from .test_engine import TINY

RECIPE = """
model: {name: test_cdfformer, img_size: 32, drop_path_rate: 0.1, kwargs: {dims: [8, 8, 16, 16]}}
data: {train_limit: 320, val_limit: 32, num_workers: 0, load_size: 36}
aug: {scale: [0.5, 1.0], rotation: 10, randaugment: rand-m9-mstd0.5-inc1, erase_rate: 0.25,
      mixup_alpha: 0.8, cutmix_alpha: 1.0}
loss: {label_smoothing: 0.1}
ema: {enabled: true, decay: 0.9}
optim: {accum_steps: 2, clip_grad: 1.0}
sched: {warmup_epochs: 0.3}
train: {batch_size: 16, epochs: 3, cpu_threads: 1}
checkpoint: {every_steps: 3}
log: {every_steps: 1, tensorboard: false, progress: false, plots: false}
"""
STEPS = 60  # 3 epochs of 20 steps


def _command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tokenmix.cli.main",
        "train",
        "--config",
        str(recipe),
        "--set",
        f"run.output_dir={out}",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _steps_logged(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    steps = [r["step"] for r in read_metrics(metrics) if r["kind"] == "train"]
    return max(steps, default=0)


def _train_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run) if r["kind"] == "train"]


def test_sigkill_then_resume_repeats_the_trajectory(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    # the killed run goes first, while the machine is least busy with our other process
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(recipe, killed_out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    metrics = killed_out / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while _steps_logged(metrics) < 8:
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training made no progress in 120 s")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = killed_out / "tiny"
    killed_at = _steps_logged(metrics)
    assert killed_at < STEPS and not (run / "results.json").exists(), "the kill came too late"
    resumed_from = ckpt.latest_checkpoint(run / "checkpoints")
    assert resumed_from is not None and 0 < int(resumed_from.name[5:]) < killed_at
    assert int(resumed_from.name[5:]) % 20, "the kill should land mid-epoch"

    # the second attempt without --resume refuses to overwrite the run
    refused = subprocess.run(
        _command(recipe, killed_out), env=_env(), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr

    done = subprocess.run(
        _command(recipe, killed_out, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]

    straight_out = tmp_path / "straight"
    ref = subprocess.run(_command(recipe, straight_out), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    straight = straight_out / "tiny"

    resumed_losses, straight_losses = _train_losses(run), _train_losses(straight)
    assert [s for s, _ in resumed_losses] == list(range(1, STEPS + 1))
    assert [s for s, _ in straight_losses] == list(range(1, STEPS + 1))
    for (step, a), (_, b) in zip(resumed_losses, straight_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), f"step {step}: {a} vs {b}"

    evals = [
        [(r["top1"], r["ema_top1"]) for r in read_metrics(d) if r["kind"] == "eval"]
        for d in (run, straight)
    ]
    assert evals[0] == evals[1] and len(evals[0]) == 3
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        a = ckpt.load_checkpoint_weights(ckpt.latest_checkpoint(run / "checkpoints"), name)
        b = ckpt.load_checkpoint_weights(ckpt.latest_checkpoint(straight / "checkpoints"), name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert json.loads((run / "results.json").read_text())["steps"] == STEPS


# --- what a resume may change, and branches -------------------------------------------------
# 4 steps an epoch (64 images, batch 16), 2 epochs; checkpoints at steps 4, 6 and 8 remain
BRANCH_RUN = [
    *TINY,
    "data.train_limit=64",
    "train.epochs=2",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 8-step run; tests copy it before changing it."""
    run = tmp_path_factory.mktemp("resume") / "run"
    fit(load_config(overrides=BRANCH_RUN), run)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _names(folder: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(folder)]


def test_changed_lr_weight_decay_and_epochs_are_applied_exactly(
    finished_run: Path, tmp_path: Path, caplog
) -> None:
    run = _copy(finished_run, tmp_path)
    overrides = ["optim.lr=0.002", "optim.weight_decay=0.1", "train.epochs=3"]
    with caplog.at_level(logging.WARNING, logger="tokenmix"):
        assert main(["train", "--resume", str(run), "--set", *overrides]) == 0
    assert "optim.lr 0.001 -> 0.002" in caplog.text and "train.epochs 2 -> 3" in caplog.text
    assert "optim.weight_decay 0.05 -> 0.1" in caplog.text
    records = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 13))
    # the rate a 12-step run at lr 0.002 has at each step: the schedule's base rate changed
    for r in records[8:]:
        expected = 0.002 * lr_factor(
            r["step"], total_steps=12, warmup_steps=0, base_lr=0.002, warmup_lr=1e-6, min_lr=1e-6
        )
        assert r["lr"] == pytest.approx(expected, rel=1e-12), r["step"]
    state = ckpt.load_train_state(ckpt.latest_checkpoint(run / "checkpoints"))
    assert sorted(g["weight_decay"] for g in state["optimizer"]["param_groups"]) == [0.0, 0.1]
    assert {g["initial_lr"] for g in state["optimizer"]["param_groups"]} == {0.002}
    assert load_config(run / "config.yaml").optim.lr == 0.002  # and config.yaml says so


def test_settings_the_checkpoint_fixes_are_refused_by_name(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(finished_run, tmp_path)
    before = (run / "metrics.jsonl").read_text()
    changes = ["train.batch_size=8", "model.drop_path_rate=0.2", "train.seed=3", "optim.lr=0.01"]
    assert main(["train", "--resume", str(run), "--set", *changes]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "train.batch_size (16 -> 8" in err
    assert "model.drop_path_rate (0.0 -> 0.2" in err and "train.seed (0 -> 3" in err
    assert "optim.lr (" not in err  # that one could change
    assert "Changeable on resume: optim.lr" in err
    assert (run / "metrics.jsonl").read_text() == before


def test_every_config_key_has_a_resume_rule() -> None:
    """A new config key must be classed as changeable on resume or not, not fall through."""
    for section, fields in to_dict(Config()).items():
        for name in fields:
            _, why = resume.rule(f"{section}.{name}")
            assert why != "not known to the resume rules", f"{section}.{name}"
    assert not resume.rule("train.batch_size")[0] and resume.rule("optim.lr")[0]
    assert not resume.rule("model.kwargs")[0] and resume.rule("model.pretrained")[0]


def test_resume_from_an_older_step_branches_instead_of_pruning(
    finished_run: Path, tmp_path: Path, caplog
) -> None:
    run = _copy(finished_run, tmp_path)
    d = run / "checkpoints"
    assert _names(d) == ["step_00000004", "step_00000006", "step_00000008"]
    old8 = (d / "step_00000008" / ckpt.MODEL_FILE).stat().st_ino
    best_step = int(ckpt.read_metadata(d / ckpt.BEST_FILE)["step"])
    with caplog.at_level(logging.WARNING, logger="tokenmix"):
        code = main(["train", "--resume", str(d / "step_00000004"), "--set", "train.max_steps=6"])
    assert code == 0
    branch = run / "branches" / "001_from_step_00000004"
    assert "step_00000008, step_00000006" in caplog.text and str(branch) in caplog.text
    # the new line is the run's, complete and unpruned; the old line is kept, moved as it was
    assert _names(d) == ["step_00000004", "step_00000006"]
    assert _names(branch / "checkpoints") == ["step_00000006", "step_00000008"]
    assert (branch / "checkpoints" / "step_00000008" / ckpt.MODEL_FILE).stat().st_ino == old8
    assert (branch / "checkpoints" / ckpt.BEST_FILE).is_file() == (best_step > 4)
    assert json.loads((branch / "results.json").read_text())["steps"] == 8
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    old_steps = [r["step"] for r in read_metrics(branch) if r["kind"] == "train"]
    assert old_steps == list(range(1, 9))
    assert [s for s, _ in _train_losses(run)] == list(range(1, 7))
    # a plain --resume follows the new line, not the old line's later step 8
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=7"]) == 0
    assert [s for s, _ in _train_losses(run)] == list(range(1, 8))
    assert _names(d)[-1] == "step_00000007" and len(list((run / "branches").iterdir())) == 1


def test_fresh_run_in_a_used_folder_moves_the_old_run_aside(
    finished_run: Path, tmp_path: Path
) -> None:
    """``fit`` without resume (the command line refuses this; the API did not) mixes nothing."""
    run = _copy(finished_run, tmp_path)
    fit(load_config(overrides=[*BRANCH_RUN, "train.max_steps=2"]), run)
    branch = run / "branches" / "001_from_step_00000000"
    assert _names(branch / "checkpoints") == ["step_00000004", "step_00000006", "step_00000008"]
    assert _names(run / "checkpoints") == ["step_00000002"]
    assert [s for s, _ in _train_losses(run)] == [1, 2]
