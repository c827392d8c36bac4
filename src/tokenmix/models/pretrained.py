"""Pretrained configs: where a model's weights come from and how to feed it images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """Provenance and eval transform of one set of weights (or of none: ``url`` empty).

    ``source_format`` says which converter turns the file into our layout: ``"pth"`` (official
    PyTorch state_dict), ``"pdparams"`` (Paddle), ``"safetensors"`` (ours).
    """

    tag: str = ""
    url: str = ""
    file_name: str = ""
    sha256: str | None = None
    num_bytes: int | None = None
    source_format: str = "pth"
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    first_conv: str = ""
    classifier: tuple[str, ...] = ("head",)
    top1: float | None = None
    top5: float | None = None
    license: str = ""
    paper: str = ""
    source: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        return bool(self.url)

    def full_name(self, arch: str) -> str:
        return f"{arch}.{self.tag}" if self.tag else arch

    def with_input_size(self, height: int, width: int) -> PretrainedCfg:
        return replace(self, input_size=(self.input_size[0], height, width))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
