"""Two CPU processes under torchrun (Gloo) give the single-process result at the same global batch.

Each rank takes its half of every global batch; DDP averages the gradients, so every optimizer
step equals the single-process step up to float summation order. Augmentation and drop path
are off here: their draws depend on the rank by design (independent noise per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenmix.engine import checkpoint as ckpt
from tokenmix.engine.metrics import read_metrics

RECIPE = """
model: {name: test_convformer, img_size: 32, kwargs: {dims: [8, 8, 16, 16]}}
data: {train_limit: 192, val_limit: 40, num_workers: 0, load_size: 32}
aug: {scale: null, hflip_rate: 0.0}
optim: {accum_steps: 2, clip_grad: 1.0}
ema: {enabled: true, decay: 0.9}
train: {batch_size: 32, epochs: 2, cpu_threads: 1}
log: {every_steps: 1, tensorboard: false, progress: false, plots: false}
"""


def _run(args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [*args, "--set", f"run.output_dir={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_match_one(tmp_path: Path) -> None:
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(RECIPE)
    train = ["-m", "tokenmix.cli.main", "train", "--config", str(recipe)]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    two = _run(torchrun + train, tmp_path / "two")
    _run([sys.executable, *train], tmp_path / "one")
    assert two.stdout.count("final top-1") == 1, "only rank 0 reports"

    one_run, two_run = tmp_path / "one" / "ddp", tmp_path / "two" / "ddp"
    losses = [
        [(r["step"], r["loss"]) for r in read_metrics(d) if r["kind"] == "train"]
        for d in (one_run, two_run)
    ]
    assert [s for s, _ in losses[0]] == list(range(1, 13)) == [s for s, _ in losses[1]]
    for (step, a), (_, b) in zip(*losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}"
    evals = [[r for r in read_metrics(d) if r["kind"] == "eval"] for d in (one_run, two_run)]
    for a, b in zip(*evals, strict=True):
        assert (
            a["top1"] == b["top1"] and a["top5"] == b["top5"]
        )  # sharded eval counts every image once
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        w1 = ckpt.load_checkpoint_weights(ckpt.latest_checkpoint(one_run / "checkpoints"), name)
        w2 = ckpt.load_checkpoint_weights(ckpt.latest_checkpoint(two_run / "checkpoints"), name)
        for key in w1:
            torch.testing.assert_close(w1[key], w2[key], rtol=1e-4, atol=1e-5)


MODELS = ["test_convformer", "test_caformer", "test_dfformer", "test_cdfformer", "test_gfformer"]


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("name", [*MODELS, "test_lvvit"])
def test_gradients_arrive_in_their_parameters_strides(name: str, reference: bool) -> None:
    """DDP's reducer compares each gradient's strides with its parameter's exactly (size-1
    dims included) and warned on every run: SepConv's depthwise weights behind a channels-last
    input, 1x1 filter grids. ``align_grad_strides`` (which the engine applies before DDP)
    re-labels them; without it, at least the SepConv models differ."""
    import tokenmix
    from tokenmix.engine.distributed import align_grad_strides
    from tokenmix.layers import set_reference_mode

    def mismatches(aligned: bool) -> tuple[list[str], list[torch.Tensor]]:
        torch.manual_seed(0)
        model = tokenmix.create_model(name, num_classes=3, img_size=32)
        set_reference_mode(model, reference)
        if aligned:
            align_grad_strides(model)
        model(
            torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        ).sum().backward()
        wrong = [
            f"{key}: grad {tuple(p.grad.stride())} vs param {tuple(p.stride())}"
            for key, p in model.named_parameters()
            if p.grad is not None and p.grad.stride() != p.stride()
        ]
        return wrong, [p.grad for p in model.parameters()]

    before, grads_before = mismatches(aligned=False)
    after, grads_after = mismatches(aligned=True)
    assert not after, after
    for a, b in zip(grads_before, grads_after, strict=True):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    if name in ("test_convformer", "test_caformer", "test_cdfformer"):  # the SepConv models
        assert before, "SepConv's weight grads used to arrive with other strides"
