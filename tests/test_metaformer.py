"""The MetaFormer family against the official implementations (shared/reference)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import tokenmix
from tokenmix.layers import resize_complex_weight

from .conftest import REFERENCE, require

FULL_SIZE = [
    f"{family}_{size}"
    for family in ("dfformer", "cdfformer", "convformer", "caformer")
    for size in ("s18", "s36", "m36", "b36")
] + ["gfformer_s18"]

TINY = {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64), "num_classes": 10, "img_size": 64}
CASES = {
    # case name -> (our architecture, overrides)
    "dfformer_tiny": ("dfformer_s18", TINY),
    "dfformer_tiny_resize": ("dfformer_s18", TINY),
    "cdfformer_tiny": ("cdfformer_s18", TINY),
    "gfformer_tiny": ("gfformer_s18", TINY),
    "convformer_tiny": ("convformer_s18", {**TINY, "dims": (16, 32, 64, 64)}),
    "caformer_tiny": ("caformer_s18", {**TINY, "dims": (16, 32, 64, 64)}),
}


@pytest.mark.parametrize("name", FULL_SIZE)
def test_state_dict_matches_official_manifest(name: str) -> None:
    manifest = json.loads(require(REFERENCE / "manifests" / f"{name}.json").read_text())
    with torch.device("meta"):
        model = tokenmix.create_model(name)
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert ours == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


def load_case(case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    tensors = load_file(str(require(REFERENCE / "cases" / f"{case}.safetensors")))
    state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
    return tensors, state


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_numeric_case(case: str) -> None:
    tensors, state = load_case(case)
    arch, overrides = CASES[case]
    model = tokenmix.create_model(arch, **overrides).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(tensors["input"])
    assert (out - tensors["output"]).abs().max().item() <= 1e-5


def test_resize_case_matches_native_case_at_native_size() -> None:
    """The resize case's weights run at 64x64 give the native case's output bit for bit."""
    native, _ = load_case("dfformer_tiny")
    _, state = load_case("dfformer_tiny_resize")
    model = tokenmix.create_model("dfformer_s18", **TINY).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        out = model(native["input"])
    assert (out - native["output"]).abs().max().item() <= 1e-5
    mixer = model.stages[0][0].token_mixer
    assert torch.equal(mixer.filters(16, 9), mixer.complex_weights)  # no resize at native size


def test_eps_values_below_case_sensitivity() -> None:
    """The README lists eps values the numeric cases cannot see; pin them directly."""
    model = tokenmix.create_model("dfformer_s18", **TINY)
    assert model.norm.eps == 1e-6
    assert model.head.norm.eps == 1e-5
    assert model.stages[0][0].norm1.eps == 1e-6
    assert model.downsample_layers[0].post_norm.eps == 1e-6
    assert model.downsample_layers[1].pre_norm.eps == 1e-6


def test_resize_complex_weight_is_identity_at_same_size() -> None:
    w = torch.randn(8, 5, 4, 2)
    assert resize_complex_weight(w, 8, 5) is w


def test_resize_treats_real_and_imag_independently() -> None:
    w = torch.randn(6, 4, 3, 2)
    both = resize_complex_weight(w, 9, 7)
    real = resize_complex_weight(w[..., :1].contiguous(), 9, 7)
    assert torch.allclose(both[..., :1], real, atol=1e-6)
    # bicubic with align_corners=True keeps the corner values
    assert torch.allclose(both[0, 0], w[0, 0]) and torch.allclose(both[-1, -1], w[-1, -1])


@pytest.mark.parametrize("arch", ["dfformer_s18", "gfformer_s18"])
def test_checkpoint_filters_resized_at_load(arch: str, tmp_path) -> None:
    """A checkpoint stored for 64x64 loads into a model built for 96x80, filters resized."""
    src = tokenmix.create_model(arch, **TINY).eval()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = tokenmix.create_model(arch, pretrained=str(path), **{**TINY, "img_size": (96, 80)}).eval()
    key = "stages.0.0.token_mixer.complex_weights"
    assert dst.state_dict()[key].shape[:2] == (24, 11)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():  # same function as resizing at forward time
        assert torch.allclose(dst(x), src(x), atol=1e-5)


def test_non_square_input_runs() -> None:
    model = tokenmix.create_model("test_dfformer").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 80, 112))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


# --- small-input stems ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["test_dfformer", "test_cdfformer", "test_caformer"])
@pytest.mark.parametrize(("stride", "grids"), [(1, (32, 16, 8, 4)), (2, (16, 8, 4, 2))])
def test_stem_stride_keeps_tokens_for_small_inputs(arch: str, stride: int, grids: tuple) -> None:
    """At 32 px the official stride-4 stem leaves 1x1 tokens in stage 4; stride 1 or 2 keeps
    more. Filters are stored for the grid they run at, and fast equals reference."""
    from tokenmix.layers.reference import set_reference_mode

    model = tokenmix.create_model(arch, img_size=32, stem_stride=stride).eval()
    assert model.downsample_layers[0].conv.stride == (stride, stride)
    assert [f["reduction"] for f in model.feature_info] == [stride * 2**i for i in range(4)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, feats = model.forward_intermediates(x)
        assert [f.shape[-1] for f in feats] == list(grids)
        for name, p in model.named_parameters():
            if name.endswith("complex_weights"):
                stage = int(name.split(".")[1])
                assert p.shape[:2] == (grids[stage], grids[stage] // 2 + 1), name
        fast = model(x)
        reference = set_reference_mode(model)(x)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_stem_stride_model_trains_a_step() -> None:
    model = tokenmix.create_model("test_dfformer", img_size=32, stem_stride=1).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = model.downsample_layers[0].conv.weight.detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(before, model.downsample_layers[0].conv.weight)


def test_conv_stem_adds_a_stride_one_conv_and_trains() -> None:
    """stem_hidden: 3x3 conv + GELU at full resolution before the stem conv, new keys only."""
    plain = tokenmix.create_model("test_cdfformer", img_size=32, stem_stride=2)
    model = tokenmix.create_model("test_cdfformer", img_size=32, stem_stride=2, stem_hidden=8)
    added = set(model.state_dict()) - set(plain.state_dict())
    assert added == {"downsample_layers.0.pre_conv.0.weight", "downsample_layers.0.pre_conv.0.bias"}
    assert model.downsample_layers[0].conv.in_channels == 8
    # the conv that reads the image, for timm's input-channel adaptation
    assert plain.pretrained_cfg.first_conv == "downsample_layers.0.conv"
    first = model.get_submodule(model.pretrained_cfg.first_conv)
    assert first is model.downsample_layers[0].pre_conv[0] and first.in_channels == 3
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        _, feats = model.forward_intermediates(x)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.downsample_layers[0].pre_conv[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="stem_hidden must be >= 1"):
        tokenmix.create_model("test_dfformer", stem_hidden=0)


def test_default_stem_is_the_official_one() -> None:
    conv = tokenmix.create_model("test_dfformer").downsample_layers[0].conv
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (4, 4), (2, 2))
    with pytest.raises(ValueError, match="stem_kernel 1 < stem_stride 2"):
        tokenmix.create_model("test_dfformer", stem_stride=2, stem_kernel=1)
    with pytest.raises(ValueError, match="stem_stride must be >= 1"):
        tokenmix.create_model("test_dfformer", stem_stride=0)


@pytest.mark.parametrize("name", ["caformer_s18", "dfformer_m36"])
def test_reset_classifier_zero_gives_num_features_as_timm(name: str) -> None:
    """timm's MetaFormer: no classifier -> pooled, normed ``dims[-1]`` (512 for S18, not the
    MLP head's 2048 hidden units); ``num_classes=0`` at build time is the same model."""
    with torch.device("meta"):
        model = tokenmix.create_model(name)
        built = tokenmix.create_model(name, num_classes=0)
        feats = torch.zeros(2, model.num_features, 7, 7)
        model.reset_classifier(0)
        out, pre = model.forward_head(feats), built.forward_head(feats, pre_logits=True)
    assert out.shape == pre.shape == (2, model.num_features)
    assert model.num_features == {"caformer_s18": 512, "dfformer_m36": 576}[name]
    assert model.state_dict().keys() == built.state_dict().keys()


@pytest.mark.parametrize("name", ["dfformer_s18", "cdfformer_s18"])
def test_dense_backbone_has_the_official_fork_feat_layout(name: str) -> None:
    """features_only + feature_norms == the official ``fork_feat=True`` state_dict: the
    classification keys without norm/head, then ``norm0..3`` (LayerNorm weight and bias)."""
    manifest = json.loads(require(REFERENCE / "manifests" / f"{name}.json").read_text())
    with torch.device("meta"):
        model = tokenmix.create_model(name, features_only=True, feature_norms=True)
    dims = (64, 128, 320, 512)
    expected = [
        [k, shape, dtype]
        for k, shape, dtype in manifest["state_dict"]
        if not k.startswith(("norm.", "head."))
    ] + [[f"norm{i}.{p}", [dims[i]], "float32"] for i in range(4) for p in ("weight", "bias")]
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert ours == expected


def test_official_case_loads_into_a_dense_backbone() -> None:
    """The reference weights (a classification checkpoint) load strictly into the dense
    backbone; its maps are the classification model's stage outputs, layer-normed."""
    tensors, state = load_case("dfformer_tiny")
    full = tokenmix.create_model("dfformer_s18", **TINY).eval()
    full.load_state_dict(state, strict=True)
    dense = tokenmix.create_model("dfformer_s18", features_only=True, feature_norms=True, **TINY)
    tokenmix.load_weights(dense, state)
    with torch.no_grad():
        raw = full.forward_intermediates(tensors["input"], intermediates_only=True)
        maps = dense.eval()(tensors["input"])
    for m, r in zip(maps, raw, strict=True):
        ref = torch.nn.functional.layer_norm(r.permute(0, 2, 3, 1), r.shape[1:2], eps=1e-6)
        torch.testing.assert_close(m, ref.permute(0, 3, 1, 2))
