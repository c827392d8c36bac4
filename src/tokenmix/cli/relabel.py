"""Make token labels: run a teacher densely over a dataset and store its top-k scores per location.

Any registered classifier can be the teacher, with its official weights (default) or a
checkpoint of yours (--checkpoint: .pth, .pdparams or .safetensors, or a tokenmix run folder or
step checkpoint, which names its architecture, resolution and classes: then --teacher is not
needed). LV-ViT teachers give one
score vector per patch token (their aux_head); MetaFormer teachers apply their head to every
location of the final stage map. Each image is squashed whole to the teacher's input size, so
the map covers the full image and training crops apply to it directly.

The labels go to ONE memory-mapped file (OUT/labels.npy) with an index from sample id to row
(OUT/index.json). Work is committed every --chunk-size images; after an interruption, run the
same command again and it continues after the last finished chunk.

Under torchrun each process labels its share of the chunks into the same OUT (on a file system
all processes share, when they run on several machines); the file equals a one-process run's,
and a run interrupted with one number of processes can be finished with another. torchrun
--max-restarts N resumes by itself; on torch versions whose restarted workers read the crashed
attempt's addresses from the shared rendezvous store, set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
(pytorch/pytorch#135712).

Examples:
  tokenmix relabel --teacher lvvit_m.tl_in1k --data /data/imagenet --out labels/imagenet_lvvit_m
  torchrun --nproc-per-node 8 -m tokenmix.cli.main relabel --teacher lvvit_m.tl_in1k \\
      --data /data/imagenet --out labels/imagenet_lvvit_m
  tokenmix relabel --teacher caformer_s18 --checkpoint run/best.pth --num-classes 10 \\
      --data cifar-10-python.tar.gz --out labels/cifar --grid 14 --topk 5 --img-size 224
  tokenmix relabel --checkpoint runs/digits_demo --data digits --out labels/digits
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "make token labels with a teacher (dense top-k scores, resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        "--model",
        dest="teacher",
        help="model name, e.g. lvvit_m or lvvit_s.tl_in1k (read from a tokenmix --checkpoint)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="teacher weights: run folder, step checkpoint or weights file (default: official)",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes of a foreign --checkpoint"
    )
    p.add_argument(
        "--data", required=True, help="dataset spec (folder, CIFAR-10, list file, digits)"
    )
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--out", required=True, type=Path, help="label directory to create or resume")
    p.add_argument("--topk", type=int, default=5, help="classes kept per location (default: 5)")
    p.add_argument(
        "--grid",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="label grid, N or H W (default: the teacher's own grid)",
    )
    p.add_argument(
        "--img-size", type=int, default=None, help="teacher input size (default: its cfg)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048, help="images per commit (default: 2048)")
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: CPU cores, <= 8)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cuda, cpu, ... (default: cuda if available; under torchrun auto, cuda or cpu, "
        "each process driving cuda:LOCAL_RANK)",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="bfloat16 autocast for the teacher where the device has bf16 units (else a "
        "warning and float32)",
    )


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from tokenmix.data.datasets import open_dataset
    from tokenmix.data.loader import default_num_workers
    from tokenmix.engine.distributed import init_distributed, shutdown
    from tokenmix.engine.predict import load_for_inference
    from tokenmix.engine.relabel import relabel_dataset

    if args.checkpoint is None and args.teacher is None:
        raise ValueError("give --teacher NAME (official weights) or --checkpoint RUN_OR_WEIGHTS")
    if args.checkpoint is not None and not args.checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file or folder")
    if args.checkpoint is None and args.num_classes is not None:
        raise ValueError("--num-classes is for --checkpoint; official weights keep their classes")
    if args.grid is not None and len(args.grid) not in (1, 2):
        raise ValueError(f"--grid takes N or H W, got {args.grid}")
    grid = None if args.grid is None else (args.grid[0], args.grid[-1])
    is_main = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: join its process group
        if args.device not in ("auto", "cuda", "cpu"):
            raise ValueError(
                f"--device {args.device}: under torchrun pass auto, cuda or cpu (each process "
                "drives cuda:LOCAL_RANK)"
            )
        info = init_distributed(args.device)
        device, is_main = info.device, info.is_main
    else:
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"

    dataset = open_dataset(args.data, args.split)
    loaded = load_for_inference(
        args.checkpoint, args.teacher, num_classes=args.num_classes, img_size=args.img_size
    )
    teacher = loaded.model
    meta = {
        "teacher": loaded.name,
        "checkpoint": None if args.checkpoint is None else str(Path(loaded.source).resolve()),
        "dataset": args.data,
        "split": args.split,
    }
    store = relabel_dataset(
        teacher,
        dataset,
        args.out,
        topk=args.topk,
        grid=grid,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        device=device,
        num_workers=default_num_workers() if args.workers is None else args.workers,
        amp=args.amp,
        meta=meta,
    )
    # on an error the process exits without this, and torchrun stops the other ranks
    shutdown()
    if is_main:
        print(
            f"{args.out}: {len(store)} samples, top-{store.topk} of {store.num_classes} classes "
            f"on a {store.grid[0]}x{store.grid[1]} grid"
        )
    return 0
