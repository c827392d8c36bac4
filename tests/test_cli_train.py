"""The train / eval / predict / plot commands, end to end on a tiny run over the digits."""

from __future__ import annotations

import json
import logging
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


def _image_tree(root: Path, count: int = 6) -> Path:
    digits = open_dataset("digits", "test")
    for i in range(count):
        folder = root / digits.classes[digits.label(i)]
        folder.mkdir(parents=True, exist_ok=True)
        digits.load(i).save(folder / f"{i}.png")
    Image.new("RGB", (20, 20)).save(root / "unlabelled.png")
    return root


def test_predict_on_image_files(trained: Path, tmp_path: Path, capsys) -> None:
    images = _image_tree(tmp_path / "imgs")
    grid = tmp_path / "grid.png"
    args = ["predict", "--checkpoint", str(trained), str(images), "--top-k", "3"]
    assert main([*args, "--out", str(grid), "--json"]) == 0
    out = capsys.readouterr()
    # --json: stdout is JSON lines and nothing else; the summary goes to stderr
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert len(lines) == 7 and all(len(x["top"]) == 3 for x in lines)
    assert sum(x["truth"] is None for x in lines) == 1
    assert all(x["top"][0][1] >= x["top"][1][1] >= x["top"][2][1] for x in lines)
    assert "labelled images right" in out.err and f"wrote {grid}" in out.err
    assert grid.is_file()
    assert main(["predict", "--checkpoint", str(trained), str(tmp_path / "missing.png")]) == 2
    # without --json the summary is part of the normal output
    assert main([*args, "--out", str(grid)]) == 0
    assert "labelled images right" in capsys.readouterr().out


def test_predict_skips_bad_images_when_asked(trained: Path, tmp_path: Path, capsys, caplog) -> None:
    images = _image_tree(tmp_path / "imgs", count=3)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["predict", "--checkpoint", str(trained), str(images), "--out", str(tmp_path / "g.png")]
    assert main([*args, "--json"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--bad-images skip" in err
    assert main([*args, "--json", "--bad-images", "skip"]) == 0
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert len(lines) == 4 and not any("broken" in x["image"] for x in lines)
    assert "skipped 1 unreadable image" in out.err
    assert "broken.png" in caplog.text  # the warning (stderr, through logging) names the file


def test_convert_a_run_keeps_its_config_and_classes(trained: Path, tmp_path: Path, capsys) -> None:
    """convert takes a run folder without --model, and its output is still a tokenmix run's."""
    from tokenmix.engine.predict import load_for_inference

    dst = tmp_path / "tiny48.safetensors"
    assert main(["convert", str(trained), str(dst), "--img-size", "48"]) == 0
    assert "test_convformer at 48x48, 10 classes" in capsys.readouterr().out
    loaded = load_for_inference(dst)  # no model name: the file says what it is
    assert loaded.name == "test_convformer" and loaded.classes == [str(i) for i in range(10)]
    assert loaded.model.pretrained_cfg.input_size == (3, 48, 48)
    assert loaded.config is not None and loaded.config.model.img_size == 48
    step = sorted((trained / "checkpoints").glob("step_*"))[-1]
    assert main(["convert", str(step), str(tmp_path / "s.safetensors"), "--use-ema"]) == 2
    assert "no EMA weights" in capsys.readouterr().err
    assert main(["convert", str(step), str(tmp_path / "s.safetensors"), "--num-classes", "3"]) == 2
    assert "trained for 10 classes" in capsys.readouterr().err


def test_relabel_with_a_run_as_teacher(trained: Path, tmp_path: Path) -> None:
    """relabel takes the teacher's architecture, resolution and classes from the run."""
    from tokenmix.data.token_labels import TokenLabelStore

    out = tmp_path / "labels"
    args = ["relabel", "--checkpoint", str(trained), "--data", "digits", "--split", "val"]
    opts = ["--out", str(out), "--topk", "2", "--device", "cpu", "--workers", "0"]
    assert main([*args, *opts]) == 0
    store = TokenLabelStore(out)
    assert len(store) == 360 and store.num_classes == 10 and store.topk == 2
    assert store.meta["teacher"] == "test_convformer"
    assert main(["relabel", "--data", "digits", "--out", str(tmp_path / "x")]) == 2


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
    args = ["train", "--config", str(demo), "--smoke", "--set", f"run.output_dir={tmp_path}"]
    assert main([*args, "train.cpu_threads=1", "log.progress=false"]) == 0
    assert (tmp_path / "digits_demo-smoke" / "plots" / "predictions.png").is_file()
    assert "tokenmix train --config configs/digits_demo.yaml" in (ROOT / "Makefile").read_text()


def test_smoke_is_a_dry_run_that_blocks_nothing(tmp_path: Path, caplog, capsys) -> None:
    """--smoke: its own folder, no checkpoints, an amp this machine runs, and a real run (or
    another smoke run) afterwards starts as if it had not happened."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model: {name: test_convformer}\ntrain: {amp: fp16, epochs: 1}\n")
    common = ["--set", *TINY, "train.epochs=1", f"run.output_dir={tmp_path}"]
    smoke = ["train", "--config", str(recipe), "--smoke", *common]
    with caplog.at_level(logging.INFO, logger="tokenmix"):
        assert main(smoke) == 0
    folder = tmp_path / "tiny-smoke"
    assert (folder / "results.json").is_file() and (folder / "metrics.jsonl").is_file()
    assert not (folder / "checkpoints").exists() and not (tmp_path / "tiny").exists()
    stored = yaml.safe_load((folder / "config.yaml").read_text())
    assert stored["train"]["amp"] == "auto"  # fp16 needs CUDA: the smoke run uses auto here
    assert stored["train"]["max_steps"] == 3
    assert "smoke run passed" in capsys.readouterr().out
    assert main(smoke) == 0  # a second smoke run is not blocked either
    real = ["train", "--config", str(recipe), *common, "train.amp=none", "train.max_steps=2"]
    assert main(real) == 0
    assert len(list((tmp_path / "tiny" / "checkpoints").glob("step_*"))) == 1
    assert main(["train", "--config", str(recipe), "--smoke", "--resume"]) == 2
    assert "--smoke" in capsys.readouterr().err


def test_run_header_and_warmup_warning(tmp_path: Path, caplog) -> None:
    recipe = tmp_path / "warm.yaml"
    recipe.write_text("model: {name: test_convformer}\nsched: {warmup_epochs: 2}\n")
    small = [t for t in TINY if not t.startswith(("data.train_limit", "data.val_limit", "train.b"))]
    args = ["train", "--config", str(recipe), "--smoke", "--set", *small, "train.epochs=2"]
    with caplog.at_level(logging.INFO, logger="tokenmix"):
        assert main([*args, f"run.output_dir={tmp_path}"]) == 0
    text = caplog.text
    assert "sched.warmup_epochs=2 >= train.epochs=2" in text
    header = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run "))
    for expected in (
        str(tmp_path / "warm-smoke"),
        "test_convformer at 32x32, 10 classes",
        "M params",
        "GMACs/image",
        "device  cpu (1 process, 1 thread), amp none (float32)",
        "32 train / 16 eval images",
        "3 (train.max_steps; the schedule spans 2 epochs x 4 steps of 8 images)",
    ):
        assert expected in header, (expected, header)
    assert "GMACs not counted" not in header


def test_run_header_lists_the_training_sizes(tmp_path: Path, caplog) -> None:
    recipe = tmp_path / "prog.yaml"
    recipe.write_text("model: {name: test_convformer}\naug: {size_schedule: [[0, 16], [1, 32]]}\n")
    small = [t for t in TINY if not t.startswith(("data.train_limit", "data.val_limit", "train.b"))]
    args = ["train", "--config", str(recipe), "--smoke", "--set", *small, "train.epochs=2"]
    with caplog.at_level(logging.INFO, logger="tokenmix"):
        assert main([*args, f"run.output_dir={tmp_path}"]) == 0
    header = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run "))
    assert "training sizes 16 px from epoch 0, 32 px from epoch 1" in header, header


def test_packaged_recipe_by_name_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert main(["train", "--config", "digits_demo", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "test_cdfformer"
    # the README's spelling works outside the repository too
    assert main(["train", "--config", "configs/digits_demo.yaml", "--print-config"]) == 0
    assert main(["train", "--config", "digits_dmeo", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--config digits_dmeo" in err and "digits_demo" in err and "cifar10_cpu" in err


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
