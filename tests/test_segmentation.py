"""Dense prediction: the official fork_feat backbone, the Semantic FPN, mm registration."""

from __future__ import annotations

import ast
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tokenmix
from tokenmix.layers import resize_complex_weight
from tokenmix.models import segmentation
from tokenmix.models.segmentation import (
    SemanticFPN,
    TokenMixBackbone,
    create_backbone,
    create_segmentation_model,
    register_mm,
)

ROOT = Path(__file__).resolve().parents[1]


def test_feature_norms_are_the_official_output_norms() -> None:
    dense = tokenmix.create_model("test_dfformer", features_only=True, feature_norms=True).eval()
    for i, dim in enumerate((16, 32, 48, 64)):
        norm = getattr(dense, f"norm{i}")
        assert isinstance(norm, nn.LayerNorm) and norm.eps == 1e-6
        assert norm.normalized_shape == (dim,) and norm.bias is not None
    keys = list(dense.state_dict())
    assert [k for k in keys if k.startswith("norm")] == [
        f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")
    ]
    assert keys.index("norm0.weight") > max(i for i, k in enumerate(keys) if k.startswith("stages"))
    for i in range(4):  # non-trivial norms, so the comparison below means something
        getattr(dense, f"norm{i}").weight.data.uniform_(0.5, 1.5)
        getattr(dense, f"norm{i}").bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = dense(x)
        raw = dense.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        normed = dense.forward_intermediates(x, norm=True, intermediates_only=True)
    for i, (m, r) in enumerate(zip(maps, raw, strict=True)):
        ref = getattr(dense, f"norm{i}")(r).permute(0, 3, 1, 2)
        torch.testing.assert_close(m, ref)
        torch.testing.assert_close(normed[i], ref)
    # the classification model's layout is untouched
    plain = tokenmix.create_model("test_dfformer").state_dict()
    assert not [k for k in plain if k.startswith("norm") and k[4].isdigit()]


def test_retinanet_style_out_indices_skip_the_first_norm() -> None:
    """The official FORK_LAST3 (RetinaNet, start_level=1) is out_indices=(1, 2, 3) here."""
    dense = create_backbone("test_dfformer", img_size=64, out_indices=(1, 2, 3))
    assert not hasattr(dense, "norm0") and all(hasattr(dense, f"norm{i}") for i in (1, 2, 3))
    assert dense.feature_info.channels() == [32, 48, 64]
    assert dense.feature_info.reduction() == [8, 16, 32]


def test_feature_norms_need_features_only() -> None:
    with pytest.raises(ValueError, match="features_only"):
        tokenmix.create_model("test_dfformer", feature_norms=True)


def test_dense_backbone_at_detection_size_resizes_filters(tmp_path, caplog) -> None:
    """An ImageNet-style checkpoint (64x64 here) into a 512x640 dense backbone, as the official
    ``load_weights(model, input_size)``: filters resized per stage, feature norms fresh."""
    full = tokenmix.create_model("test_dfformer")
    path = tmp_path / "w.pth"
    state = full.state_dict()
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="tokenmix"):
        dense = create_backbone("test_dfformer", path, img_size=(512, 640)).eval()
    assert (
        "norm0, norm1, norm2, norm3" in caplog.text and "keep their initialisation" in caplog.text
    )
    assert "not loading norm.weight" in caplog.text
    for stage, (h, w) in enumerate(((128, 81), (64, 41), (32, 21), (16, 11))):
        key = f"stages.{stage}.0.token_mixer.complex_weights"
        got = dense.state_dict()[key]
        assert got.shape[:2] == (h, w)  # official: (H // 4 // 2**i, W // 8 // 2**i + 1)
        torch.testing.assert_close(got, resize_complex_weight(state[key], h, w))
    assert torch.equal(dense.norm2.weight, torch.ones(48)) and torch.equal(
        dense.norm2.bias, torch.zeros(48)
    )
    with torch.no_grad():
        maps = dense(torch.randn(1, 3, 512, 640))
    assert [tuple(m.shape) for m in maps] == [
        (1, 16, 128, 160),
        (1, 32, 64, 80),
        (1, 48, 32, 40),
        (1, 64, 16, 20),
    ]
    assert all(torch.isfinite(m).all() for m in maps)


def test_dense_checkpoint_with_feature_norms_loads_them(tmp_path) -> None:
    dense = create_backbone("test_dfformer", img_size=64)
    dense.norm1.weight.data.fill_(2.0)
    path = tmp_path / "dense.pth"
    torch.save(dense.state_dict(), path)
    again = create_backbone("test_dfformer", path, img_size=64)
    assert torch.equal(again.norm1.weight, torch.full((32,), 2.0))


def test_create_backbone_sets_feature_norms_for_metaformer_only() -> None:
    assert hasattr(create_backbone("test_caformer", img_size=64), "norm3")
    vit = create_backbone("test_lvvit", img_size=64, out_indices=(0, 1))
    assert vit.feature_info.reduction() == [16, 16] and not hasattr(vit, "norm0")


def _blobs(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with one bright rectangle on noise; the mask is the rectangle (class 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, size // 2, (2,), generator=g).tolist()
        h, w = torch.randint(size // 4, size // 2, (2,), generator=g).tolist()
        masks[i, r : r + h, c : c + w] = 1
    x[:, 0] += 2.0 * masks
    return x, masks


def test_semantic_fpn_shapes_and_structure() -> None:
    model = create_segmentation_model(
        "test_dfformer", 5, img_size=64, fpn_channels=32, head_channels=16
    ).eval()
    assert isinstance(model, SemanticFPN)
    assert [len(h) for h in model.decode_head.scale_heads] == [1, 2, 4, 6]  # conv/upsample steps
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 80))
    assert out.shape == (2, 5, 64, 80)


def test_semantic_fpn_trains_on_synthetic_masks() -> None:
    """A few AdamW steps on one batch of rectangles-on-noise: the loss must fall well below
    its start (seeds 0-3 reach 0.4x or less after 6 steps; the bound is 0.5x)."""
    model = create_segmentation_model(
        "test_dfformer", 2, img_size=32, fpn_channels=16, head_channels=16, dropout_rate=0.0
    ).train()
    x, masks = _blobs(2, size=32)
    masks[0, :2, :2] = 255  # ignored pixels, as mmseg marks them
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), masks, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


class _FakeRegistry:
    def __init__(self) -> None:
        self.modules: dict[str, type] = {}

    def get(self, name: str) -> type | None:
        return self.modules.get(name)

    def register_module(self, name: str | None = None, force: bool = False, module=None):
        if name in self.modules and not force:
            raise KeyError(f"{name} is already registered")
        self.modules[name] = module
        return module


def test_register_mm_with_an_installed_registry(monkeypatch) -> None:
    registry = _FakeRegistry()
    mmseg = types.ModuleType("mmseg")
    mmseg_registry = types.ModuleType("mmseg.registry")
    mmseg_registry.MODELS = registry
    monkeypatch.setitem(sys.modules, "mmseg", mmseg)
    monkeypatch.setitem(sys.modules, "mmseg.registry", mmseg_registry)
    monkeypatch.setitem(sys.modules, "mmdet", None)  # not installed
    assert register_mm() == ["mmseg"]
    assert register_mm() == ["mmseg"]  # twice is harmless
    cls = registry.get("TokenMixBackbone")
    assert cls is TokenMixBackbone
    backbone = cls(model_name="test_dfformer", img_size=[64, 64], out_indices=[1, 2, 3])
    backbone.init_weights()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, tuple) and [o.shape[1] for o in outs] == [32, 48, 64]
    assert backbone.feature_info.channels() == [32, 48, 64]
    with pytest.raises(ValueError, match="pretrained="):
        cls(model_name="test_dfformer", init_cfg={"type": "Pretrained"})


def test_register_mm_without_mm_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mmseg", None)
    monkeypatch.setitem(sys.modules, "mmdet", None)
    with pytest.raises(ImportError, match=r"tokenmix\[mm\]"):
        register_mm()
    segmentation._register_if_mm_loaded()  # nothing loaded: no error, nothing done


def test_example_mmseg_config_uses_the_registered_backbone() -> None:
    path = ROOT / "docs" / "examples" / "mmseg_dfformer_s18_fpn.py"
    tree = ast.parse(path.read_text())
    names = {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert {"model", "custom_imports", "optim_wrapper", "param_scheduler"} <= names
    text = path.read_text()
    assert 'type="TokenMixBackbone"' in text and "tokenmix.models.segmentation" in text
