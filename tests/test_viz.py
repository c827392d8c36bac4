"""Figures and the end of a run: names that are not UTF-8, and eval images that were skipped.

One tiny training run (module fixture) on a folder whose class ``cl\\xe9ss`` is not UTF-8 and
whose evaluation split holds an unreadable file under ``data.bad_images=skip``; the tests check
that it writes its plots and ``results.json``, and that ``tokenmix predict`` on those files works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenmix.cli.main import main
from tokenmix.data.datasets import open_dataset
from tokenmix.data.transforms import SquashResize
from tokenmix.engine.predict import grid_samples
from tokenmix.viz.plots import plot_confusion, plot_prediction_grid
from tokenmix.viz.text import display_name, plot_text

from .test_engine import TINY

# b"cl\xe9ss" (Latin-1 e-acute) is not UTF-8; Python names the folder with a lone surrogate
LATIN1 = os.fsdecode(b"cl\xe9ss")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(folder / f"{k:02d}.png")


def _non_utf8_tree(root: Path) -> Path:
    """train/ and val/ with classes ``cl\\xe9ss`` and ``plain``; val holds one broken file."""
    for split, count in (("train", 10), ("val", 3)):
        _images(root / split / LATIN1, count, seed=len(split))
        _images(root / split / "plain", count, seed=len(split) + 10)
    (root / "val" / LATIN1 / "00.png").write_bytes(b"not a png")  # the grid's first pick
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    data = _non_utf8_tree(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs")
    recipe = out / "tiny.yaml"
    recipe.write_text("model: {name: test_convformer}\n")
    overrides = [*TINY, f"data.train={data}", "data.bad_images=skip", "log.plots=true"]
    code = main(["train", "--config", str(recipe), "--set", *overrides, f"run.output_dir={out}"])
    assert code == 0
    return out / "tiny"


# --------------------------------------------------------------------------- names


def test_display_name_is_valid_unicode_and_keeps_names_apart() -> None:
    assert display_name(LATIN1) == "cl\\xe9ss"
    assert display_name("cl\u00e9ss") == "cl\u00e9ss"  # real UTF-8 names are left alone
    assert display_name(os.fsdecode(b"\xe8")) != display_name(os.fsdecode(b"\xe9"))
    assert display_name("x\ud800") == "x\\ud800"  # a surrogate not from undecodable bytes
    for name in (LATIN1, "x\ud800"):
        display_name(name).encode("utf-8")  # strict: would raise on a surrogate
    assert plot_text("a$\\foo$") == "a\\$\\foo\\$"


def test_plots_draw_non_utf8_and_dollar_names(tmp_path: Path) -> None:
    classes = [LATIN1, "a$\\foo$", "plain"]
    plot_confusion(torch.eye(3, dtype=torch.int64), classes, tmp_path / "confusion.png")
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    grid = plot_prediction_grid(
        images,
        [[(LATIN1, 0.6)], [("a$\\foo$", 0.4)]],
        tmp_path / "grid.png",
        truths=[LATIN1, "plain"],
        names=[f"{LATIN1}.png", "x$y$.png"],
    )
    assert Image.open(grid).size[0] > 0 and (tmp_path / "confusion.png").is_file()


# --------------------------------------------------------------------------- skipped samples


def test_grid_samples_leave_out_unreadable_images(tmp_path: Path) -> None:
    ds = open_dataset(
        _non_utf8_tree(tmp_path) / "val", bad_images="skip", transform=SquashResize(8)
    )
    images, picks = grid_samples(ds, 32)
    assert picks == [1, 2, 3, 4, 5] and images.shape == (5, 3, 8, 8)
    images, picks = grid_samples(ds, 2)  # spread picks: 0 (unreadable) and 5
    assert picks == [5] and images.shape == (1, 3, 8, 8)
    assert grid_samples(ds, 0)[0].shape == (0, 3, 8, 8)


def test_run_end_writes_results_and_plots_despite_skipped_and_non_utf8(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] > 0 and len(results["per_class_accuracy"]) == 2
    # strict UTF-8 (no lone surrogates), so any JSON parser reads it
    "".join(results["per_class_accuracy"]).encode("utf-8")
    for name in ("curves.png", "confusion.png", "predictions.png"):
        assert (run / "plots" / name).is_file(), name


@pytest.mark.parametrize("as_json", [True, False])
def test_predict_non_utf8_names(run: Path, tmp_path: Path, capsys, as_json: bool) -> None:
    folder = tmp_path / LATIN1
    _images(folder, 2, seed=3)
    (folder / "00.png").rename(folder / f"{LATIN1}.png")  # a non-UTF-8 file name too
    grid = tmp_path / "grid.png"
    args = ["predict", "--checkpoint", str(run), str(folder), "--top-k", "2", "--out", str(grid)]
    assert main([*args, "--json"] if as_json else args) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # strict: what a UTF-8 terminal or pipe accepts
    assert grid.is_file()
    if as_json:
        assert "\\udc" not in out  # no lone-surrogate escapes, which strict parsers reject
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        assert len(lines) == 2
        assert {x["truth"] for x in lines} == {"cl\\xe9ss"}  # labelled by its folder
        assert any(x["image"].endswith("cl\\xe9ss/cl\\xe9ss.png") for x in lines)
        assert all(len(x["top"]) == 2 for x in lines)
    else:
        assert "cl\\xe9ss.png" in out and "labelled images right" in out
