"""The command line as a whole (version, error wording) and what an install ships: the recipes,
the bundled digits, a lean base install with optional extras."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tokenmix
from tokenmix.cli.main import cli_wording, main
from tokenmix.cli.train import packaged_recipes, recipes_dir
from tokenmix.data.datasets import open_digits

from .conftest import ROOT

# sha256 of the bundled arrays (images uint8 [1797, 8, 8], target uint8 [1797]) as scikit-learn
# 1.9.1's load_digits() gives them: a changed file is caught without scikit-learn installed
DIGITS_SHA256 = {
    "images": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
    "target": "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0",
}


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the command line ----------------------------------------------------------------------------
def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"tokenmix {tokenmix.__version__} (torch ")


def test_errors_name_flags_not_keyword_arguments(capsys) -> None:
    """The library says pretrained='/path'; the command line says --checkpoint /path."""
    assert main(["eval", "--model", "test_dfformer", "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenmix eval: error: test_dfformer has no published weights")
    assert "--checkpoint /path/to/checkpoint" in err and "pretrained=" not in err
    message = "pass pretrained='/w.pth' instead of pretrained=True."
    assert cli_wording(message, "train") == (
        "pass --set model.pretrained=/w.pth instead of model.pretrained=true."
    )
    # config keys in messages are left as they are
    assert cli_wording("set model.pretrained=PATH", "eval") == "set model.pretrained=PATH"


def test_os_errors_are_one_line(tmp_path: Path, capsys) -> None:
    """Any OSError a user can fix (here: an output folder that is a file) is one line."""
    import torch

    src = tmp_path / "w.pth"
    torch.save(tokenmix.create_model("test_caformer").state_dict(), src)
    (tmp_path / "taken").write_text("a file, not a folder")
    dst = tmp_path / "taken" / "w.safetensors"
    assert main(["convert", str(src), str(dst), "--model", "test_caformer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenmix convert: error:") and "Traceback" not in err


# --- what an install ships -----------------------------------------------------------------------
def test_recipes_ship_in_the_package() -> None:
    """configs/ of the repository and the packaged recipes are one set of files."""
    names = packaged_recipes()
    assert {"digits_demo", "cifar10_cpu", "dfformer_s18_in1k", "lvvit_s_in1k"} <= set(names)
    assert recipes_dir() == Path(tokenmix.__file__).parent / "configs"
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")) == names
    for name in names:
        repo = ROOT / "configs" / f"{name}.yaml"
        assert repo.read_bytes() == (recipes_dir() / f"{name}.yaml").read_bytes(), name


def test_package_data_lists_every_shipped_file(pyproject: dict[str, Any]) -> None:
    patterns = pyproject["tool"]["setuptools"]["package-data"]["tokenmix"]
    package = ROOT / "src" / "tokenmix"
    matched = {p for pattern in patterns for p in package.glob(pattern)}
    needed = {package / "data" / "digits.npz", package / "data" / "digits_NOTICE.txt"}
    needed |= set((package / "configs").glob("*.yaml"))
    assert needed <= matched, needed - matched


def test_base_install_is_lean_and_extras_exist(pyproject: dict[str, Any]) -> None:
    project = pyproject["project"]
    base = " ".join(project["dependencies"]).lower()
    for heavy in ("scikit-learn", "scipy", "onnx", "timm", "huggingface", "mmengine"):
        assert heavy not in base, heavy
    assert {"export", "hub", "timm", "mm"} <= set(project["optional-dependencies"])
    sources = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    assert "sklearn" not in sources.replace("sklearn.datasets.load_digits()", "")


def test_bundled_digits_are_the_known_arrays() -> None:
    from importlib.resources import files

    with (files("tokenmix.data") / "digits.npz").open("rb") as f, np.load(f) as z:
        assert {k: z[k].dtype for k in z.files} == {"images": np.uint8, "target": np.uint8}
        assert z["images"].shape == (1797, 8, 8) and z["images"].max() == 16
        for key, digest in DIGITS_SHA256.items():
            assert hashlib.sha256(z[key].tobytes()).hexdigest() == digest, key
    notice = (files("tokenmix.data") / "digits_NOTICE.txt").read_text()
    assert "BSD 3-Clause License" in notice and "The scikit-learn developers" in notice
    assert "Optical Recognition of Handwritten Digits" in notice


@pytest.mark.parametrize("split", ["train", "val"])
def test_bundled_digits_match_scikit_learn(split: str) -> None:
    """The loader gives byte for byte the samples it gave when it read scikit-learn's copy."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    import torch
    import torch.nn.functional as F

    digits = sklearn_datasets.load_digits()
    # the former loader, verbatim
    grey = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    big = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    keep = np.arange(len(images)) % 5 != 0 if split == "train" else np.arange(len(images)) % 5 == 0
    expected = np.repeat(images[keep][..., None], 3, axis=-1)

    data = open_digits(split)
    assert len(data) == int(keep.sum())
    assert np.array_equal(np.stack([np.asarray(data.load(i)) for i in range(len(data))]), expected)
    assert np.array_equal(data.labels, digits.target[keep]) and data.labels.dtype == np.int64
    assert data.sample_id(0) == ("digits/00001" if split == "train" else "digits/00000")


@pytest.mark.slow
def test_wheel_contains_recipes_and_digits(tmp_path: Path) -> None:
    """A built wheel (not only this checkout) has the recipes and the digits."""
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, "-w", str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("tokenmix-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tokenmix/data/digits.npz", "tokenmix/data/digits_NOTICE.txt"} <= names
    assert {f"tokenmix/configs/{n}.yaml" for n in packaged_recipes()} <= names
