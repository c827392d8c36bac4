"""Pretrained configs: where a model's weights come from and how to feed it images.

A :class:`PretrainedCfg` is a frozen dataclass, read by attribute (``cfg.input_size``), and also
a read-only mapping over the same names (``cfg["input_size"]``, ``cfg.get("test_input_size")``,
``"crop_pct" in cfg``, ``dict(cfg)``), which is how timm reads a model's ``pretrained_cfg``:
``timm.data.resolve_data_config(model=model)`` works on our models. The keys timm reads carry
timm's names and meanings (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
``crop_mode``, ``num_classes``, ``first_conv``, ``classifier``, ``label_names``, ``tag``, ``url``);
a key timm knows and we do not hold (``test_input_size``) is absent, so ``get`` falls back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# label_set -> where its class names live (imported on first use: tokenmix.data imports us)
LABEL_SETS = {"imagenet-1k": ("tokenmix.data.imagenet_classes", "IMAGENET_1K_CLASSES")}


@dataclass(frozen=True)
class PretrainedCfg(Mapping[str, Any]):
    """Provenance and eval transform of one set of weights (or of none: ``url`` empty).

    ``source_format`` says which converter turns the file into our layout: ``"pth"`` (official
    PyTorch state_dict), ``"pdparams"`` (Paddle), ``"safetensors"`` (ours). ``crop_mode`` is
    timm's (``"center"``: the shorter side resized to ``size / crop_pct``, then a centre crop).
    ``label_set`` names the classes the weights predict (``"imagenet-1k"``); their names are
    :attr:`label_names`.
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
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    first_conv: str = ""
    classifier: tuple[str, ...] = ("head",)
    label_set: str = ""
    top1: float | None = None
    top5: float | None = None
    license: str = ""
    paper: str = ""
    source: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label_set and self.label_set not in LABEL_SETS:
            raise ValueError(f"unknown label_set {self.label_set!r}; known: {sorted(LABEL_SETS)}")

    @property
    def has_weights(self) -> bool:
        return bool(self.url)

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """The class names, index ``i`` naming output ``i``; ``None`` without a ``label_set``."""
        if not self.label_set:
            return None
        from importlib import import_module

        module, name = LABEL_SETS[self.label_set]
        return getattr(import_module(module), name)

    def full_name(self, arch: str) -> str:
        return f"{arch}.{self.tag}" if self.tag else arch

    def with_input_size(self, height: int, width: int) -> PretrainedCfg:
        return replace(self, input_size=(self.input_size[0], height, width))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- read-only mapping (timm's view of a pretrained_cfg) ------------------------------
    def _keys(self) -> tuple[str, ...]:
        return (*(f.name for f in fields(self)), "label_names")

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())
