"""The train / eval / predict / plot commands, end to end on a tiny run over the digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tokenmix.cli.main import main
from tokenmix.data.datasets import open_dataset

from .conftest import ROOT
from .test_engine import TINY


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (two epochs) in its own folder."""
    out = tmp_path_factory.mktemp("runs")
    recipe = out / "tiny.yaml"
    recipe.write_text("model: {name: test_convformer}\n")
    code = main(
        [
            "train",
            "--config",
            str(recipe),
            "--set",
            *TINY,
            "train.epochs=2",
            "log.plots=true",
            f"run.output_dir={out}",
        ]
    )
    assert code == 0
    return out / "tiny"


@pytest.mark.parametrize("command", ["train", "eval", "predict", "plot"])
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "Examples:" in capsys.readouterr().out


def test_print_config_and_bad_keys(capsys) -> None:
    demo = ROOT / "configs" / "digits_demo.yaml"
    assert main(["train", "--config", str(demo), "--set", "optim.lr=5e-4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 5e-4 and printed["model"]["name"] == "test_cdfformer"
    assert main(["train", "--config", str(demo), "--set", "optim.lerning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lerning_rate" in err and "allowed" in err
    assert main(["train", "--config", str(demo), "--set", "train.amp=fp8"]) == 2
    assert "none, bf16, fp16" in capsys.readouterr().err


def test_train_writes_the_run_folder(trained: Path, capsys) -> None:
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "plots/curves.png",
        "plots/confusion.png",
        "plots/predictions.png",
    ):
        assert (trained / name).is_file(), name
    results = json.loads((trained / "results.json").read_text())
    assert results["steps"] == 16 and set(results["per_class_accuracy"]) == {
        str(i) for i in range(10)
    }
    assert 0 <= results["final"]["top1"] <= 100


def test_eval_matches_training_eval(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--checkpoint",
            str(trained),
            "--data",
            "digits",
            "--limit",
            "32",
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    record = json.loads((out / "eval.json").read_text())
    final = json.loads((trained / "results.json").read_text())["final"]
    # best.safetensors is the final model here (the last eval was the best or equal); same 32 images
    assert record["num_samples"] == 32
    assert (out / "confusion.png").is_file()
    step_dir = sorted((trained / "checkpoints").glob("step_*"))[-1]
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(step_dir),
                "--data",
                "digits",
                "--limit",
                "32",
                "--workers",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "eval.json").read_text())
    assert record["top1"] == pytest.approx(final["top1"]) and record["loss"] == pytest.approx(
        final["loss"], rel=1e-5
    )
    assert (
        main(
            ["eval", "--model", "test_dfformer", "--checkpoint", str(step_dir), "--data", "digits"]
        )
        == 2
    )
    assert "holds a test_convformer" in capsys.readouterr().err


def test_predict_on_image_files(trained: Path, tmp_path: Path, capsys) -> None:
    digits = open_dataset("digits", "test")
    for i in range(6):
        folder = tmp_path / "imgs" / digits.classes[digits.label(i)]
        folder.mkdir(parents=True, exist_ok=True)
        digits.load(i).save(folder / f"{i}.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "unlabelled.png")
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained),
                str(tmp_path / "imgs"),
                "--top-k",
                "3",
                "--out",
                str(grid),
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 7 and all(len(x["top"]) == 3 for x in lines)
    assert sum(x["truth"] is None for x in lines) == 1
    assert all(x["top"][0][1] >= x["top"][1][1] >= x["top"][2][1] for x in lines)
    assert grid.is_file()
    assert main(["predict", "--checkpoint", str(trained), str(tmp_path / "missing.png")]) == 2


def test_plot_command(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    assert main(["plot", str(trained), "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 10_000


def test_resume_a_finished_run_only_reevaluates(trained: Path, capsys) -> None:
    before = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert main(["train", "--resume", str(trained)]) == 0
    after = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in after if r["kind"] == "train"]
    assert trains == [r for r in before if r["kind"] == "train"]  # no step was trained again


def test_demo_recipe_smoke(tmp_path: Path) -> None:
    """The README's main job, shrunk by --smoke: the recipe runs end to end."""
    demo = ROOT / "configs" / "digits_demo.yaml"
    assert (
        main(
            [
                "train",
                "--config",
                str(demo),
                "--smoke",
                "--set",
                f"run.output_dir={tmp_path}",
                "train.cpu_threads=1",
                "log.progress=false",
            ]
        )
        == 0
    )
    assert (tmp_path / "digits_demo" / "plots" / "predictions.png").is_file()
    assert "tokenmix train --config configs/digits_demo.yaml" in (ROOT / "Makefile").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_smoke_runs_on_digits(recipe: Path, tmp_path: Path) -> None:
    """Each recipe's model, optimizer, schedule and augmentation run 3 steps (224 px: slow)."""
    overrides = ["data.train=digits", "model.pretrained=false", "loss.token_labels=null"]
    args = [
        "train",
        "--config",
        str(recipe),
        "--smoke",
        "--set",
        *overrides,
        f"run.output_dir={tmp_path}",
    ]
    assert main([*args, "log.progress=false"]) == 0
