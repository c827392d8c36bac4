"""timm and torch.hub: timm-layout checkpoints, timm's tag names, registration, hubconf.

Parity is checked against timm itself (``timm_lib`` in ``conftest.py``: timm installed with
``--no-deps`` and imported against a torchvision stand-in; skipped with the reason when that
fails). The pure layout conversion and the hubconf tests need no timm.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tokenmix
from tokenmix.models import CheckpointError, get_pretrained_cfg, list_models, timm_layout
from tokenmix.models.metaformer import MetaFormer
from tokenmix.models.weights import TAG_ALIASES, canonical_tag

from .conftest import ROOT

METAFORMERS = [f"{f}_{s}" for f in ("caformer", "convformer") for s in ("s18", "s36", "m36", "b36")]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move the 1-D parameters off their initial values: norm weights, scales and biases start
    at 1 or 0, where a swapped or dropped tensor would not change the output. Weight matrices
    keep their random init, so the logits keep the size float32 checks at 1e-5 are meant for."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _image(size: int = 224) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


# --- timm-layout checkpoints -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "file_name"),
    [("caformer_s18", "model.safetensors"), ("convformer_s18", "pytorch_model.bin")],
)
def test_timm_checkpoint_loads_and_gives_timms_outputs(timm_lib, tmp_path, arch, file_name):
    """timm's own model, saved in its layout, loads into ours: timm's logits within 1e-5."""
    reference = _perturbed(timm_lib.create_model(arch))
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / file_name
    if file_name.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)

    model = tokenmix.create_model(arch, pretrained=path).eval()
    x = _image(128)  # any size works (no position embeddings); small keeps the test fast
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert (got - expected).abs().max() <= 1e-5
    assert model.head.norm.eps == timm_layout.TIMM_HEAD_NORM_EPS  # timm's head epsilon

    back = timm_layout.tokenmix_to_timm(model.state_dict())
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("arch", METAFORMERS)
def test_timm_layout_converts_every_size_both_ways(timm_lib, arch):
    with torch.device("meta"):
        theirs = timm_lib.create_model(arch).state_dict()
        ours = tokenmix.create_model(arch).state_dict()
    assert timm_layout.is_timm_metaformer(theirs) and not timm_layout.is_timm_metaformer(ours)
    converted = timm_layout.timm_to_tokenmix(theirs)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}
    back = timm_layout.tokenmix_to_timm(ours)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("arch", ["test_caformer", "test_convformer"])
def test_timm_layout_round_trip_without_timm(arch):
    """The conversion alone (no timm needed): ours -> timm's layout -> loaded, same outputs."""
    source = _perturbed(tokenmix.create_model(arch))
    theirs = timm_layout.tokenmix_to_timm(source.state_dict())
    assert "stem.conv.weight" in theirs and "stages.0.blocks.0.mlp.fc1.weight" in theirs
    assert theirs["stages.0.blocks.0.mlp.fc1.weight"].ndim == 4  # a 1x1 conv in timm
    assert timm_layout.timm_to_tokenmix(theirs).keys() == source.state_dict().keys()

    model = tokenmix.create_model(arch)
    report = tokenmix.load_weights(model, theirs)
    assert report.source_format == "timm" and report.adjusted
    timm_layout.match_timm_numerics(source)
    x = _image(64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), source(x), atol=1e-6)

    backbone = tokenmix.create_model(arch, features_only=True)  # its norm and head dropped
    assert tokenmix.load_weights(backbone, theirs).source_format == "timm"
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x)[-1], source.forward_features(x))


def test_unknown_layout_error_is_unchanged():
    model = tokenmix.create_model("test_caformer")
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="another architecture"):
        tokenmix.load_weights(model, state)
    # a timm-layout file of another architecture: reported in our names, not silently dropped
    other = timm_layout.tokenmix_to_timm(tokenmix.create_model("test_convformer").state_dict())
    with pytest.raises(CheckpointError, match=r"stages\.2\.0\.token_mixer"):
        tokenmix.load_weights(model, other)


# --- timm's tag names ----------------------------------------------------------------------------
def test_timm_tag_names_are_aliases():
    assert canonical_tag("caformer_s18", "sail_in1k") == "in1k"
    assert canonical_tag("convformer_m36", "sail_in22k_ft_in1k_384") == "in21k_ft_in1k_384"
    assert canonical_tag("dfformer_s18", "sail_in1k") == "sail_in1k"  # only where timm has them
    assert set(TAG_ALIASES) == {a for a in METAFORMERS}
    assert not [n for n in list_models(pretrained=True) if ".sail_" in n]  # no duplicate listing

    cfg = get_pretrained_cfg("caformer_s18.sail_in1k")
    assert cfg == get_pretrained_cfg("caformer_s18.in1k")
    assert get_pretrained_cfg("convformer_b36.sail_in22k_ft_in1k_384").input_size == (3, 384, 384)
    with torch.device("meta"):
        model = tokenmix.create_model("caformer_s18.sail_in1k_384")
    assert tuple(model.img_size) == (384, 384)
    with pytest.raises(ValueError, match="no weights tagged 'sail_in22k'"):
        get_pretrained_cfg("caformer_s18.sail_in22k")


def test_timm_aliases_match_timms_tags(timm_lib):
    """Every alias is a tag timm publishes for that architecture."""
    for arch, aliases in TAG_ALIASES.items():
        published = set(timm_lib.list_pretrained(f"{arch}.*"))
        assert {f"{arch}.{a}" for a in aliases} <= published, arch


# --- registration with timm ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered(timm_lib) -> list[str]:
    import tokenmix.timm

    tokenmix.timm.register()
    return tokenmix.timm.registered()


def test_register_adds_what_timm_lacks(timm_lib, registered):
    import tokenmix.timm

    assert {"dfformer_s18", "cdfformer_b36", "gfformer_s18", "lvvit_s", "test_dfformer"} <= set(
        registered
    )
    assert not set(registered) & set(METAFORMERS)  # timm's own stay timm's
    assert tokenmix.timm.register() == []  # idempotent
    assert "dfformer_s18" in timm_lib.list_models("dfformer_*")
    assert "dfformer_s18.in1k" in timm_lib.list_pretrained("dfformer_s18*")

    model = timm_lib.create_model("dfformer_s18").eval()
    assert isinstance(model, MetaFormer)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    with torch.device("meta"):
        ours = tokenmix.create_model("dfformer_s18")
        theirs = timm_lib.create_model("caformer_s18")
    assert model.state_dict().keys() == ours.state_dict().keys()
    assert not isinstance(theirs, MetaFormer)
    with pytest.raises(ValueError, match="not tokenmix architectures"):
        tokenmix.timm.register(["resnet50"])


def test_timm_create_model_arguments(timm_lib, registered, tmp_path):
    model = timm_lib.create_model("test_dfformer", num_classes=3, drop_path_rate=0.1)
    assert model.num_classes == 3

    features = timm_lib.create_model("test_dfformer", features_only=True, out_indices=(1, 3))
    maps = features(_image(64))
    assert [m.shape[1] for m in maps] == [32, 64]

    source = _perturbed(tokenmix.create_model("test_dfformer"))
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = timm_lib.create_model(
        "test_dfformer", pretrained=True, pretrained_cfg_overlay={"file": str(path)}
    )
    assert _same_weights(loaded, source)
    with pytest.raises(ValueError, match="not supported"):
        timm_lib.create_model("test_dfformer", pretrained_cfg_overlay={"mean": (0.5,) * 3})


def test_resolve_data_config_on_our_models(timm_lib, registered):
    with torch.device("meta"):
        model = timm_lib.create_model("lvvit_s.tl_in1k_384")
    if not isinstance(model.pretrained_cfg, Mapping):
        pytest.xfail("model.pretrained_cfg is not a Mapping yet (timm reads it with .get)")
    config = timm_lib.data.resolve_data_config(model=model)
    cfg = get_pretrained_cfg("lvvit_s.tl_in1k_384")
    assert config["input_size"] == (3, 384, 384)
    assert config["crop_pct"] == cfg.crop_pct == 0.9
    assert config["interpolation"] == cfg.interpolation
    assert tuple(config["mean"]) == cfg.mean and tuple(config["std"]) == cfg.std
    assert config["crop_mode"] == "center"


# --- torch.hub ---------------------------------------------------------------------------------
def test_hubconf_builds_every_architecture():
    model = torch.hub.load(str(ROOT), "dfformer_s18", source="local", pretrained=False)
    assert isinstance(model, MetaFormer) and model.num_classes == 1000
    small = torch.hub.load(str(ROOT), "test_dfformer", source="local", num_classes=4)
    assert small.num_classes == 4

    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    assert spec is not None and spec.loader is not None
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert "torch" in hubconf.dependencies
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert set(list_models()) <= entries
    assert isinstance(hubconf.dfformer_s18, types.FunctionType)


def test_hubconf_passes_tag_and_checkpoint(tmp_path: Path):
    source = _perturbed(tokenmix.create_model("test_dfformer"))
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    model = torch.hub.load(str(ROOT), "test_dfformer", source="local", pretrained=str(path))
    assert _same_weights(model, source)
    with torch.device("meta"):
        tagged = torch.hub.load(str(ROOT), "caformer_s18", source="local", tag="in1k_384")
    assert tuple(tagged.img_size) == (384, 384)
