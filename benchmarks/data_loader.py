"""Loader and augmentation throughput on an image folder (default: the shared CIFAR-10 JPEGs).

    python benchmarks/data_loader.py [--data ../shared/data/cifar10] [--workers 0 2]
        [--load-size 32] [--batch-size 256] [--images 10240] [--augment]

Prints images per second for each worker count: decode + resize in the loader workers, the
batches collated (uint8). The first batch is excluded (worker start-up). Run it twice: the
first pass over a cold page cache measures the disk, not the decoder. ``--augment`` also times
the device-side training augmentation (full ImageNet recipe) on the batches, on CUDA when
available.
"""

from __future__ import annotations

import argparse
import time

import torch

from tokenmix.data.augment import TrainAugment, imagenet_recipe
from tokenmix.data.datasets import open_dataset
from tokenmix.data.loader import build_loader
from tokenmix.data.transforms import SquashResize


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--load-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=10240)
    p.add_argument("--augment", action="store_true")
    args = p.parse_args()

    dataset = open_dataset(args.data, "train", transform=SquashResize(args.load_size))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    augment = TrainAugment(
        imagenet_recipe(),
        smoothing=0.1,
        img_size=args.load_size,
        num_classes=dataset.num_classes,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    for workers in args.workers:
        loader = build_loader(
            dataset,
            batch_size=args.batch_size,
            train=True,
            num_workers=workers,
            persistent_workers=False,
        )
        loader.set_epoch(0)
        batches = iter(loader)
        held = next(batches)
        count = 0
        start = time.perf_counter()
        for images, _, _ in batches:
            count += len(images)
            if count >= args.images:
                break
        seconds = time.perf_counter() - start
        print(f"workers={workers} load_size={args.load_size}: {count / seconds:,.0f} img/s loading")
    if args.augment:  # on one held batch, so loading and augmenting are timed apart
        images, labels = held[0].to(device), held[1].to(device)
        augment(images, labels)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, count = time.perf_counter(), 0
        while count < args.images:
            augment(images, labels)
            count += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"augment (ImageNet recipe) on {device.type}: {count / seconds:,.0f} img/s")


if __name__ == "__main__":
    main()
