"""The timm model interface beyond forward: features_only, feature_info, forward_intermediates,
prune_intermediate_layers, reset_classifier(0), pretrained_cfg as a mapping, create_transform."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import tokenmix
from tokenmix.data import IMAGENET_1K_CLASSES, create_transform, eval_transforms
from tokenmix.models import FeatureInfo, get_pretrained_cfg
from tokenmix.models.pretrained import PretrainedCfg

MODELS = ["test_dfformer", "test_caformer", "test_lvvit"]


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64)


def _num_outputs(model: torch.nn.Module) -> int:
    return len(model.stages) if hasattr(model, "stages") else len(model.blocks)


@pytest.mark.parametrize("name", MODELS)
def test_features_only_loads_a_full_checkpoint_with_a_note(name: str, tmp_path, caplog) -> None:
    full = tokenmix.create_model(name).eval()
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="tokenmix"):
        backbone = tokenmix.create_model(name, pretrained=path, features_only=True).eval()
    assert "not loading" in caplog.text and "norm.weight" in caplog.text
    assert "head" in caplog.text
    x = _x()
    with torch.no_grad():
        maps = backbone(x)
        _, ref = full.forward_intermediates(x)
    assert len(maps) == len(ref) == len(backbone.feature_info)
    for a, b in zip(maps, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert backbone.num_classes == 0 and backbone.pretrained_cfg.label_names is None


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_is_timm_like_and_limited_to_out_indices(name: str) -> None:
    model = tokenmix.create_model(name, features_only=True, out_indices=(-1, 0)).eval()
    info = model.feature_info
    assert isinstance(info, FeatureInfo) and isinstance(info, list) and len(info) == 2
    last = _num_outputs(model) - 1
    prefix = "stages" if hasattr(model, "stages") else "blocks"
    assert info.module_name() == [f"{prefix}.0", f"{prefix}.{last}"]
    assert info.module_name(1) == f"{prefix}.{last}"
    assert info[0]["num_chs"] == info.channels(0) == info.channels()[0]
    assert info.get_dicts(keys=("num_chs",), idx=0) == {"num_chs": info.channels(0)}
    assert [d["reduction"] for d in info] == info.reduction() == info.get("reduction")
    assert info == info.get_dicts() and isinstance(info[:1], FeatureInfo)
    with torch.no_grad():
        maps = model(_x())
    assert [m.shape[1] for m in maps] == info.channels()
    assert [64 // m.shape[-1] for m in maps] == info.reduction()


def test_feature_info_rejects_incomplete_entries() -> None:
    with pytest.raises(ValueError, match="lacks"):
        FeatureInfo([{"num_chs": 3}])


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_indices_stop_early_and_formats(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    n = _num_outputs(model)
    x = _x()
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        assert len(every) == n
        _, last2 = model.forward_intermediates(x, indices=2)  # int: the last two
        _, picked = model.forward_intermediates(x, indices=[0, -1])
        only = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        early_final, early = model.forward_intermediates(x, indices=[0], stop_early=True)
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for a, b in zip(last2, every[-2:], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(picked[0], every[0])
    torch.testing.assert_close(picked[1], every[-1])
    torch.testing.assert_close(only[0], every[0])
    torch.testing.assert_close(early[0], every[0])
    for a, b in zip(nhwc, every, strict=True):
        torch.testing.assert_close(a, b.permute(0, 2, 3, 1))
    # stop_early: the returned final map/tokens come from the last stage that ran
    if hasattr(model, "stages"):
        torch.testing.assert_close(early_final, every[0])
        torch.testing.assert_close(final, every[-1])
    else:
        assert early_final.shape == final.shape and not torch.allclose(early_final, final)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCL")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match="outputs"):
        model.forward_intermediates(x, indices=n + 1)


def test_stop_early_does_not_run_later_stages() -> None:
    model = tokenmix.create_model("test_dfformer").eval()
    ran = []
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda *_, i=i: ran.append(i))
    with torch.no_grad():
        model.forward_intermediates(_x(), indices=[1], stop_early=True)
        assert ran == [0, 1]
        ran.clear()
        model.forward_intermediates(_x(), indices=[1])
    assert ran == [0, 1, 2, 3]


def test_lvvit_intermediates_norm_and_tokens() -> None:
    model = tokenmix.create_model("test_lvvit").eval()
    x = _x()
    with torch.no_grad():
        _, raw = model.forward_intermediates(x, output_fmt="NLC")
        _, normed = model.forward_intermediates(x, norm=True, output_fmt="NLC")
        tokens = model.forward_features(x)
    assert raw[0].shape == (2, 16, 48)  # 4x4 patches, no class token
    torch.testing.assert_close(normed[0], model.norm(raw[0]))
    torch.testing.assert_close(normed[-1], tokens[:, 1:])


@pytest.mark.parametrize("name", MODELS)
def test_prune_intermediate_layers(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    n = _num_outputs(model)
    x = _x()
    with torch.no_grad():
        _, before = model.forward_intermediates(x)
    kept = model.prune_intermediate_layers([0, 1])
    assert kept == [0, 1] and _num_outputs(model) == 2
    assert model.num_classes == 0 and model.feature_info.module_name()[-1].endswith(".1")
    with torch.no_grad():
        _, after = model.forward_intermediates(x)
        pooled = model.forward_head(model.forward_features(x))
    assert len(after) == 2
    for a, b in zip(after, before[:2], strict=True):
        torch.testing.assert_close(a, b)
    assert pooled.shape == (2, model.num_features)
    assert tokenmix.create_model(name).prune_intermediate_layers(2) == [n - 2, n - 1]


def test_prune_keeping_the_head_needs_the_last_stage() -> None:
    model = tokenmix.create_model("test_dfformer")
    with pytest.raises(ValueError, match="prune_head"):
        model.prune_intermediate_layers([1], prune_head=False)
    assert model.prune_intermediate_layers(1, prune_head=False) == [3]
    assert model.num_classes == 10


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_zero_gives_num_features(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    model.reset_classifier(0)
    with torch.no_grad():
        out = model(_x())
        pre = model.forward_head(model.forward_features(_x()), pre_logits=True)
    assert out.shape == (2, model.num_features) and pre.shape == (2, model.num_features)
    model.reset_classifier(5)
    assert model.eval()(_x()).shape == (2, 5) and model.num_classes == 5
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")


def test_num_classes_zero_loads_a_full_checkpoint(tmp_path, caplog) -> None:
    full = tokenmix.create_model("test_dfformer").eval()
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="tokenmix"):
        model = tokenmix.create_model("test_dfformer", pretrained=path, num_classes=0).eval()
    dropped = caplog.text.split("not loading ")[1].strip().split(", ")
    assert "head.fc1.weight" in dropped and "norm.weight" not in dropped
    x = _x()
    with torch.no_grad():
        ref = full.forward_head(full.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), ref)


def test_pretrained_cfg_is_a_mapping_with_timm_keys() -> None:
    cfg = tokenmix.create_model("test_dfformer").pretrained_cfg
    assert cfg["input_size"] == cfg.input_size == (3, 64, 64)
    assert "crop_pct" in cfg and "test_input_size" not in cfg
    assert cfg.get("test_input_size") is None and cfg.get("crop_mode") == "center"
    assert set(("mean", "std", "interpolation", "num_classes", "first_conv", "classifier")) <= set(
        cfg.keys()
    )
    assert dict(cfg)["mean"] == cfg.mean and len(dict(cfg)) == len(cfg)
    with pytest.raises(KeyError):
        cfg["nope"]
    # what timm.data.resolve_data_config(model=m) reads, the way it reads it
    data = {
        "input_size": cfg.get("test_input_size") or cfg["input_size"],
        "interpolation": cfg.get("interpolation", "bilinear"),
        "mean": cfg.get("mean"),
        "std": cfg.get("std"),
        "crop_pct": cfg.get("crop_pct"),
        "crop_mode": cfg.get("crop_mode"),
    }
    assert data == {
        "input_size": (3, 64, 64),
        "interpolation": "bicubic",
        "mean": cfg.mean,
        "std": cfg.std,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def test_published_imagenet_weights_name_their_classes() -> None:
    assert len(IMAGENET_1K_CLASSES) == 1000
    assert IMAGENET_1K_CLASSES[0] == "tench" and IMAGENET_1K_CLASSES[999] == "toilet tissue"
    for name in ("caformer_s18.in21k_ft_in1k_384", "dfformer_s18", "lvvit_s.tl_in1k_384"):
        cfg = get_pretrained_cfg(name)
        assert cfg.label_set == "imagenet-1k" and cfg["label_names"] == IMAGENET_1K_CLASSES
    assert get_pretrained_cfg("gfformer_s18").label_names is None  # no published weights
    assert get_pretrained_cfg("test_dfformer").label_names is None
    assert get_pretrained_cfg("lvvit_l").label_names is None  # untagged: no weights
    with torch.device("meta"):
        kept = tokenmix.create_model("caformer_s18")
        other = tokenmix.create_model("caformer_s18", num_classes=10)
    assert kept.pretrained_cfg.label_names == IMAGENET_1K_CLASSES
    assert other.pretrained_cfg.label_names is None  # 10 outputs: the names no longer apply
    with pytest.raises(ValueError, match="label_set"):
        PretrainedCfg(label_set="coco")


def _image(w: int = 90, h: int = 70) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_create_transform_equals_the_eval_transform() -> None:
    model = tokenmix.create_model("test_lvvit")
    img = _image()
    load, norm = eval_transforms(model.pretrained_cfg)
    expected = norm(load(img)[None])[0]
    for source in (model, model.pretrained_cfg, dict(model.pretrained_cfg)):
        out = create_transform(source)(img)
        assert out.dtype == torch.float32 and out.shape == (3, 64, 64)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    load, norm = eval_transforms(model.pretrained_cfg, img_size=48, crop_pct=0.875)
    torch.testing.assert_close(
        create_transform(model, img_size=48, crop_pct=0.875)(img), norm(load(img)[None])[0]
    )
    torch.testing.assert_close(
        create_transform(model)(img.convert("L")),
        create_transform(model)(img.convert("L").convert("RGB")),
    )
    with pytest.raises(ValueError, match="crop_mode"):
        create_transform({"input_size": (3, 64, 64), "crop_mode": "squash"})
    with pytest.raises(TypeError):
        create_transform(3)
