"""A run killed with SIGKILL mid-epoch and resumed repeats the uninterrupted run exactly.

Everything random is on (random-resized crops, rotation, RandAugment, random erasing, Mixup and
CutMix, drop path) along with EMA, gradient accumulation and clipping, so the test covers every
source of state a resume has to restore.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tokenmix.engine import checkpoint as ckpt
from tokenmix.engine.metrics import read_metrics

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
