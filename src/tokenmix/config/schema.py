"""The training configuration: one typed dataclass per concern, defaults that make sense alone.

A recipe (``configs/*.yaml``) only overrides these defaults, and ``--set key=value`` overrides
the recipe. Every field is checked when a config is loaded (:mod:`tokenmix.config.load`):
unknown keys and values of the wrong type or outside their range are errors that name the key
and what it accepts. Bounds live in the field metadata (``ge``/``gt``/``le``) so the loader
can report them.

The defaults follow timm's training script where a recipe does not say otherwise (AdamW,
weight decay 0.05, cosine decay to 1e-6 from a 1e-6 warmup), which is what the DFFormer
(okojoalg/dfformer) and Token Labeling (zihangJiang/TokenLabeling) recipes were run with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AMP = Literal["auto", "none", "bf16", "fp16"]
MONITOR = Literal["top1", "top5", "loss", "ema_top1", "ema_top5", "ema_loss"]


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    ordered: bool = False,
) -> Any:
    """A field with a numeric range the loader enforces (``ge`` <= value, ``gt`` < value,
    ``le`` >= value, ``lt`` > value; for a tuple, every item). ``ordered``: a ``(min, max)``
    pair that must not be reversed. Every float must also be finite (the loader's rule)."""
    return field(
        default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "ordered": ordered}
    )


@dataclass
class ModelConfig:
    # A registered architecture, optionally with a weight tag: `tokenmix models` lists them.
    name: str = "test_convformer"
    # False: fresh initialisation; True: the tag's published weights; a path: that checkpoint.
    pretrained: bool | str = False
    # Input resolution; None keeps the model's pretrained cfg (224 for the ImageNet models).
    img_size: int | None = bounded(None, ge=8)
    # None uses the training set's number of classes.
    num_classes: int | None = bounded(None, ge=1)
    # Stochastic depth, linearly increasing over the blocks (0.2 for DFFormer-S18 on ImageNet).
    drop_path_rate: float = bounded(0.0, ge=0.0, le=1.0)
    # Architecture overrides passed to the builder, e.g. {depths: [1, 1, 1, 1], dims: [8, 16, 24, 32]}.
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    # Dataset spec for `open_dataset`: a folder, a CIFAR-10 archive, a list file or `digits`.
    train: str = "digits"
    # Evaluation spec; None evaluates on `val_split` of the training spec.
    val: str | None = None
    train_split: Literal["train", "val", "test"] = "train"
    # "val" falls back to a "validation" or "test" folder (CIFAR-style trees have no val/).
    val_split: Literal["train", "val", "test"] = "val"
    # Use only this many samples (a fixed random subset): smoke runs and CPU benchmarks.
    train_limit: int | None = bounded(None, ge=1)
    val_limit: int | None = bounded(None, ge=1)
    # Training images are loaded whole, squashed to this square size, and cropped on the
    # device; null = img_size / 0.875 (256 for 224). Small datasets (CIFAR, digits) are
    # cheapest at their native size: the crop upsamples on the device.
    load_size: int | None = bounded(None, ge=8)
    # Loader processes per rank; 0 decodes in the training process (simplest to debug).
    num_workers: int = bounded(2, ge=0)
    # What to do with an image that fails to decode: stop naming it, or skip it with a warning.
    bad_images: Literal["error", "skip"] = "error"
    # Images whose header declares more pixels are bad images, refused before decoding
    # (decompression bombs); null = Pillow's limit only. Default 2**26 (8192 x 8192).
    max_pixels: int | None = bounded(2**26, ge=1)
    # List files may name absolute paths or climb above their root with '..' only when true.
    allow_outside_root: bool = False
    # Decode both sets once and keep them in RAM as uint8 at their load size (CIFAR-10 at 32 px:
    # 180 MiB): later epochs only index. For small data on few cores (tokenmix.data.cache).
    cache: bool = False
    # Eval transform; None takes each from the model's pretrained cfg.
    crop_pct: float | None = bounded(None, gt=0.0, le=1.0)
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class AugmentConfig:
    """Training augmentation, run batched on the device (:mod:`tokenmix.data.augment`).

    The one augmentation config: :class:`tokenmix.data.augment.TrainAugment` takes it as it is
    (and checks what the loader cannot: the ``scale`` order, the RandAugment spec); label
    smoothing is ``loss.label_smoothing``. The defaults are the plain timm baseline
    (random-resized crop and flip); the ImageNet recipes add RandAugment, random erasing, Mixup
    and CutMix (:func:`tokenmix.data.augment.imagenet_recipe`).
    """

    # RandomResizedCrop area fraction and aspect range; scale null = whole image, no crop.
    scale: tuple[float, float] | None = bounded((0.08, 1.0), gt=0.0, le=1.0, ordered=True)
    # log-uniform, so both ends must be > 0
    ratio: tuple[float, float] = bounded((3 / 4, 4 / 3), gt=0.0, ordered=True)
    # Random shift of up to this many pixels of the loaded image each way, edges replicated
    # (the pad-and-crop of fast CIFAR trainers; after the crop, exact at integer pixels); 0 = off.
    translate: int = bounded(0, ge=0)
    hflip_rate: float = bounded(0.5, ge=0.0, le=1.0)
    # "random": each sample flipped with hflip_rate, drawn anew every epoch. "alternate": a
    # random half of the images is flipped in even epochs and the other half in odd ones, so
    # every image is seen both ways in any two epochs (Jordan 2024, airbench); hflip_rate 0.5.
    hflip: Literal["random", "alternate"] = "random"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bicubic"
    # Progressive resizing (fast.ai's DAWNBench trick): [from_epoch, size] steps for the training
    # images, e.g. [[0, 24], [8, 32]] trains epochs 0-7 at 24 px and the rest at 32. Each image
    # is cropped at the model's size as usual, then resized (bilinear, antialiased). The first
    # step starts at epoch 0; evaluation stays at the model's size; not with token labeling
    # (its label grid is the model's). null = the model's input size throughout.
    size_schedule: list[tuple[int, int]] | None = None
    # Random rotation in +-degrees (the seed's CIFAR-10 setup uses 20).
    rotation: float = bounded(0.0, ge=0.0, le=180.0)
    # timm RandAugment spec, e.g. "rand-m9-mstd0.5-inc1"; null = off.
    randaugment: str | None = None
    # Samples sharing one draw of RandAugment operations (kornia draws per call).
    randaugment_group: int = bounded(16, ge=1)
    # Brightness/contrast/saturation strength; 0 = off.
    color_jitter: float = bounded(0.0, ge=0.0)
    # Random erasing probability per sample (timm reprob) and fill: per-pixel noise or zeros.
    erase_rate: float = bounded(0.0, ge=0.0, le=1.0)
    erase_mode: Literal["pixel", "const"] = "pixel"
    # Mixup / CutMix Beta(alpha, alpha); 0 turns each off.
    mixup_alpha: float = bounded(0.0, ge=0.0)
    cutmix_alpha: float = bounded(0.0, ge=0.0)
    # Probability that a batch is mixed at all, and of CutMix rather than Mixup when both are on.
    mix_rate: float = bounded(1.0, ge=0.0, le=1.0)
    switch_rate: float = bounded(0.5, ge=0.0, le=1.0)


@dataclass
class LossConfig:
    # "ce": cross entropy against soft (smoothed, mixed) targets. "token_labeling": LV-ViT's
    # class + dense token loss (TokenLabelingLoss); needs a model with token outputs (lvvit_*).
    kind: Literal["ce", "token_labeling"] = "ce"
    label_smoothing: float = bounded(0.0, ge=0.0, le=0.99)
    # Token-label directory (`tokenmix relabel` output) for kind=token_labeling; null uses
    # the class target for every token (the official fallback).
    token_labels: str | None = None
    # Weights of the class and dense terms; official TokenLabeling trains with 1.0 and 1.0.
    cls_weight: float = bounded(1.0, ge=0.0)
    dense_weight: float = bounded(1.0, ge=0.0)


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    # Peak learning rate, for the global batch `train.batch_size` (not scaled automatically).
    lr: float = bounded(1e-3, gt=0.0, lt=10.0)
    # Applied to matrices and convolutions only: 1-D parameters (norms, biases, scales) and
    # the model's `no_weight_decay()` names are exempt, as in timm.
    weight_decay: float = bounded(0.05, ge=0.0, lt=10.0)
    # beta = 1 divides by zero in Adam's bias correction
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0.0, lt=1.0)
    eps: float = bounded(1e-8, gt=0.0, lt=1.0)
    momentum: float = bounded(0.9, ge=0.0, le=1.0)
    # Clip the global gradient norm to this value; None = no clipping.
    clip_grad: float | None = bounded(None, gt=0.0)
    # Micro-batches per optimizer step: the same global batch on less memory.
    accum_steps: int = bounded(1, ge=1)


@dataclass
class ScheduleConfig:
    # Per optimizer step: linear warmup from `warmup_lr`, then cosine to `min_lr`.
    name: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = bounded(0.0, ge=0.0)
    warmup_lr: float = bounded(1e-6, ge=0.0, lt=10.0)
    min_lr: float = bounded(1e-6, ge=0.0, lt=10.0)
    # Epochs at `min_lr` after the cosine (timm adds 10: the papers' "300 epochs" run 310).
    cooldown_epochs: float = bounded(0.0, ge=0.0)


@dataclass
class TrainConfig:
    epochs: int = bounded(10, ge=1)
    # Global batch per optimizer step, over all processes and accumulation steps, so a recipe
    # means the same thing on 1 CPU or 8 GPUs.
    batch_size: int = bounded(128, ge=1)
    eval_batch_size: int | None = bounded(None, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Threads for CPU ops in this process; null = PyTorch's default (one per core). On a
    # shared or busy CPU fewer threads are often much faster (no spin-waiting on a busy core).
    cpu_threads: int | None = bounded(None, ge=1)
    # CPU runs: "retain" sets glibc malloc to keep freed memory for the next step instead of
    # returning it to the kernel and faulting it back in (~12 % more img/s measured in training
    # on a 2-core VM; process-wide, memory stays at the peak); "system" leaves malloc alone.
    cpu_allocator: Literal["retain", "system"] = "retain"
    # auto: bf16 autocast where the device has bf16 units (CUDA with bf16, CPUs with
    # AVX512-BF16/AMX), float32 elsewhere. bf16 without such units warns and runs float32
    # (emulated bf16 is tens of times slower). fp16: CUDA only, with a gradient scaler.
    amp: AMP = "none"
    compile: bool = False
    channels_last: bool = False
    # Recompute activations in the backward pass: less memory, ~30% slower.
    grad_checkpointing: bool = False
    # Stop after this many optimizer steps (smoke tests); the schedule still spans `epochs`.
    max_steps: int | None = bounded(None, ge=1)


@dataclass
class EmaConfig:
    # Keep an exponential moving average of the weights (LV-ViT: decay 0.99992), evaluated
    # and checkpointed beside the model.
    enabled: bool = False
    decay: float = bounded(0.9998, ge=0.0, le=1.0)


@dataclass
class CheckpointConfig:
    every_epochs: int = bounded(1, ge=1)
    # Also save every N optimizer steps (long epochs, pre-emptible machines); None = off.
    every_steps: int | None = bounded(None, ge=1)
    # Step checkpoints to keep; the best one is kept apart.
    keep_last: int = bounded(2, ge=1)
    keep_best: bool = True
    # Eval metric that picks the best checkpoint (loss: lower is better, others higher).
    monitor: MONITOR = "top1"


@dataclass
class EvalConfig:
    every_epochs: int = bounded(1, ge=1)
    # Images in the prediction grid written at the end of training.
    grid_images: int = bounded(32, ge=0)
    # Test-time flip: average the logits of each image and its mirror (2x evaluation compute).
    hflip: bool = False
    # Test-time shift: also average over the image moved by this many pixels left, right, up
    # and down, edges replicated (5x evaluation compute; pairs with aug.translate); 0 = off.
    shift: int = bounded(0, ge=0)
    # Which evaluations use hflip and shift: every one, or only the last (the earlier ones, for
    # the learning curve and the best checkpoint, then run on the plain image at 1x compute).
    tta: Literal["every", "last"] = "every"


@dataclass
class LogConfig:
    # Losses are summed on the device and read back every N steps, not on every step.
    every_steps: int = bounded(50, ge=1)
    tensorboard: bool = True
    progress: bool = True
    # Learning curves, confusion matrix and prediction grid at the end of training.
    plots: bool = True


@dataclass
class RunConfig:
    # The run lives in `output_dir/name`; name None = the recipe file's name.
    output_dir: str = "runs"
    name: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run: RunConfig = field(default_factory=RunConfig)
