"""``data.cache``: a dataset decoded once gives what decoding every time gives, skips the same
unreadable files, refuses to change its transform, and refuses to outgrow the memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenmix.config import load_config
from tokenmix.data import cache as cache_mod
from tokenmix.data.cache import CachedDataset
from tokenmix.data.datasets import SkippedSample, open_dataset
from tokenmix.data.transforms import SquashResize
from tokenmix.engine.metrics import read_metrics
from tokenmix.engine.train import fit

from .test_engine import TINY


def _folder(root: Path, bad: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (14, 11, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / cls / f"{i}.png")
    if bad:
        (root / "train" / "dog" / "9_broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_items_equal_decoded_items(tmp_path: Path, workers: int) -> None:
    data = open_dataset(str(_folder(tmp_path)), "train")
    data.transform = SquashResize(8)
    cached = CachedDataset(data, num_workers=workers, progress=False)
    assert len(cached) == len(data) and cached.load_size == (8, 8)
    for i in range(len(data)):
        image, label, index = cached[i]
        want_image, want_label, want_index = data[i]
        assert torch.equal(image, want_image) and (label, index) == (want_label, want_index)
    assert cached.sample_id(3) == data.sample_id(3)
    assert np.array_equal(cached.labels, data.labels)


def test_unreadable_images_stay_skipped(tmp_path: Path) -> None:
    data = open_dataset(str(_folder(tmp_path, bad=True)), "train", bad_images="skip")
    data.transform = SquashResize(8)
    cached = CachedDataset(data, progress=False)
    bad = [i for i in range(len(data)) if isinstance(cached[i], SkippedSample)]
    assert [cached.sample_id(i) for i in bad] == [s for s in map(data.sample_id, bad)]
    assert len(bad) == 1 and "9_broken" in cached.sample_id(bad[0])


def test_transform_is_fixed_and_memory_is_checked(tmp_path: Path, monkeypatch) -> None:
    data = open_dataset(str(_folder(tmp_path)), "train")
    data.transform = SquashResize(8)
    cached = CachedDataset(data, progress=False)
    with pytest.raises(AttributeError, match="set the transform before caching"):
        cached.transform = SquashResize(16)
    monkeypatch.setattr(cache_mod, "available_memory_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match=r"10 images at 8x8.*data.cache=false"):
        CachedDataset(data, name="train", progress=False)


def test_cached_training_run_equals_an_uncached_one(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    losses = []
    for cache in ("false", "true"):
        run = tmp_path / f"cache_{cache}"
        fit(load_config(overrides=[*TINY, f"data.cache={cache}", "train.max_steps=4"]), run)
        losses.append([r["loss"] for r in read_metrics(run) if r["kind"] in ("train", "eval")])
    assert losses[0] == losses[1]
