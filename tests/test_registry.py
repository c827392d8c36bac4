"""Sweep over every registered model: the interface STYLE.md promises, on tiny inputs."""

from __future__ import annotations

import pytest
import torch

import tokenmix
from tokenmix.models import get_pretrained_cfg

TEST_MODELS = tokenmix.list_models("test_*")
FULL_MODELS = [m for m in tokenmix.list_models() if not m.startswith("test_")]


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    _, h, w = model.pretrained_cfg.input_size
    return torch.randn(batch, 3, h, w)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    model = tokenmix.create_model(name).train()
    out = model(_input(model))
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    nan = [
        n
        for n, p in model.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    assert not nan


@pytest.mark.parametrize("name", FULL_MODELS)
def test_full_size_models_run_small_input(name: str) -> None:
    """Full-size architectures at 64x64 (filters resized on the fly): forward and backward."""
    model = tokenmix.create_model(name, num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_feature_info_matches_intermediates(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        _, feats = model.forward_intermediates(x)
    assert len(feats) == len(model.feature_info)
    for info, f in zip(model.feature_info, feats, strict=True):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[-1] == x.shape[-1] // info["reduction"]
    backbone = tokenmix.create_model(name, features_only=True).eval()
    backbone.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        maps = backbone(x)
    assert [m.shape for m in maps] == [f.shape for f in feats]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(maps, feats, strict=True))


@pytest.mark.parametrize("name", TEST_MODELS)
def test_grad_checkpointing_leaves_output_unchanged(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    x = _input(model).requires_grad_()
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", TEST_MODELS)
def test_bf16_autocast_is_finite(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("name", TEST_MODELS)
def test_interface_and_cfg(name: str) -> None:
    model = tokenmix.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg == get_pretrained_cfg(name).with_input_size(*cfg.input_size[1:])
    assert cfg.crop_pct > 0 and cfg.interpolation == "bicubic"
    assert dict(model.named_modules()).get(cfg.first_conv) is not None
    assert isinstance(model.no_weight_decay(), set)
    model.reset_classifier(3)
    model.eval()
    with torch.no_grad():
        assert model(_input(model)).shape == (2, 3)
        feats = model.forward_features(_input(model))
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_torch_export(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    x = _input(model)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", TEST_MODELS)
@pytest.mark.usefixtures("fresh_dynamo")
def test_torch_compile_without_graph_breaks(name: str) -> None:
    """fullgraph=True fails on any graph break; aot_eager keeps this fast (no C++ build)."""
    model = tokenmix.create_model(name).eval()
    x = _input(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", TEST_MODELS)
@pytest.mark.usefixtures("fresh_dynamo")
def test_torch_compile_inductor(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    x = _input(model)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)


def test_resize_path_identity_at_native_size() -> None:
    for name in TEST_MODELS:
        model = tokenmix.create_model(name)
        for m in model.modules():
            if hasattr(m, "filters"):
                h, w = m.complex_weights.shape[:2]
                assert torch.equal(m.filters(h, w), m.complex_weights)


def test_list_models_and_unknown_names() -> None:
    assert "dfformer_s18" in tokenmix.list_models()
    assert tokenmix.list_models("cdfformer_*") == [
        "cdfformer_b36",
        "cdfformer_m36",
        "cdfformer_s18",
        "cdfformer_s36",
    ]
    with pytest.raises(ValueError, match="dfformer_s18"):
        tokenmix.create_model("dfformer_s81")
    with pytest.raises(ValueError, match="no weights tagged"):
        tokenmix.create_model("dfformer_s18.nonexistent_tag")


def test_overrides_change_architecture() -> None:
    model = tokenmix.create_model(
        "dfformer_s18", depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=10, img_size=64
    )
    assert [len(s) for s in model.stages] == [1, 1, 2, 1]
    assert model.stages[0][0].token_mixer.complex_weights.shape == (16, 9, 4, 2)
    with pytest.raises(TypeError):
        tokenmix.create_model("dfformer_s18", not_an_argument=1)


@pytest.mark.parametrize("name", ["test_dfformer", "test_lvvit"])
def test_extra_classifier_key_is_an_error_not_a_reinit(name: str, caplog) -> None:
    """A stray ``head.fc9.weight`` is an unexpected key like any other, not "another class
    count" (which used to drop it with a false "classifier re-initialised" warning)."""
    from tokenmix.models import CheckpointError, load_weights

    model = tokenmix.create_model(name)
    state = model.state_dict()
    state["head.fc9.weight"] = torch.zeros(3, 3)
    with caplog.at_level("WARNING", logger="tokenmix"), pytest.raises(CheckpointError) as err:
        load_weights(tokenmix.create_model(name), state)
    assert "unexpected in the checkpoint: head.fc9.weight" in str(err.value)
    assert "another number of classes" not in caplog.text


def test_classifier_messages_only_when_the_head_really_differs(caplog) -> None:
    from tokenmix.models import load_weights

    state = tokenmix.create_model("test_dfformer").state_dict()
    with caplog.at_level("WARNING", logger="tokenmix"):
        assert load_weights(tokenmix.create_model("test_dfformer"), state).reinitialized == []
    assert caplog.text == ""
    # LV-ViT without classifier still drops the checkpoint's head through the generic report
    state = tokenmix.create_model("test_lvvit").state_dict()
    with caplog.at_level("WARNING", logger="tokenmix"):
        report = load_weights(tokenmix.create_model("test_lvvit", num_classes=0), state)
    assert report.reinitialized and all(k.startswith(("head.", "aux_head.")) for k in report.reinitialized)
    assert "no classifier layer" in caplog.text and "another number" not in caplog.text


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path) -> None:
    from tokenmix.models import CheckpointError, load_weights

    model = tokenmix.create_model("test_dfformer")
    state = model.state_dict()
    names = [k for k, v in state.items() if v.is_floating_point()][:7]
    for i, key in enumerate(names):
        state[key] = (
            state[key]
            .clone()
            .view(-1)
            .index_fill(0, torch.tensor([0]), torch.nan if i % 2 else torch.inf)
            .view_as(state[key])
        )
    with pytest.raises(CheckpointError) as err:
        load_weights(tokenmix.create_model("test_dfformer"), state)
    text = str(err.value)
    assert "7 tensor(s) hold NaN or inf" in text and names[0] in text and "(2 more)" in text
    assert "allow_nonfinite=True" in text
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"nan\.pth: 7 tensor"):
        tokenmix.create_model("test_dfformer", pretrained=path)
    loaded = tokenmix.create_model("test_dfformer", pretrained=path, allow_nonfinite=True)
    assert not torch.isfinite(loaded.state_dict()[names[0]]).all()
