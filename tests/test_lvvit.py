"""LV-ViT against the official TokenLabeling code (shared/reference) and its own promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tokenmix
from tokenmix.models.lvvit import (
    LVViT,
    MixBox,
    mix_token_box,
    mix_tokens,
    resize_pos_embed,
    sample_mix_box,
)

from .conftest import REFERENCE, require

# manifest name -> (architecture, img_size); the official builders at 224 unless noted
MANIFESTS = {
    "lvvit_t": ("lvvit_t", 224),
    "lvvit_s": ("lvvit_s", 224),
    "lvvit_m": ("lvvit_m", 224),
    "lvvit_l": ("lvvit_l", 224),
    "lvvit_s_384": ("lvvit_s", 384),
    "lvvit_m_384": ("lvvit_m", 384),
    "lvvit_m_448": ("lvvit_m", 448),
    "lvvit_l_448": ("lvvit_l", 448),
    "lvvit_l_512": ("lvvit_l", 512),
}
# the cases' LV_ViT(img_size=64, embed_dim=48, depth=2, num_heads=2, num_classes=10, ...)
CASES = {"lvvit_tiny": {}, "lvvit_tiny_l": {"stem": "4_2_128", "skip_lam": 3.0}}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_state_dict_matches_official_manifest(name: str) -> None:
    manifest = json.loads(require(REFERENCE / "manifests" / f"{name}.json").read_text())
    arch, size = MANIFESTS[name]
    with torch.device("meta"):
        model = tokenmix.create_model(arch, img_size=size)
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert ours == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


def load_case(case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    path = require(REFERENCE / "cases" / f"{case}.safetensors")
    tensors = load_file(str(path))
    state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return tensors, state, meta


def case_model(case: str, state: dict[str, torch.Tensor]) -> LVViT:
    model = tokenmix.create_model("test_lvvit", **CASES[case])
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_eval_output(case: str) -> None:
    tensors, state, _ = load_case(case)
    model = case_model(case, state).eval()
    with torch.no_grad():
        out = model(tensors["input"])
    assert (out - tensors["output"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_train_outputs_without_mixtoken(case: str) -> None:
    """Train mode (stem BatchNorm on batch statistics), token labeling on, MixToken off."""
    tensors, state, _ = load_case(case)
    model = case_model(case, state).train()
    model.token_labeling, model.mix_token = True, False
    with torch.no_grad():
        cls, aux, box = model(tensors["input"])
    assert box == MixBox() and box.area == 0
    assert (cls - tensors["output_train_cls"]).abs().max().item() <= 1e-5
    assert (aux - tensors["output_train_aux"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_mixtoken_case(case: str) -> None:
    """The recorded MixToken pass: the box follows the official rule, outputs match un-mixed."""
    tensors, state, meta = load_case(case)
    # the official draws with numpy's legacy RNG: lam ~ Beta(1, 1), then the centre
    rng = np.random.RandomState(int(meta["mix_seed"]))
    lam = rng.beta(1.0, 1.0)
    centre = (rng.randint(4), rng.randint(4))
    assert lam == float(meta["mix_lam_exact"])
    box = mix_token_box((4, 4), lam, centre)
    assert list(box) == tensors["mix_bbox"].tolist() == [2, 0, 4, 1]
    assert box.lam(16) == 0.875  # the loss's lambda: the box's true area, not the draw

    model = case_model(case, state).train()
    model.token_labeling = True
    with torch.no_grad():
        cls, aux, used = model(tensors["input"], mix_box=box)
    assert used == box
    assert (cls - tensors["output_mix_cls"]).abs().max().item() <= 1e-5
    assert (aux - tensors["output_mix_aux"]).abs().max().item() <= 1e-5
    # the mixed tokens attend to another image's tokens, so the pass differs from the plain one
    assert not torch.allclose(aux, tensors["output_train_aux"], atol=1e-3)


def test_tiny_large_style_builds_exactly_depth_blocks() -> None:
    """The official lvvit_l passes order=['tr'] * 24; ours builds `depth` blocks."""
    model = tokenmix.create_model("test_lvvit", **CASES["lvvit_tiny_l"])
    assert len(model.blocks) == 2
    assert model.patch_embed.conv1.out_channels == 128
    with torch.device("meta"):
        assert len(tokenmix.create_model("lvvit_l").blocks) == 24


def test_eps_and_activation_values() -> None:
    """Below the numeric cases' sensitivity (README): pin them directly."""
    model = tokenmix.create_model("test_lvvit")
    layer_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(layer_norms) == 2 * 2 + 1 and all(m.eps == 1e-5 for m in layer_norms)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 3 and all(m.eps == 1e-5 for m in batch_norms)
    gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    assert len(gelus) == 2 and all(m.approximate == "none" for m in gelus)
    assert model.blocks[0].attn.scale == 24**-0.5
    assert [b.skip_lam for b in model.blocks] == [2.0, 2.0]


def test_pretrained_cfgs() -> None:
    crop = {"lvvit_t": 0.9, "lvvit_s": 0.9, "lvvit_m": 1.0, "lvvit_l": 1.0}
    for arch, pct in crop.items():
        for cfg in tokenmix.models.list_pretrained_cfgs(arch):
            assert cfg.crop_pct == pct
            assert cfg.classifier == ("head", "aux_head")
            assert cfg.first_conv == "patch_embed.conv1"


def test_resolution_tag_builds_at_its_size() -> None:
    with torch.device("meta"):
        model = tokenmix.create_model("lvvit_s.tl_in1k_384")
    assert model.pos_embed.shape == (1, 24 * 24 + 1, 384)
    assert model.pretrained_cfg.input_size == (3, 384, 384)


def test_forward_returns_one_tensor_unless_token_labeling_in_training() -> None:
    model = tokenmix.create_model("test_lvvit")
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(model.train()(x), torch.Tensor)
    model.token_labeling = True
    assert isinstance(model.eval()(x), torch.Tensor)
    cls, aux, box = model.train()(x)
    assert cls.shape == (2, 10) and aux.shape == (2, 16, 10) and isinstance(box, MixBox)


def test_eval_output_is_per_sample_combination() -> None:
    model = tokenmix.create_model("test_lvvit").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        cls, aux, _ = model.forward_train(x)
        out = model(x)
        dense = model.forward_dense(x)
    assert torch.allclose(out, cls + 0.5 * aux.max(dim=1).values, atol=1e-6)
    assert torch.allclose(dense.flatten(2).transpose(1, 2), aux, atol=1e-6)


def test_sample_mix_box_is_seeded() -> None:
    boxes = [sample_mix_box((14, 14), torch.Generator().manual_seed(7)) for _ in range(2)]
    assert boxes[0] == boxes[1]
    g = torch.Generator().manual_seed(0)
    draws = [sample_mix_box((14, 14), g) for _ in range(200)]
    assert len(set(draws)) > 50
    assert all(0 <= b.row0 <= b.row1 <= 14 and 0 <= b.col0 <= b.col1 <= 14 for b in draws)
    assert any(b.area == 0 for b in draws) and max(b.area for b in draws) >= 100


def test_mixtoken_in_training_is_reproducible_with_a_generator() -> None:
    model = tokenmix.create_model("test_lvvit").train()
    model.token_labeling = True
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a = model(x, generator=torch.Generator().manual_seed(3))
        b = model(x, generator=torch.Generator().manual_seed(3))
    assert a[2] == b[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mix_tokens_swaps_only_the_box_and_is_its_own_inverse() -> None:
    tokens = torch.arange(3 * 6 * 2, dtype=torch.float32).reshape(3, 6, 2)  # grid 2 x 3
    box = MixBox(0, 1, 1, 3)  # row 0, columns 1:3 -> token indices 1, 2
    mixed = mix_tokens(tokens, box, (2, 3))
    inside = [1, 2]
    outside = [0, 3, 4, 5]
    assert torch.equal(mixed[:, inside], tokens.flip(0)[:, inside])
    assert torch.equal(mixed[:, outside], tokens[:, outside])
    assert torch.equal(mix_tokens(mixed, box, (2, 3)), tokens)
    assert mix_tokens(tokens, MixBox(), (2, 3)) is tokens


def test_mixtoken_unmixes_dense_outputs_to_their_own_image() -> None:
    """With attention switched off, token outputs depend only on their own patch: after
    un-mixing, every token's output equals the unmixed pass's output for that token."""
    model = tokenmix.create_model("test_lvvit").eval()
    for block in model.blocks:
        block.attn.proj.weight.data.zero_()
        block.attn.proj.bias.data.zero_()
    x = torch.randn(2, 3, 64, 64)
    box = MixBox(1, 0, 3, 2)
    with torch.no_grad():
        _, plain, _ = model.forward_train(x, mix_box=MixBox())
        _, unmixed, _ = model.forward_train(x, mix_box=box)
    assert torch.allclose(unmixed, plain, atol=1e-5)


def test_pos_embed_resized_when_checkpoint_grid_differs(tmp_path) -> None:
    src = tokenmix.create_model("test_lvvit").eval()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = tokenmix.create_model("test_lvvit", pretrained=str(path), img_size=96).eval()
    assert dst.pos_embed.shape == (1, 37, 48)
    assert torch.equal(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # class token kept
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    assert torch.allclose(dst.pos_embed[0, 1:], expect.flatten(2)[0].t(), atol=1e-6)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():  # on-the-fly resize in the 64-built model is the same function
        assert torch.allclose(dst(x), src(x), atol=1e-5)


def test_non_square_input_and_grid() -> None:
    model = tokenmix.create_model("test_lvvit", img_size=(64, 96)).eval()
    assert model.grid_size == (4, 6) and model.pos_embed.shape[1] == 25
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 10)
        assert model(torch.randn(1, 3, 80, 48)).shape == (1, 10)


def test_resize_pos_embed_rejects_non_square_source() -> None:
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(torch.zeros(1, 1 + 12, 8), (4, 4))


def test_reset_classifier_resets_both_heads() -> None:
    model = tokenmix.create_model("test_lvvit")
    model.reset_classifier(4)
    assert model.head.out_features == model.aux_head.out_features == 4
    model.reset_classifier(0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 48)


def test_features_only_backbone_loads_a_full_checkpoint(tmp_path) -> None:
    full = tokenmix.create_model("test_lvvit").eval()
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    backbone = tokenmix.create_model(
        "test_lvvit", pretrained=str(path), features_only=True, out_indices=(1,)
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (feat,) = backbone(x)
        _, ref = full.forward_intermediates(x, indices=(1,))
    assert feat.shape == (1, 48, 4, 4) and torch.allclose(feat, ref[0], atol=1e-6)
    assert [f["module"] for f in backbone.feature_info] == ["blocks.1"]


def test_unknown_stem_is_an_error() -> None:
    with pytest.raises(ValueError, match="stem must be one of"):
        tokenmix.create_model("test_lvvit", stem="7x7")


@pytest.mark.parametrize(("patch", "stride", "grid"), [(4, 2, 8), (2, 1, 16), (4, 1, 8)])
def test_small_input_stem_sets_the_token_grid(patch: int, stride: int, grid: int) -> None:
    """At 32 px the official 16 px patches leave 2x2 tokens; ``patch_size`` and ``stem_stride``
    give a real grid, with position embeddings for it, and token labeling trains on it."""
    from tokenmix.layers.reference import set_reference_mode

    model = tokenmix.create_model("test_lvvit", img_size=32, patch_size=patch, stem_stride=stride)
    assert model.grid_size == (grid, grid)
    assert model.pos_embed.shape[1] == grid * grid + 1
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        fast = model(x)
        reference = set_reference_mode(model)(x)
        assert model.forward_intermediates(x, intermediates_only=True)[0].shape[-1] == grid
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    set_reference_mode(model, False)
    model.token_labeling = True
    cls, aux, _ = model.train()(x)
    assert aux.shape == (2, grid * grid, 10)
    (cls.sum() + aux.sum()).backward()
    assert model.patch_embed.conv1.weight.grad is not None


def test_stem_stride_must_divide_the_patch_size() -> None:
    with pytest.raises(ValueError, match="patch_size 6 must be a multiple"):
        tokenmix.create_model("test_lvvit", patch_size=6, stem_stride=4)


def test_timm_intermediates_and_prune_on_lvvit() -> None:
    """timm's VisionTransformer conventions: int indices are the last n blocks, NLC drops the
    class token, pruning keeps the chosen blocks' outputs and removes both heads."""
    model = tokenmix.create_model("test_lvvit").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, maps = model.forward_intermediates(x, indices=1)
        (flat,) = model.forward_intermediates(
            x, indices=[-1], output_fmt="NLC", intermediates_only=True
        )
    assert tokens.shape == (2, 17, 48) and maps[0].shape == (2, 48, 4, 4)
    torch.testing.assert_close(flat, maps[0].flatten(2).transpose(1, 2))
    assert model.prune_intermediate_layers([0]) == [0]
    assert len(model.blocks) == 1 and isinstance(model.aux_head, torch.nn.Identity)
    assert model.feature_info.module_name() == ["blocks.0"]
    with torch.no_grad():
        assert model(x).shape == (2, 48)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="avg")
