"""Typed config: defaults, recipes, dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokenmix.config import Config, ConfigError, dump_yaml, load_config, parse_override, to_dict
from tokenmix.models import list_models

from .conftest import ROOT

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_need_no_file() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.name == "adamw" and cfg.train.amp == "none"


def test_recipe_then_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 0.01, name: sgd}\ntrain: {epochs: 3}\n")
    cfg = load_config(recipe, ["optim.lr=1e-3", "model.kwargs.dims=[8,8,16,16]", "aug.scale=null"])
    assert cfg.optim.lr == pytest.approx(1e-3)  # "1e-3" is a YAML string: read as a number
    assert cfg.optim.name == "sgd" and cfg.train.epochs == 3  # recipe kept where not overridden
    assert cfg.model.kwargs == {"dims": [8, 8, 16, 16]}
    assert cfg.aug.scale is None
    assert cfg.aug.ratio == (3 / 4, 4 / 3)  # default untouched


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lrr=1", ["optim.lrr", "allowed:", "lr", "Did you mean optim.lr"]),
        ("optimizer.lr=1", ["optimizer", "the top level", "optim"]),
        ("train.amp=fp32", ["train.amp", "'fp32'", "none, bf16, fp16"]),
        ("optim.name=lamb", ["optim.name", "adamw, adam, sgd"]),
        ("optim.lr=-1", ["optim.lr", "> 0"]),
        ("aug.hflip_rate=1.5", ["aug.hflip_rate", "<= 1"]),
        ("aug.scale=[0.5]", ["aug.scale", "expected 2 values"]),
        ("train.epochs=1.5", ["train.epochs", "an integer"]),
        ("train.epochs=ten", ["train.epochs", "an integer"]),
        ("model.pretrained=3", ["model.pretrained", "true/false or a string"]),
        ("optim=3", ["optim", "mapping"]),
        ("optim.lr", ["key=value"]),
    ],
)
def test_bad_overrides_name_key_and_allowed(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_bad_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not sections\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train: {batch: 8}\n")
    with pytest.raises(ConfigError, match=r"train\.batch .*batch_size"):
        load_config(nested)


def test_override_values_are_yaml() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=") == ("a", "")


def test_round_trip_through_yaml() -> None:
    cfg = load_config(
        overrides=[
            "model.kwargs.dims=[8,8,16,16]",
            "optim.clip_grad=1.0",
            "data.mean=[0.5,0.5,0.5]",
        ]
    )
    again = load_config(base=yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_validate_and_state_their_command(recipe: Path) -> None:
    """Every recipe loads, names a registered model, and starts with its command and result."""
    cfg = load_config(recipe)
    arch = cfg.model.name.split(".")[0]
    if arch not in list_models():
        pytest.skip(f"{arch} is not registered in this checkout")
    head = recipe.read_text().splitlines()[:6]
    assert any("train --config" in line for line in head), head
    assert any("xpect" in line for line in head), head  # "Expect: ..." the result it should reach


def test_recipes_only_override(tmp_path: Path) -> None:
    """A recipe that restates a default is legal, but ours stay minimal: no section is empty."""
    for recipe in RECIPES:
        raw = yaml.safe_load(recipe.read_text())
        assert all(value not in (None, {}) for value in raw.values()), recipe


def test_yaml_aliases_are_refused_in_recipes_and_overrides(tmp_path: Path) -> None:
    """Aliases are how 428 bytes of YAML ("billion laughs") expand to a billion strings."""
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(
        "model:\n  kwargs:\n    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        "    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "    c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    )  # three levels (729 strings) so that an unchecked loader survives it too
    with pytest.raises(ConfigError, match=r"laughs\.yaml:4: YAML alias \*a is not allowed"):
        load_config(laughs)
    with pytest.raises(ConfigError, match=r"override model\.kwargs:1: YAML alias \*x"):
        load_config(overrides=["model.kwargs={a: &x [1, 2], b: *x}"])
    assert load_config(overrides=["data.train=*.jpg"]).data.train == "*.jpg"  # not an alias


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 2\noptim:\n  name: sgd\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key optim \(first .* line 1\)"):
        load_config(recipe)
    recipe.write_text("optim:\n  lr: 0.1\n  name: sgd\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: duplicate key optim\.lr"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"duplicate key dims"):
        load_config(overrides=["model.kwargs={dims: [1], dims: [2]}"])


def test_non_utf8_recipe_names_file_and_line(tmp_path: Path) -> None:
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("optim:\n  lr: 0.1  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: not UTF-8 text \(byte 0xe9"):
        load_config(recipe)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lr=nan", ["optim.lr", "'nan' is not a finite number"]),
        ("optim.lr=.nan", ["optim.lr", "nan is not a finite number"]),
        ("optim.lr=1e400", ["optim.lr", "'1e400' is not a finite number"]),
        ("optim.lr=1e39", ["optim.lr", "1e+39", "< 10"]),
        ("optim.weight_decay=-0.1", ["optim.weight_decay", "-0.1", ">= 0"]),
        ("optim.betas=[0.9, 1.0]", ["optim.betas", "(0.9, 1.0)", "< 1"]),
        ("sched.min_lr=.inf", ["sched.min_lr", "inf is not a finite number"]),
        ("aug.ratio=[0,0]", ["aug.ratio", "(0.0, 0.0)", "> 0"]),
        ("aug.ratio=[1.3, 0.7]", ["aug.ratio", "(1.3, 0.7)", "min <= max"]),
        ("aug.scale=[0, 1]", ["aug.scale", "(0.0, 1.0)", "> 0.0 and <= 1.0"]),
        ("aug.scale=[0.5, 1.5]", ["aug.scale", "(0.5, 1.5)", "<= 1.0"]),
        ("aug.scale=[0.9, 0.2]", ["aug.scale", "(0.9, 0.2)", "min <= max"]),
        ("aug.erase_rate=2", ["aug.erase_rate", "2.0", "<= 1"]),
        ("aug.color_jitter=-.inf", ["aug.color_jitter", "not a finite number"]),
    ],
)
def test_numbers_are_checked_at_load_time(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))
