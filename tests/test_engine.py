"""Training engine on tiny models and data: optimizer groups, schedule, accumulation, clipping,
AMP, EMA, atomic checkpoints, non-finite stop, metrics, evaluation counts, token labeling."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tokenmix.config import load_config
from tokenmix.config.schema import LossConfig, ModelConfig, OptimConfig, ScheduleConfig
from tokenmix.data.augment import AugmentedBatch, TrainAugment
from tokenmix.data.crops import full_boxes
from tokenmix.engine import checkpoint as ckpt
from tokenmix.engine.build import build_loss, build_model
from tokenmix.engine.ema import create_ema
from tokenmix.engine.evaluate import evaluate
from tokenmix.engine.metrics import MetricsWriter, read_metrics
from tokenmix.engine.optim import create_optimizer, create_scheduler, lr_factor, param_groups
from tokenmix.engine.train import NonFiniteLossError, fit, forward_backward, optimizer_step
from tokenmix.models import list_models

# A run that takes about a second: tiny ConvFormer at 32x32 on 128 digits, one thread.
TINY = [
    "model.name=test_convformer",
    "model.img_size=32",
    "model.kwargs.dims=[8,8,16,16]",
    "data.train_limit=128",
    "data.val_limit=32",
    "data.num_workers=0",
    "data.load_size=32",
    "train.batch_size=16",
    "train.epochs=1",
    "train.cpu_threads=1",
    "log.every_steps=1",
    "log.tensorboard=false",
    "log.progress=false",
    "log.plots=false",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: on a shared 2-core machine, two threads spin-wait on a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_fit(tmp_path: Path, *overrides: str, resume: Path | None = None):
    cfg = load_config(overrides=[*TINY, *overrides])
    return fit(cfg, tmp_path / "run", resume=resume)


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]


def tiny_model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(name="test_convformer", img_size=32, kwargs={"dims": [8, 8, 16, 16]}, **kwargs),
        num_classes=10,
    )


def fake_batch(n: int = 8, seed: int = 0) -> AugmentedBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    targets = torch.nn.functional.one_hot(labels, 10).float()
    return AugmentedBatch(
        torch.randn(n, 3, 32, 32, generator=g),
        targets,
        labels,
        full_boxes(n),
        torch.zeros(n, dtype=torch.bool),
    )


# --- optimizer and schedule ------------------------------------------------------------------
def test_weight_decay_groups_exempt_1d_params() -> None:
    model = tiny_model()
    no_decay, decay = param_groups(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))


@pytest.mark.skipif("test_lvvit" not in list_models(), reason="LV-ViT not registered")
def test_no_weight_decay_names_are_exempt() -> None:
    model = build_model(ModelConfig(name="test_lvvit"), num_classes=10)
    skip = {id(p) for n, p in model.named_parameters() if n in model.no_weight_decay()}
    assert skip, "LV-ViT exempts its position embedding and class token"
    no_decay, _ = param_groups(model, 0.05)
    assert skip <= {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)],
)
def test_optimizers(name: str, cls: type) -> None:
    opt = create_optimizer(tiny_model(), OptimConfig(name=name, lr=0.1, weight_decay=0.01))
    assert type(opt) is cls
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.01]


def test_warmup_cosine_cooldown_per_step() -> None:
    kw = {
        "total_steps": 100,
        "warmup_steps": 20,
        "cooldown_steps": 10,
        "base_lr": 1.0,
        "warmup_lr": 0.01,
        "min_lr": 0.001,
    }
    lrs = [lr_factor(s, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[10] == pytest.approx(0.01 + 0.99 * 0.5)  # linear warmup
    assert lrs[20] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx((1.0 + 0.001) / 2)  # cosine midpoint
    assert lrs[90] == pytest.approx(0.001) and lrs[99] == pytest.approx(0.001)  # cooldown
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))

    opt = create_optimizer(tiny_model(), OptimConfig(lr=0.5))
    sched = create_scheduler(
        opt,
        ScheduleConfig(warmup_epochs=2, warmup_lr=0.0, min_lr=0.0),
        base_lr=0.5,
        steps_per_epoch=5,
        epochs=10,
    )
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == 0.0 and seen[5] == pytest.approx(0.25) and seen[10] == pytest.approx(0.5)
    assert seen[-1] < 0.001
    # the scheduler state is plain data: it survives a weights_only round trip
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["last_epoch"] == 50


# --- one step: accumulation, clipping, AMP ---------------------------------------------------
def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_accumulated_gradients_equal_the_full_batch() -> None:
    loss_fn = build_loss(LossConfig())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = fake_batch(8)
    common = {
        "loss_fn": loss_fn,
        "scaler": scaler,
        "autocast": contextlib.nullcontext,
        "sync": True,
    }
    full = tiny_model().eval()  # eval: no drop path, so both passes see the same network
    forward_backward(full, batch, None, loss_scale=1.0, **common)
    split = tiny_model().eval()
    for half in (slice(0, 4), slice(4, 8)):
        part = AugmentedBatch(
            batch.images[half],
            batch.targets[half],
            batch.labels[half],
            batch.boxes[half],
            batch.flips[half],
        )
        forward_backward(split, part, None, loss_scale=0.5, **common)
    for a, b in zip(_grads(full), _grads(split), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_clipping_bounds_the_update() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.randn(4, 3, 32, 32)).square().sum() * 100).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm > 0.5
    optimizer_step(opt, scaler, list(model.parameters()), clip_grad=0.5)
    with torch.no_grad():
        moved = [(p - b).norm() for p, b in zip(model.parameters(), before, strict=True)]
    assert torch.linalg.vector_norm(torch.stack(moved)).item() == pytest.approx(0.5, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_bf16_accumulation_clipping_step(tmp_path: Path) -> None:
    """One run through the loop with every option of a step on: all finite, weights move."""
    result = tiny_fit(
        tmp_path,
        "train.amp=bf16",
        "optim.accum_steps=2",
        "optim.clip_grad=1.0",
        "train.channels_last=true",
        "train.grad_checkpointing=true",
        "model.drop_path_rate=0.1",
        "ema.enabled=true",
        "train.max_steps=3",
    )
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.final["ema_top1"])


def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        tiny_fit(tmp_path, "train.amp=fp16", "train.device=cpu")
    assert not (tmp_path / "run").exists()


def test_drop_path_reaches_the_model() -> None:
    model = tiny_model(drop_path_rate=0.2)
    rates = [m.drop_rate for m in model.modules() if type(m).__name__ == "DropPath"]
    assert max(rates) == pytest.approx(0.2)


def test_overfits_a_tiny_batch(tmp_path: Path) -> None:
    tiny_fit(
        tmp_path,
        "data.train_limit=16",
        "train.epochs=60",
        "aug.scale=null",
        "aug.hflip_rate=0",
        "optim.lr=3e-3",
        "optim.weight_decay=0",
        "sched.name=constant",
        "log.every_steps=60",
    )
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < 0.05 * losses[0], losses


# --- EMA -------------------------------------------------------------------------------------
def test_ema_follows_the_formula() -> None:
    model = tiny_model()
    ema = create_ema(model, decay=0.75)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update_parameters(model)  # first update copies
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update_parameters(model)
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point() and k in dict(model.named_parameters()):
            torch.testing.assert_close(v, 0.75 * first[k] + 0.25 * (first[k] + 1.0))


# --- checkpoints -----------------------------------------------------------------------------
def _save(ckpt_dir: Path, step: int, keep: int = 2) -> Path:
    w = {"w": torch.full((3,), float(step))}
    return ckpt.save_checkpoint(
        ckpt_dir,
        step,
        model_state=w,
        train_state={"step": step},
        meta={"step": step},
        keep_last=keep,
    )


def test_checkpoints_keep_last_and_survive_a_crash_mid_write(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _save(d, step)
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step_00000002", "step_00000003"]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)  # dies after the weights, before the state file
    with pytest.raises(OSError, match="disk full"):
        _save(d, 4)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(d).name == "step_00000003"  # the half-written one is invisible
    assert ckpt.load_train_state(d / "step_00000003") == {"step": 3}
    assert ckpt.load_checkpoint_weights(d / "step_00000003")["w"][0] == 3.0
    _save(d, 4)  # the next save replaces the leftovers
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step_00000003", "step_00000004"]
    assert not list(d.glob(".tmp*"))


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def fail(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(target, fail)
    assert target.read_text() == "old"


def test_run_checkpoint_contents(tmp_path: Path) -> None:
    tiny_fit(tmp_path, "ema.enabled=true", "checkpoint.every_steps=4")
    run = tmp_path / "run"
    step_dir = ckpt.latest_checkpoint(run / "checkpoints")
    assert step_dir.name == "step_00000008"
    state = torch.load(step_dir / ckpt.STATE_FILE, weights_only=True)  # plain data only
    assert state["counters"]["step"] == 8 and state["loader"]["epoch"] == 0
    assert {"optimizer", "scheduler", "scaler", "ema_updates"} <= set(state)
    meta = ckpt.read_metadata(step_dir / ckpt.MODEL_FILE)
    assert json.loads(meta["config"])["model"]["name"] == "test_convformer"
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert (step_dir / ckpt.EMA_FILE).is_file()
    assert (run / "checkpoints" / ckpt.BEST_FILE).is_file()
    assert load_config(run / "config.yaml").model.kwargs == {"dims": [8, 8, 16, 16]}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import tokenmix.engine.train as train_mod

    calls = {"n": 0}
    real = train_mod.build_loss

    def poisoned(cfg):
        inner = real(cfg)

        def loss(outputs, batch, dense):
            calls["n"] += 1
            value = inner(outputs, batch, dense)
            return value * float("nan") if calls["n"] == 5 else value

        return loss

    monkeypatch.setattr(train_mod, "build_loss", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        tiny_fit(tmp_path, "checkpoint.every_steps=2", "log.every_steps=3")
    message = str(err.value)
    assert "step 5" in message and "step_00000004" in message
    d = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(d)] == ["step_00000002", "step_00000004"]
    weights = ckpt.load_checkpoint_weights(d / "step_00000004")
    assert all(torch.isfinite(v).all() for v in weights.values())


# --- metrics and evaluation ------------------------------------------------------------------
def test_metrics_jsonl_tensorboard_and_resume_truncation(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path, tensorboard=True)
    for step in range(1, 6):
        w.write("train", step, loss=1.0 / step)
    w.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # a line torn by a kill
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=3)
    w.write("train", 4, loss=0.0)
    w.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == 0.0


class _Lookup(nn.Module):
    """Logits read from a table by the index stored in pixel (0, 0) of channel 0."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()] + self.w


def test_evaluate_counts_are_exact() -> None:
    g = torch.Generator().manual_seed(1)
    n, c = 50, 7
    logits = torch.randn(n, c, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    images = torch.zeros(n, 3, 2, 2)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    batches = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, n, 16)]
    r = evaluate(
        _Lookup(logits), batches, num_classes=c, device=torch.device("cpu"), prepare=lambda x: x
    )
    pred = logits.argmax(1)
    assert r.num_samples == n
    assert r.top1 == pytest.approx(100 * (pred == labels).float().mean().item())
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1)
    assert r.top5 == pytest.approx(100 * top5.float().mean().item())
    assert r.loss == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6
    )
    for i in range(c):
        for j in range(c):
            assert r.confusion[i, j] == ((labels == i) & (pred == j)).sum()
    per_class = r.per_class_accuracy
    for i in range(c):
        mask = labels == i
        if mask.any():
            assert per_class[i] == pytest.approx(100 * (pred[mask] == i).float().mean().item())


def _linear_eval_case(n: int, height: int, width: int, classes: int, seed: int):
    """A linear classifier on random images: ``(model, images, labels, evaluate kwargs)``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * height * width, classes))
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, height, width, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    kwargs = {"num_classes": classes, "device": torch.device("cpu"), "prepare": lambda x: x}
    return model, images, labels, kwargs


def test_evaluate_hflip_averages_the_mirror_logits() -> None:
    """Test-time flip scores each image by the mean logits of it and its mirror image."""
    model, images, labels, kwargs = _linear_eval_case(12, 2, 4, classes=5, seed=2)
    r = evaluate(model, [(images, labels)], hflip=True, **kwargs)
    with torch.no_grad():
        mean = (model(images) + model(images.flip(-1))) / 2
    assert r.loss == pytest.approx(torch.nn.functional.cross_entropy(mean, labels).item(), rel=1e-6)
    plain = evaluate(model, [(images, labels)], **kwargs)
    assert plain.loss != pytest.approx(r.loss)


def test_evaluate_shift_averages_ten_views_with_replicated_edges() -> None:
    """shift=1 with hflip: the image and its 1-px moves left/right/up/down, each mirrored."""
    model, images, labels, kwargs = _linear_eval_case(7, 5, 6, classes=4, seed=3)
    r = evaluate(model, [(images, labels)], hflip=True, shift=1, **kwargs)

    def moved(dy: int, dx: int) -> torch.Tensor:
        """out[i, j] = images[clamp(i + dy), clamp(j + dx)]: a move with replicated edges."""
        rows = (torch.arange(5) + dy).clamp(0, 4)
        cols = (torch.arange(6) + dx).clamp(0, 5)
        return images[:, :, rows][:, :, :, cols]

    views = [moved(dy, dx) for dy, dx in [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]]
    with torch.no_grad():
        mean = sum(model(v) + model(v.flip(-1)) for v in views) / 10
    assert r.loss == pytest.approx(torch.nn.functional.cross_entropy(mean, labels).item(), rel=1e-5)
    with pytest.raises(ValueError, match="shift"):
        evaluate(model, [(images, labels)], shift=-1, **kwargs)


def test_tta_last_runs_the_views_only_in_the_final_evaluation(tmp_path: Path) -> None:
    """eval.tta=last: the curve's evaluations see one view, the final one 10."""
    tiny_fit(
        tmp_path,
        "train.epochs=2",
        "eval.every_epochs=1",
        "eval.hflip=true",
        "eval.shift=1",
        "eval.tta=last",
    )
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert [r["views"] for r in evals] == [1, 10]


def test_alternate_flip_mirrors_each_image_in_every_other_epoch(
    tmp_path: Path, monkeypatch
) -> None:
    """aug.hflip=alternate: the engine hands the augmentation the batch's dataset indices and
    the epoch, so an image seen in epochs 0 and 1 is mirrored in exactly one of them."""
    seen: dict[int, list[bool]] = {}
    call = TrainAugment.__call__

    def record(self, images, labels, **kwargs):
        out = call(self, images, labels, **kwargs)
        for i, flip in zip(kwargs["indices"].tolist(), out.flips.tolist(), strict=True):
            seen.setdefault(i, []).append(flip)
        return out

    monkeypatch.setattr(TrainAugment, "__call__", record)
    tiny_fit(tmp_path, "train.epochs=2", "aug.hflip=alternate")
    both = [flips for flips in seen.values() if len(flips) == 2]
    assert len(both) > 20 and all(a != b for a, b in both)
    assert 0.25 < sum(a for a, _ in both) / len(both) < 0.75


def test_size_schedule_trains_each_epoch_at_its_size(tmp_path: Path, monkeypatch) -> None:
    """aug.size_schedule: the engine hands the augmentation the epoch, so the model sees 16 px
    images in epoch 0 and 32 px in epoch 1; evaluation stays at the model's 32 px."""
    sizes: dict[int, set[tuple[int, int]]] = {}
    call = TrainAugment.__call__

    def record(self, images, labels, **kwargs):
        out = call(self, images, labels, **kwargs)
        sizes.setdefault(kwargs["epoch"], set()).add(tuple(out.images.shape[-2:]))
        return out

    monkeypatch.setattr(TrainAugment, "__call__", record)
    result = tiny_fit(tmp_path, "train.epochs=2", "aug.size_schedule=[[0,16],[1,32]]")
    assert sizes == {0: {(16, 16)}, 1: {(32, 32)}}
    assert all(math.isfinite(v) for v in train_losses(tmp_path / "run"))
    assert math.isfinite(result.final["top1"])


def test_size_schedule_refused_with_token_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"size_schedule cannot be used with loss\.kind"):
        tiny_fit(
            tmp_path,
            "model.name=test_lvvit",
            "model.kwargs={}",
            "loss.kind=token_labeling",
            "aug.size_schedule=[[0,16],[1,32]]",
        )


# --- token labeling seam ---------------------------------------------------------------------
def test_token_labeling_needs_token_outputs() -> None:
    with pytest.raises(ValueError, match="token outputs"):
        build_model(ModelConfig(name="test_convformer"), num_classes=10, token_labeling=True)


@pytest.mark.skipif("test_lvvit" not in list_models(), reason="LV-ViT not registered")
def test_token_labeling_trains_with_a_label_store(tmp_path: Path) -> None:
    """LV-ViT + TokenLabelingLoss + dense maps from a teacher, cropped with the batch's boxes."""
    from tokenmix.data.datasets import open_dataset
    from tokenmix.engine.relabel import relabel_dataset
    from tokenmix.models import create_model

    teacher = create_model("test_lvvit", img_size=32)
    store = tmp_path / "labels"
    relabel_dataset(teacher, open_dataset("digits", "train"), store, topk=3, progress=False)
    tiny_fit(
        tmp_path,
        "model.name=test_lvvit",
        "model.kwargs={}",
        "loss.kind=token_labeling",
        f"loss.token_labels={store}",
        "loss.label_smoothing=0.1",
        "aug.cutmix_alpha=1.0",
        "train.max_steps=3",
    )
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_option(tmp_path: Path) -> None:
    tiny_fit(tmp_path, "train.compile=true", "train.max_steps=2")
    assert len(train_losses(tmp_path / "run")) == 2
