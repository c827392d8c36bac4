"""Published weights per architecture: provenance, accuracy and eval transform.

``WEIGHTS[arch]`` is a list of overrides applied to the family's default
:class:`~tokenmix.models.pretrained.PretrainedCfg`; the first entry is the default tag. An
architecture without entries has one untagged cfg and no weights.

Every URL, file name and accuracy below is copied from the authors' own publication, named in
each entry's ``source``:

- DFFormer / CDFFormer: ``default_cfgs`` in okojoalg/dfformer ``models/dfformer.py`` (GitHub
  release ``weights``). The README publishes no per-model accuracy and we could not read the
  paper's table from a primary source here, so ``top1`` is left empty rather than guessed.
  GFFormer has no published weights.
- ConvFormer / CAFormer: sail-sg/metaformer ``README.md`` (files hosted on Hugging Face,
  ``sail/dl``); eval transform from ``default_cfgs`` in ``metaformer_baselines.py``.
- LV-ViT: zihangJiang/TokenLabeling ``README.md`` (GitHub releases ``1.0`` and ``1.1``); eval
  transform from ``default_cfgs`` in ``tlt/models/lvvit.py`` and the README's ``validate.py``
  commands (``--img-size`` changes the size, the crop fraction stays the model's default).

No author publishes a SHA-256 or a size, and no official file name embeds a hash prefix (the
LV-ViT names embed parameter count, resolution and top-1, e.g. ``lvvit_s-26M-224-83.3``), so
``sha256`` stays ``None`` and :mod:`tokenmix.models.hub` records the hash of the first download.

Tags say what the weights were trained on and at which resolution: ``in1k`` (ImageNet-1k),
``in21k_ft_in1k`` (ImageNet-21k pre-training, ImageNet-1k fine-tuning), ``tl_in1k`` (ImageNet-1k
with Token Labeling), suffix ``_384``/``_448``/``_512`` for the fine-tuning resolution, which
also becomes the cfg's ``input_size`` so ``create_model('lvvit_s.tl_in1k_384')`` builds at 384.

:data:`TAG_ALIASES` maps other libraries' names for the same files to ours: timm calls the
ConvFormer / CAFormer weights ``sail_in1k``, ``sail_in1k_384``, ``sail_in22k_ft_in1k`` and
``sail_in22k_ft_in1k_384`` (``timm/caformer_s18.sail_in1k`` ...), so ``caformer_s18.sail_in1k``
names ``caformer_s18.in1k``. timm's ``sail_in22k`` (the ImageNet-21k classifier before
fine-tuning) is not in our table, so it has no alias.
"""

from __future__ import annotations

from typing import Any

from .pretrained import IMAGENET_MEAN, IMAGENET_STD

_EVAL = {"interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _size(res: int) -> tuple[int, int, int]:
    return (3, res, res)


# --- DFFormer / CDFFormer ------------------------------------------------------------------
_DF_URL = "https://github.com/okojoalg/dfformer/releases/download/weights/{}.pth"


def _dfformer(arch: str) -> list[dict[str, Any]]:
    return [
        {
            "tag": "in1k",
            "url": _DF_URL.format(arch),
            "file_name": f"{arch}.pth",
            "input_size": _size(224),
            "crop_pct": 1.0,
            **_EVAL,
            "top1": None,
            "license": "MIT (okojoalg/dfformer repository licence; no separate weights licence)",
            "paper": "https://arxiv.org/abs/2303.03932",
            "source": "okojoalg/dfformer models/dfformer.py default_cfgs",
            "notes": "ImageNet-1k, 224x224, trained with the README recipe (300 epochs). "
            "Accuracy not published in the repository.",
        }
    ]


# --- ConvFormer / CAFormer -----------------------------------------------------------------
_SAIL_URL = "https://huggingface.co/sail/dl/resolve/main/{}/{}"

# README tables "trained on ImageNet-1K" and "pretrained on ImageNet-21K and finetuned on
# ImageNet-1K": tag -> official file-name suffix, and top-1 per architecture in that tag order.
_SAIL_TAGS = {
    "in1k": "",
    "in1k_384": "_384",
    "in21k_ft_in1k": "_in21ft1k",
    "in21k_ft_in1k_384": "_384_in21ft1k",
}
_METAFORMER_TOP1: dict[str, tuple[float, float, float, float]] = {
    "caformer_s18": (83.6, 85.0, 84.1, 85.4),
    "caformer_s36": (84.5, 85.7, 85.8, 86.9),
    "caformer_m36": (85.2, 86.2, 86.6, 87.5),
    "caformer_b36": (85.5, 86.4, 87.4, 88.1),
    "convformer_s18": (83.0, 84.4, 83.7, 85.0),
    "convformer_s36": (84.1, 85.4, 85.4, 86.4),
    "convformer_m36": (84.5, 85.6, 86.1, 86.9),
    "convformer_b36": (84.8, 85.7, 87.0, 87.6),
}


def _metaformer(arch: str) -> list[dict[str, Any]]:
    family = arch.split("_")[0]
    entries = []
    for (tag, suffix), top1 in zip(_SAIL_TAGS.items(), _METAFORMER_TOP1[arch], strict=True):
        file_name = f"{arch}{suffix}.pth"
        res = 384 if tag.endswith("_384") else 224
        data = (
            "ImageNet-21k pre-training, ImageNet-1k fine-tuning"
            if "in21k" in tag
            else "ImageNet-1k"
        )
        entries.append(
            {
                "tag": tag,
                "url": _SAIL_URL.format(family, file_name),
                "file_name": file_name,
                "input_size": _size(res),
                "crop_pct": 1.0,
                **_EVAL,
                "top1": top1,
                "license": "Apache-2.0 (sail-sg/metaformer)",
                "paper": "https://arxiv.org/abs/2210.13452",
                "source": "sail-sg/metaformer README.md model tables",
                "notes": f"{data}; top-1 on ImageNet-1k val at {res}x{res}, crop_pct 1.0.",
            }
        )
    return entries


# timm's tags for the sail-sg files (timm/models/metaformer.py default_cfgs) -> ours
_TIMM_SAIL_TAGS = {
    "sail_in1k": "in1k",
    "sail_in1k_384": "in1k_384",
    "sail_in22k_ft_in1k": "in21k_ft_in1k",
    "sail_in22k_ft_in1k_384": "in21k_ft_in1k_384",
}


# --- LV-ViT ---------------------------------------------------------------------------------
_TL_URL = "https://github.com/zihangJiang/TokenLabeling/releases/download/{}/{}"
_TL_LICENSE = "Apache-2.0 (zihangJiang/TokenLabeling)"
_TL_PAPER = "https://arxiv.org/abs/2104.10858"


def _lvvit(release: str, file_name: str, res: int, top1: float, crop_pct: float) -> dict[str, Any]:
    return {
        "tag": "tl_in1k" if res == 224 else f"tl_in1k_{res}",
        "url": _TL_URL.format(release, file_name),
        "file_name": file_name,
        "input_size": _size(res),
        "crop_pct": crop_pct,
        **_EVAL,
        "top1": top1,
        "license": _TL_LICENSE,
        "paper": _TL_PAPER,
        "source": "zihangJiang/TokenLabeling README.md (LV-ViT Models table)",
        "notes": f"ImageNet-1k with Token Labeling (NFNet-F6 dense labels); top-1 at "
        f"{res}x{res}, crop_pct {crop_pct} (official validate.py, model default crop).",
    }


WEIGHTS: dict[str, list[dict[str, Any]]] = {
    **{
        arch: _dfformer(arch)
        for arch in (
            "dfformer_s18",
            "dfformer_s36",
            "dfformer_m36",
            "dfformer_b36",
            "cdfformer_s18",
            "cdfformer_s36",
            "cdfformer_m36",
            "cdfformer_b36",
        )
    },
    **{arch: _metaformer(arch) for arch in _METAFORMER_TOP1},
    "lvvit_t": [
        {
            **_lvvit("v0.2.0", "lvvit_t.pth", 224, 79.1, 0.9),
            "source": "zihangJiang/TokenLabeling issue #23 (author's checkpoint) and paper Table 1",
            "notes": "Not in the README table: the author shared LV-ViT-T in issue #23; the "
            "release asset v0.2.0/lvvit_t.pth is the address used by ports of the official "
            "code. Top-1 79.1 at 224, crop_pct 0.9, as reported in the paper.",
        }
    ],
    "lvvit_s": [
        _lvvit("1.0", "lvvit_s-26M-224-83.3.pth.tar", 224, 83.3, 0.9),
        _lvvit("1.0", "lvvit_s-26M-384-84.4.pth.tar", 384, 84.4, 0.9),
    ],
    "lvvit_m": [
        _lvvit("1.0", "lvvit_m-56M-224-84.0.pth.tar", 224, 84.0, 1.0),
        _lvvit("1.0", "lvvit_m-56M-384-85.4.pth.tar", 384, 85.4, 1.0),
        _lvvit("1.1", "lvvit_m-56M-448-85.5.pth.tar", 448, 85.5, 1.0),
    ],
    "lvvit_l": [
        # No 224 weights exist; an untagged first entry keeps `create_model('lvvit_l')` at the
        # official builder's 224 instead of silently switching the default size to 448.
        {"tag": "", "notes": "LV-ViT-L weights are published at 448 and 512 only."},
        _lvvit("1.0", "lvvit_l-150M-448-86.2.pth.tar", 448, 86.2, 1.0),
        _lvvit("1.0", "lvvit_l-150M-512-86.4.pth.tar", 512, 86.4, 1.0),
    ],
}

# arch -> {alias tag: our tag}
TAG_ALIASES: dict[str, dict[str, str]] = {arch: dict(_TIMM_SAIL_TAGS) for arch in _METAFORMER_TOP1}


def canonical_tag(arch: str, tag: str) -> str:
    """Our name for ``arch``'s weight tag ``tag`` (``sail_in1k`` -> ``in1k``); others unchanged."""
    return TAG_ALIASES.get(arch, {}).get(tag, tag)
