"""From a checked config to the objects a run needs: model, datasets, loaders, augmentation, loss.

Each builder takes the config sections it reads and nothing else, so what a piece depends on
is visible in its signature. The data side composes :mod:`tokenmix.data`: training images are
squashed to ``data.load_size`` by the loader workers and augmented on the device
(:class:`~tokenmix.data.augment.TrainAugment`); evaluation images get the model's eval
transform (resize, centre crop with ``crop_pct``, interpolation, mean/std from its pretrained
cfg, each overridable under ``data``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenmix.config.schema import AugmentConfig, DataConfig, LossConfig, ModelConfig
from tokenmix.data import augment as aug
from tokenmix.data.datasets import ImageDataset, open_dataset
from tokenmix.data.loader import Loader, build_loader
from tokenmix.data.transforms import Normalize, SquashResize, eval_transforms
from tokenmix.engine.losses import TokenLabelingLoss, soft_cross_entropy
from tokenmix.models import create_model
from tokenmix.models.pretrained import PretrainedCfg


def build_model(cfg: ModelConfig, *, num_classes: int, token_labeling: bool = False) -> nn.Module:
    """The model the config names, with its overrides, drop path and class count.

    ``token_labeling`` switches an LV-ViT to its training outputs (class logits, token logits,
    MixToken box); other models have no token outputs and are refused with that reason.
    """
    kwargs = dict(cfg.kwargs)
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        model = create_model(
            cfg.name,
            pretrained=cfg.pretrained or None,
            num_classes=cfg.num_classes or num_classes,
            img_size=cfg.img_size,
            **kwargs,
        )
    except TypeError as e:  # an override the architecture does not take
        raise ValueError(f"model.kwargs: {cfg.name} does not accept these overrides ({e})") from e
    if token_labeling:
        if not hasattr(model, "token_labeling"):
            raise ValueError(
                f"loss.kind=token_labeling needs a model with token outputs (lvvit_*); "
                f"{cfg.name} has none. Use loss.kind=ce."
            )
        model.token_labeling = True
    return model


class SubsetDataset(ImageDataset):
    """A fixed subset of another dataset that is still an :class:`ImageDataset`.

    Indices are positions in the subset, so ``sample_id``, labels and token labels agree with
    what the loader returns; loading and the transform are the base dataset's.
    """

    def __init__(self, base: ImageDataset, indices: Sequence[int]) -> None:
        # no super().__init__(): it would assign a default transform, which the property
        # below forwards to the base dataset
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = base.classes
        self.bad_images = base.bad_images

    @property
    def transform(self) -> Any:  # type: ignore[override]
        return self.base.transform

    @transform.setter
    def transform(self, value: Any) -> None:
        self.base.transform = value

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def sample_id(self, i: int) -> str:
        return self.base.sample_id(int(self.indices[self._index(i)]))

    def load(self, i: int, *, draft_size: tuple[int, int] | None = None) -> Any:
        return self.base.load(int(self.indices[self._index(i)]), draft_size=draft_size)

    def describe(self) -> str:
        return f"{self.base.describe()} [subset of {len(self)}]"


def limit(dataset: ImageDataset, count: int | None, seed: int) -> ImageDataset:
    """A fixed random subset of ``count`` samples (all of them when ``count`` is None or larger)."""
    if count is None or count >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset), generator=g)[:count].sort().values
    return SubsetDataset(dataset, keep.tolist())


def open_datasets(cfg: DataConfig, *, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """The training and evaluation datasets (limited to fixed subsets when the config says so)."""
    opts = {
        "bad_images": cfg.bad_images,
        "max_pixels": cfg.max_pixels,
        "allow_outside_root": cfg.allow_outside_root,
    }
    train = open_dataset(cfg.train, cfg.train_split, **opts)
    val = open_dataset(cfg.val or cfg.train, cfg.val_split, **opts)
    if train.classes != val.classes:
        raise ValueError(
            f"data.train and data.val have different classes ({len(train.classes)} vs "
            f"{len(val.classes)}: {train.classes[:5]}... vs {val.classes[:5]}...)"
        )
    return limit(train, cfg.train_limit, seed), limit(val, cfg.val_limit, seed)


def attach_transforms(
    train: ImageDataset, val: ImageDataset, cfg: DataConfig, pretrained_cfg: PretrainedCfg
) -> Normalize:
    """Set the loaders' worker transforms; return the device-side eval normalisation.

    ``pretrained_cfg`` is the model's, its ``input_size`` already the training resolution.
    """
    img_size = (pretrained_cfg.input_size[1], pretrained_cfg.input_size[2])
    train.transform = SquashResize(cfg.load_size or math.ceil(max(img_size) / 0.875))
    val.transform, normalize = eval_transforms(
        pretrained_cfg,
        img_size=img_size,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    return normalize


def build_loaders(
    train_set: ImageDataset,
    val_set: ImageDataset,
    cfg: DataConfig,
    *,
    micro_batch: int,
    eval_batch: int,
    seed: int,
    rank: int,
    world_size: int,
    progress: bool = False,
) -> tuple[Loader, Loader]:
    """Training loader (shuffled per epoch, resumable) and evaluation loader (in order)."""
    if cfg.cache:
        from ..data.cache import CachedDataset

        fill = {"num_workers": cfg.num_workers, "progress": progress}
        train_set = CachedDataset(train_set, name="train", **fill)
        val_set = CachedDataset(val_set, name="val", **fill)
    common = {"num_workers": cfg.num_workers, "rank": rank, "world_size": world_size}
    train = build_loader(train_set, batch_size=micro_batch, train=True, seed=seed, **common)
    val = build_loader(val_set, batch_size=eval_batch, train=False, **common)
    return train, val


def build_augment(
    cfg: AugmentConfig,
    *,
    img_size: tuple[int, int],
    num_classes: int,
    smoothing: float,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    seed: int = 0,
) -> aug.TrainAugment:
    """The device-side training augmentation (``smoothing`` applied to its soft targets;
    ``seed``, the run's, picks the images ``aug.hflip: alternate`` flips in even epochs)."""
    return aug.TrainAugment(
        cfg,
        img_size=img_size,
        num_classes=num_classes,
        smoothing=smoothing,
        mean=mean,
        std=std,
        seed=seed,
    )


Loss = Callable[[Any, aug.AugmentedBatch, torch.Tensor | None], torch.Tensor]


def build_loss(cfg: LossConfig) -> Loss:
    """``loss(outputs, batch, dense_targets) -> scalar``, for ``loss.kind``.

    ``ce``: soft-target cross entropy against the augmented batch's targets (smoothing and
    Mixup/CutMix already in them). ``token_labeling``: :class:`TokenLabelingLoss` on the
    model's ``(cls_logits, aux_logits, mix_box)``, with the batch's (mixed, unsmoothed)
    targets for the class token and the token-label targets, if any, for the tokens.
    """
    if cfg.kind == "ce":

        def ce(
            outputs: torch.Tensor, batch: aug.AugmentedBatch, dense: torch.Tensor | None
        ) -> torch.Tensor:
            return soft_cross_entropy(outputs, batch.targets)

        return ce
    tl = TokenLabelingLoss(cfg.cls_weight, cfg.dense_weight, smoothing=cfg.label_smoothing)

    def token_labeling(
        outputs: Any, batch: aug.AugmentedBatch, dense: torch.Tensor | None
    ) -> torch.Tensor:
        return tl(outputs, batch.targets, dense)

    return token_labeling
