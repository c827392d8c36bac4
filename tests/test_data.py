"""Datasets, decoding, download, worker transforms and loaders, on tiny synthetic data.

The shared CIFAR-10 JPEG tree (``../shared/data/cifar10``) is used where real images matter and
skipped cleanly without it.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import http.server
import io
import logging
import math
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenmix.data import download as download_mod
from tokenmix.data.datasets import (
    MAX_UNNAMED_CLASSES,
    ArrayDataset,
    ImageFolder,
    ListFileDataset,
    SkippedSample,
    open_cifar10,
    open_dataset,
)
from tokenmix.data.decode import DEFAULT_MAX_PIXELS, BadImageError, decode_image, to_rgb
from tokenmix.data.download import DownloadError, download_cifar10, download_url
from tokenmix.data.loader import ResumableSampler, build_loader
from tokenmix.data.transforms import Normalize, ResizeCenterCrop, SquashResize, eval_transforms
from tokenmix.models.pretrained import PretrainedCfg

from .conftest import CIFAR10, require

# --------------------------------------------------------------------------- helpers


def _png(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _gradient(w: int = 24, h: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def _folder(root: Path, spec: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    """``root/<class>/<k>.png`` with distinct random images."""
    seed = 0
    for name, count in spec.items():
        for k in range(count):
            seed += 1
            _png(root / name / f"{k:03d}.png", _gradient(*size, seed=seed))
    return root


# --------------------------------------------------------------------------- decode


def test_decode_rgb_roundtrip_and_names(tmp_path: Path) -> None:
    img = _gradient()
    path = _png(tmp_path / "a.png", img)
    out = decode_image(path)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img))


def test_decode_grayscale_and_palette() -> None:
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    rgb = np.asarray(to_rgb(grey))
    assert rgb.shape == (8, 8, 3) and (rgb == np.asarray(grey)[..., None]).all()
    pal = grey.convert("P")
    assert np.array_equal(np.asarray(to_rgb(pal)), np.asarray(pal.convert("RGB")))


def test_decode_alpha_composited_on_background() -> None:
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 0), (200, 100, 0, 128))  # half transparent orange
    out = np.asarray(to_rgb(rgba)).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # background shows, not the hidden black
    expected = [
        round(200 * 128 / 255 + 255 * 127 / 255),
        round(100 * 128 / 255 + 255 * 127 / 255),
        127,
    ]
    assert np.abs(out[0, 1] - expected).max() <= 1
    grey = np.asarray(to_rgb(rgba, background=(0, 0, 0)))
    assert grey[0, 0].tolist() == [0, 0, 0]
    la = Image.new("LA", (1, 1), (10, 0))
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [255, 255, 255]


def test_decode_palette_transparency_composited() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    out = np.asarray(to_rgb(pal))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [255, 0, 0]


def test_decode_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 255, 0))  # cyan + yellow ink = green
    out = decode_image(_jpeg_bytes(cmyk, quality=95), name="green.jpg")
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert g > 240 and r < 15 and b < 15


def test_decode_sixteen_bit_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _png(tmp_path / "deep.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(decode_image(path))[0, :, 0]
    assert out.tolist() == [0, 1, 128, 255]  # Pillow's convert("RGB") would give 0, 255, 255, 255


def test_decode_rejects_modes_without_meaning() -> None:
    with pytest.raises(BadImageError, match="mode F"):
        to_rgb(Image.new("F", (2, 2)), name="float.tif")
    wide = Image.fromarray(np.array([[70000]], dtype=np.int32), "I")
    with pytest.raises(BadImageError, match=r"wide.png.*outside the 16-bit range"):
        to_rgb(wide, name="wide.png")


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", "empty"),
        (b"this is a text file, not an image\n" * 4, "text"),
        (None, "truncated"),
    ],
)
def test_decode_bad_files_name_the_file(tmp_path: Path, content: bytes | None, what: str) -> None:
    if content is None:
        content = _jpeg_bytes(_gradient(64, 64))[:400]
    path = tmp_path / f"{what}.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=f"{what}.jpg"):
        decode_image(path)


def test_decode_first_frame_of_gif(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = np.asarray(decode_image(path))
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_decode_draft_shrinks_large_jpeg_but_not_below_request() -> None:
    data = _jpeg_bytes(_gradient(512, 384))
    full = decode_image(data, name="big.jpg")
    small = decode_image(data, name="big.jpg", draft_size=(64, 64))
    assert full.size == (512, 384)
    assert small.size[0] < 512 and min(small.size) >= 64


# --------------------------------------------------------------------------- transforms


def _bomb(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` black PNG: a few KB on disk, ``side**2`` pixels once decoded."""
    Image.new("1", (side, side)).save(path)
    return path


def test_decode_refuses_images_above_max_pixels_before_decoding(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.png", 3000)
    assert bomb.stat().st_size < 10_000  # highly compressible, like a real bomb
    with pytest.raises(BadImageError, match=r"bomb.png: 3000x3000 = 9,000,000 pixels exceeds"):
        decode_image(bomb, max_pixels=1_000_000)
    assert decode_image(bomb, max_pixels=9_000_000).size == (3000, 3000)  # the cap is inclusive
    assert decode_image(bomb, max_pixels=None).size == (3000, 3000)
    # the default sits below Pillow's warn-only zone (13000**2 only warned there)
    assert 3000**2 < DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS < 13000**2


def test_dataset_max_pixels_follows_bad_image_policy(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 2, "b": 2}, size=(8, 8))
    _bomb(root / "a" / "001.png", 2000)
    ds = open_dataset(root, transform=SquashResize(8), max_pixels=1_000_000)
    with pytest.raises(BadImageError, match=r"a/001.png: 2000x2000"):
        ds[1]
    ds = open_dataset(root, bad_images="skip", transform=SquashResize(8), max_pixels=1_000_000)
    assert isinstance(ds[1], SkippedSample) and "2000x2000" in ds[1].reason
    loader = build_loader(ds, batch_size=4, train=False, num_workers=0)
    loader.set_epoch(0)
    assert torch.cat([b[2] for b in loader]).tolist() == [0, 2, 3]
    assert loader.num_skipped == 1 and loader.skipped[0][0] == "a/001.png"


def test_resize_center_crop_matches_torchvision_rule() -> None:
    img = _gradient(300, 200)
    t = ResizeCenterCrop(224, crop_pct=0.875, interpolation="bicubic")
    assert t.resized_size(300, 200) == (384, 256)  # shorter side floor(224 / 0.875) = 256
    out = t(img)
    ref = img.resize((384, 256), Image.Resampling.BICUBIC).crop((80, 16, 304, 240))
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
    assert torch.equal(out, torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1))
    tall = ResizeCenterCrop(224, crop_pct=0.9)
    assert tall.resized_size(200, 301) == (248, 373)  # int(248 * 301 / 200) = 373
    # non-square target: both sides set, as timm does
    assert ResizeCenterCrop((224, 160), crop_pct=0.875).resized_size(500, 100) == (182, 256)


def test_eval_transforms_from_pretrained_cfg_and_overrides() -> None:
    cfg = PretrainedCfg(
        input_size=(3, 64, 64), crop_pct=0.5, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5)
    )
    load, norm = eval_transforms(cfg)
    assert load.output_size == (64, 64) and load.crop_pct == 0.5 and load.interpolation == "bicubic"
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(norm(x)[0, :, 0, 0], torch.tensor([1.0, 2.0, 1.0]))
    assert torch.allclose(norm(x.float() / 255), norm(x))
    load2, _ = eval_transforms(cfg, img_size=32, crop_pct=1.0, interpolation="bilinear")
    assert (load2.output_size, load2.crop_pct, load2.interpolation) == ((32, 32), 1.0, "bilinear")


def test_squash_resize_keeps_whole_image() -> None:
    img = Image.new("RGB", (40, 10), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 4, 10))  # a red stripe at the far left survives the squash
    out = SquashResize(16, draft=False)(img)
    assert out.shape == (3, 16, 16) and out[0, :, 0].min() > 100


def test_normalize_module_on_float_and_uint8() -> None:
    norm = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    ref = (x.float() / 255 - norm.mean) / norm.std
    assert torch.allclose(norm(x), ref) and norm(x).dtype == torch.float32


# --------------------------------------------------------------------------- ImageFolder / list files


def test_image_folder_classes_ids_and_items(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"dog": 2, "cat": 3})
    _png(root / "cat" / "sub" / "deep.PNG", _gradient(seed=99))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    ds = open_dataset(root, transform=SquashResize(8))
    assert isinstance(ds, ImageFolder)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    assert [ds.sample_id(i) for i in range(len(ds))] == [
        "cat/000.png", "cat/001.png", "cat/002.png", "cat/sub/deep.PNG", "dog/000.png", "dog/001.png",
    ]  # fmt: skip
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    img, label, idx = ds[4]
    assert img.shape == (3, 8, 8) and img.dtype == torch.uint8 and (label, idx) == (1, 4)
    assert ds.load_size == (8, 8)
    with pytest.raises(IndexError):
        ds[6]


def test_image_folder_split_resolution(tmp_path: Path) -> None:
    _folder(tmp_path / "d" / "train", {"a": 1, "b": 1})
    _folder(tmp_path / "d" / "test", {"a": 1, "b": 2})
    assert len(open_dataset(tmp_path / "d", "train")) == 2
    assert len(open_dataset(tmp_path / "d", "test")) == 3
    assert open_dataset(tmp_path / "d", "val").root.name == "test"  # CIFAR-style trees: val -> test
    _folder(tmp_path / "e" / "train", {"a": 1})
    with pytest.raises(FileNotFoundError, match="none for split 'val'"):
        open_dataset(tmp_path / "e", "val")
    with pytest.raises(ValueError, match="split must be one of"):
        open_dataset(tmp_path / "d", "holdout")


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="class folder without images"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        open_dataset(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_dataset(tmp_path / "missing")


def test_list_file(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", {"x": 3})
    lst = tmp_path / "val.txt"
    lst.write_text("# ImageNet-style\nimgs/x/000.png 2\n\nimgs/x/002.png 0\n")
    ds = open_dataset(lst)
    assert isinstance(ds, ListFileDataset)
    assert ds.classes == ["0", "1", "2"] and ds.labels.tolist() == [2, 0]
    assert ds.sample_id(1) == "imgs/x/002.png" and ds[0][0].shape[0] == 3
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    assert open_dataset(lst).classes == ["cat", "dog", "bird"]
    other = tmp_path / "lists"
    other.mkdir()
    (other / "v.txt").write_text("x/001.png 1\n")
    ds2 = open_dataset(f"{tmp_path / 'imgs'}::{other / 'v.txt'}")
    assert ds2.path(0) == tmp_path / "imgs" / "x" / "001.png" and ds2.label(0) == 1
    (other / "bad.txt").write_text("x/000.png 1\nx/001.png dog\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        open_dataset(other / "bad.txt")
    (other / "neg.txt").write_text("x/000.png -1\n")
    with pytest.raises(ValueError, match="negative label"):
        open_dataset(other / "neg.txt")


def test_image_folder_self_link_does_not_multiply_a_class(tmp_path: Path, caplog) -> None:
    root = _folder(tmp_path / "d", {"a": 2, "b": 1})
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="tokenmix.data.datasets"):
        ds = open_dataset(root)
    assert [ds.sample_id(i) for i in range(len(ds))] == ["a/000.png", "a/001.png", "b/000.png"]
    assert "a/again: symlink loop" in caplog.text


def test_image_folder_two_link_loops_return(tmp_path: Path, caplog) -> None:
    # two links back up double the paths at every level: os.walk(followlinks=True) never returns
    root = _folder(tmp_path / "d", {"a": 1, "b": 1})
    _png(root / "a" / "sub" / "x.png", _gradient(seed=5))
    (root / "a" / "sub" / "up").symlink_to("..", target_is_directory=True)
    (root / "a" / "sub" / "top").symlink_to("../..", target_is_directory=True)
    (root / "b" / "alias").symlink_to(root / "a" / "sub", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="tokenmix.data.datasets"):
        ds = open_dataset(root)
    assert [ds.sample_id(i) for i in range(len(ds))] == [
        "a/000.png", "a/sub/x.png", "b/000.png",
    ]  # fmt: skip
    assert "a/sub/up: symlink loop" in caplog.text and "a/sub/top: symlink loop" in caplog.text
    assert "b/alias: leads to" in caplog.text and "already listed" in caplog.text


def test_image_folder_links_to_outside_folders_still_followed(tmp_path: Path) -> None:
    _folder(tmp_path / "elsewhere", {"more": 2})
    root = _folder(tmp_path / "d", {"a": 1, "b": 1})
    (root / "b" / "ext").symlink_to(tmp_path / "elsewhere" / "more", target_is_directory=True)
    ds = open_dataset(root)
    assert ds.labels.tolist() == [0, 1, 1, 1] and ds.sample_id(3) == "b/ext/001.png"
    assert ds[3][0].shape[0] == 3


def test_list_file_label_bound_names_file_and_line(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", {"x": 2})
    lst = tmp_path / "train.txt"
    lst.write_text("imgs/x/000.png 1\n# note\nimgs/x/001.png 999999999\n")
    with pytest.raises(ValueError, match=r"train.txt:3: label 999999999 is not below 100,000"):
        open_dataset(lst)  # before: built a billion class names (22 GB)
    lst.write_text(f"imgs/x/000.png {MAX_UNNAMED_CLASSES - 1}\n")
    assert open_dataset(lst).num_classes == MAX_UNNAMED_CLASSES  # the bound itself is allowed
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    lst.write_text("imgs/x/000.png 1\nimgs/x/001.png 2\n")
    with pytest.raises(ValueError, match=r"train.txt:2: label 2, but .*classes.txt names only 2"):
        open_dataset(lst)


@pytest.mark.parametrize("line", ["../outside.png 0", "imgs/../../outside.png 0", "/abs.png 0"])
def test_list_file_refuses_paths_outside_root(tmp_path: Path, line: str) -> None:
    _png(tmp_path / "outside.png", _gradient(seed=7))
    _png(tmp_path / "abs.png", _gradient(seed=8))
    line = line.replace("/abs.png", str(tmp_path / "abs.png"))
    root = tmp_path / "root"
    _folder(root / "imgs", {"x": 1})
    lst = root / "val.txt"
    lst.write_text(f"imgs/x/000.png 0\nimgs/../imgs/x/000.png 1\n{line}\n")
    with pytest.raises(ValueError, match=r"val.txt:3: path .* is outside the dataset root"):
        open_dataset(lst)
    with pytest.raises(ValueError, match=r"val.txt:3: path"):
        open_dataset(f"{root}::{lst}")
    ds = open_dataset(lst, allow_outside_root=True, transform=SquashResize(8))
    assert len(ds) == 3 and ds[2][0].shape == (3, 8, 8)


def test_single_class_training_set_warns(tmp_path: Path, caplog) -> None:
    root = _folder(tmp_path / "one", {"only": 2})
    with caplog.at_level(logging.WARNING, logger="tokenmix.data.datasets"):
        open_dataset(root, "val")
    assert caplog.text == ""  # an evaluation split may hold one class
    with caplog.at_level(logging.WARNING, logger="tokenmix.data.datasets"):
        open_dataset(root, "train")
    assert f"{root}: the training split has only 1 class (only)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmix.data.datasets"):
        open_dataset(_folder(tmp_path / "two", {"a": 1, "b": 1}))
    assert caplog.text == ""


# --------------------------------------------------------------------------- CIFAR-10


CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _cifar_batch(n: int, offset: int, protocol: int) -> bytes:
    images = (np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) + offset) % 251
    labels = [(offset + k) % 10 for k in range(n)]
    batch = {
        b"batch_label": b"synthetic",
        b"labels": labels,
        b"data": images.astype(np.uint8),
        b"filenames": [f"img_{offset + k}.png".encode() for k in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol)


def _cifar_files(protocol: int = 2, per_batch: int = 3) -> dict[str, bytes]:
    files = {f"data_batch_{k}": _cifar_batch(per_batch, 100 * k, protocol) for k in range(1, 6)}
    files["test_batch"] = _cifar_batch(per_batch + 1, 7, protocol)
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    files["batches.meta"] = pickle.dumps(meta, protocol=protocol)
    return files


def _cifar_archive(path: Path, protocol: int = 2) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in _cifar_files(protocol).items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_archive_and_folder(tmp_path: Path, protocol: int) -> None:
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz", protocol)
    train = open_dataset(archive, "train")
    test = open_dataset(archive, "test")
    assert isinstance(train, ArrayDataset) and train.classes == CIFAR_CLASSES
    assert len(train) == 15 and len(test) == 4 and len(open_dataset(archive, "val")) == 4
    assert (
        train.sample_id(14) == "cifar10/train/00014" and test.sample_id(0) == "cifar10/test/00000"
    )
    assert train.labels.tolist()[:4] == [0, 1, 2, 0]  # batch 1 (offset 100): (100 + k) % 10
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    raw = ((np.arange(3072) + 100) % 251).astype(np.uint8)
    arr = np.asarray(train.load(0))
    assert arr.shape == (32, 32, 3)
    assert np.array_equal(arr[..., 0].ravel(), raw[:1024]) and np.array_equal(
        arr[..., 2].ravel(), raw[2048:]
    )
    img, label, idx = train[3]
    assert img.shape == (3, 32, 32) and (label, idx) == (0, 3)  # first of batch 2
    folder = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    for spec in (folder, folder / "cifar-10-batches-py"):
        ds = open_dataset(spec, "train")
        assert len(ds) == 15 and np.array_equal(np.asarray(ds.load(0)), arr)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in _cifar_files().items():
        (folder / name).write_bytes(data)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Boom()}, protocol=2))
    with pytest.raises(
        pickle.UnpicklingError, match=r"data_batch_3: refusing global (__builtin__|builtins).exec"
    ):
        open_cifar10(tmp_path, "train")
    (folder / "data_batch_3").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' must be a uint8 \[N, 3072\]"):
        open_cifar10(tmp_path, "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        open_cifar10(tmp_path, "train")


# --------------------------------------------------------------------------- download


class _Server:
    """A local HTTP server on 127.0.0.1 serving one folder."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_download_verifies_and_renames_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = _cifar_archive(served / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    with _Server(served) as server:
        url = f"{server.url}/cifar-10-python.tar.gz"
        # the official checksum does not match our archive: nothing may be left behind
        with pytest.raises(DownloadError, match="md5 mismatch"):
            download_cifar10(tmp_path / "a", url=url, progress=False)
        assert list((tmp_path / "a").iterdir()) == []
        got = download_cifar10(tmp_path / "a", url=url, md5=md5, progress=False)
        assert (
            got == tmp_path / "a" / "cifar-10-python.tar.gz"
            and got.read_bytes() == archive.read_bytes()
        )
        assert download_url(url, tmp_path / "b.tgz", sha256=sha, progress=False).is_file()
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download_url(url, tmp_path / "c.tgz", sha256="0" * 64, progress=False)
        with pytest.raises(DownloadError, match="404"):
            download_url(f"{server.url}/missing.tar.gz", tmp_path / "d.tgz", progress=False)
        assert not (tmp_path / "c.tgz").exists() and not (tmp_path / "d.tgz.part").exists()
        # open_dataset(download=True) through the environment variable and the module checksum
        monkeypatch.setenv("TOKENMIX_CIFAR10_URL", url)
        monkeypatch.setattr(download_mod, "CIFAR10_MD5", md5)
        ds = open_dataset(tmp_path / "fresh", "test", download=True)
        assert len(ds) == 4 and (tmp_path / "fresh" / "cifar-10-python.tar.gz").is_file()


# --------------------------------------------------------------------------- digits


def test_digits_embedded_default() -> None:
    train, val = open_dataset("digits", "train"), open_dataset("digits", "val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.classes == [str(k) for k in range(10)]
    ids = {train.sample_id(i) for i in range(len(train))}
    assert not ids & {val.sample_id(i) for i in range(len(val))}
    assert val.sample_id(1) == "digits/00005"
    img = np.asarray(train.load(0))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 2]).all() and img.max() > 200 and img.min() < 30
    # real digits: class mean images differ clearly, and the set is deterministic
    x = torch.stack([train[i][0] for i in range(len(train))]).float()
    means = torch.stack([x[torch.from_numpy(train.labels) == c].mean(0) for c in range(10)])
    assert (
        torch.cdist(means.flatten(1), means.flatten(1)).topk(2, largest=False).values[:, 1].min()
        > 100
    )
    assert torch.equal(open_dataset("digits", "train")[7][0], train[7][0])


# --------------------------------------------------------------------------- bad-image policy


def _with_bad_files(root: Path) -> Path:
    _folder(root, {"a": 4, "b": 4}, size=(8, 8))
    (root / "a" / "001.png").write_bytes(b"")
    (root / "b" / "002.png").write_bytes(b"<html>not an image</html>")
    return root


def test_bad_image_policy_error_names_file(tmp_path: Path) -> None:
    ds = open_dataset(_with_bad_files(tmp_path / "d"), transform=SquashResize(8))
    with pytest.raises(BadImageError, match=r"a/001.png"):
        ds[1]
    loader = build_loader(ds, batch_size=8, train=False, num_workers=0)
    loader.set_epoch(0)
    with pytest.raises(BadImageError, match=r"a/001.png"):
        list(loader)


def test_bad_image_policy_error_from_worker_process(tmp_path: Path) -> None:
    ds = open_dataset(_with_bad_files(tmp_path / "d"), transform=SquashResize(8))
    loader = build_loader(ds, batch_size=4, train=False, num_workers=1, persistent_workers=False)
    loader.set_epoch(0)
    with pytest.raises(BadImageError, match=r"a/001.png") as excinfo:
        list(loader)
    assert "worker process" in str(excinfo.value)
    del excinfo  # the traceback holds the worker pool; free it here, not in a later test
    gc.collect()


def test_bad_image_skip_train_substitutes_and_counts(tmp_path: Path, caplog) -> None:
    ds = open_dataset(_with_bad_files(tmp_path / "d"), bad_images="skip", transform=SquashResize(8))
    assert isinstance(ds[1], SkippedSample) and ds[1].sample_id == "a/001.png"
    loader = build_loader(ds, batch_size=4, train=True, num_workers=0, seed=3)
    loader.set_epoch(0)
    with caplog.at_level(logging.WARNING, logger="tokenmix.data.loader"):
        batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4]  # batch size kept
    seen = torch.cat([b[2] for b in batches]).tolist()
    assert 1 not in seen and 6 not in seen  # the unreadable indices never come back
    assert 2 in seen and 7 in seen  # ... their successors do, with their own index
    for _, labels, indices in batches:
        assert labels.tolist() == [ds.label(i) for i in indices.tolist()]
    assert loader.num_skipped == 2
    assert {s for s, _ in loader.skipped} == {"a/001.png", "b/002.png"}
    assert "a/001.png" in caplog.text and "b/002.png" in caplog.text


def test_bad_image_skip_eval_drops(tmp_path: Path) -> None:
    ds = open_dataset(_with_bad_files(tmp_path / "d"), bad_images="skip", transform=SquashResize(8))
    loader = build_loader(ds, batch_size=3, train=False, num_workers=0)
    loader.set_epoch(0)
    indices = torch.cat([b[2] for b in loader]).tolist()
    assert indices == [0, 2, 3, 4, 5, 7] and loader.num_skipped == 2


def test_bad_images_policy_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad_images must be one of"):
        open_dataset("digits", bad_images="ignore")


# --------------------------------------------------------------------------- sampler / loader


def test_sampler_deterministic_split_and_padding() -> None:
    a = ResumableSampler(10, seed=5, rank=0, world_size=3)
    b = ResumableSampler(10, seed=5, rank=0, world_size=3)
    assert list(a) == list(b) and len(a) == 4
    a.set_epoch(1)
    assert list(a) != list(b)
    ranks = [ResumableSampler(10, seed=5, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    got = [list(s) for s in ranks]
    flat = [i for g in got for i in g]
    assert all(len(g) == 4 for g in got) and set(flat) == set(range(10))  # 10 + 2 padded repeats
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5 + 2)).tolist()
    assert sorted(flat) == sorted([*order, *order[:2]])  # DistributedSampler's rule
    evals = [
        list(ResumableSampler(10, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)
    ]
    assert sorted(i for e in evals for i in e) == list(range(10))  # every image exactly once


def test_loader_resume_mid_epoch_repeats_the_same_batches() -> None:
    ds = open_dataset("digits", "val")
    full = build_loader(ds, batch_size=32, train=True, num_workers=0, seed=7)
    full.set_epoch(3)
    assert len(full) == 360 // 32
    reference = [idx for _, _, idx in full]
    first = build_loader(ds, batch_size=32, train=True, num_workers=0, seed=7)
    first.set_epoch(3)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (3, 4)
    resumed = build_loader(ds, batch_size=32, train=True, num_workers=0, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    assert len(resumed) == len(reference) - 4
    rest = [idx for _, _, idx in resumed]
    assert all(torch.equal(x, y) for x, y in zip(rest, reference[4:], strict=True))
    resumed.set_epoch(4)  # the next epoch starts at its beginning
    assert len(resumed) == len(reference)
    with pytest.raises(ValueError, match="batch_size was 32, now 16"):
        build_loader(ds, batch_size=16, train=True, num_workers=0, seed=7).load_state_dict(state)


def test_loader_with_external_batch_sampler() -> None:
    ds = open_dataset("digits", "val")
    loader = build_loader(ds, train=True, batch_sampler=[[0, 1, 2], [5, 4, 3]], num_workers=0)
    assert [idx.tolist() for _, _, idx in loader] == [[0, 1, 2], [5, 4, 3]]
    with pytest.raises(RuntimeError, match="batch_sampler"):
        loader.set_epoch(1)


def test_loader_two_workers_same_batches_as_main_process() -> None:
    ds = open_dataset("digits", "val")
    batches = {}
    for workers in (0, 2):
        loader = build_loader(
            ds, batch_size=64, train=True, num_workers=workers, seed=1, persistent_workers=False
        )
        loader.set_epoch(0)
        batches[workers] = list(loader)
    assert len(batches[0]) == 5
    for (x0, y0, i0), (x2, y2, i2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(i0, i2)


# --------------------------------------------------------------------------- shared CIFAR-10 JPEGs


def test_cifar10_jpeg_folder() -> None:
    root = require(CIFAR10)
    train = open_dataset(root, "train", transform=SquashResize(32))
    val = open_dataset(root, "val")
    assert (len(train), len(val)) == (50000, 10000)
    assert train.classes == CIFAR_CLASSES == val.classes
    counts = np.bincount(train.labels, minlength=10)
    assert (counts == 5000).all()
    img = train.load(12345)
    assert img.size == (32, 32) and img.mode == "RGB"
    loader = build_loader(train, batch_size=16, train=True, num_workers=0)
    loader.set_epoch(0)
    images, labels, indices = next(iter(loader))
    assert images.shape == (16, 3, 32, 32) and images.float().std() > 20
    assert labels.tolist() == [train.label(i) for i in indices.tolist()]
    load, _ = eval_transforms(PretrainedCfg(input_size=(3, 64, 64), crop_pct=0.875))
    assert load(val.load(0)).shape == (3, 64, 64)
    assert math.isclose(load.resized_size(32, 32)[0], 73)
