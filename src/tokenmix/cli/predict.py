"""Top-k labels for images, and a grid of the predictions (against the truth when known).

IMAGES are files or folders (searched recursively). An image inside a folder named after one of
the classes (the ImageFolder layout, e.g. test/cat/001.jpg) counts as labelled with that
class; the grid then marks each prediction right (green) or wrong (red). Images are decoded
with Pillow and given the model's eval transform. File and class names that are not UTF-8 are
printed, drawn and written to JSON with their undecodable bytes escaped (``cl\\xe9ss``).

Examples:
  tokenmix predict --checkpoint runs/digits_demo some/digit.png
  tokenmix predict --checkpoint runs/cifar10 /data/cifar10/test/cat --top-k 3 --out cats.png
  tokenmix predict --model dfformer_s18 photo.jpg            # published ImageNet weights
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "top-k labels per image and a prediction grid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGES", help="image files or folders")
    p.add_argument("--model", help="architecture (needed for foreign checkpoints)")
    p.add_argument("--checkpoint", help="run folder, step checkpoint or weights file")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--classes", type=Path, help="text file naming the outputs, one per line")
    p.add_argument(
        "--out", type=Path, default=Path("predictions.png"), help="prediction grid image"
    )
    p.add_argument("--max-grid", type=int, default=64, help="images drawn in the grid at most")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    import torch

    from tokenmix.data.datasets import IMG_EXTENSIONS
    from tokenmix.data.decode import decode_image
    from tokenmix.data.transforms import eval_transforms
    from tokenmix.engine.distributed import resolve_device
    from tokenmix.engine.predict import load_for_inference, predict_topk
    from tokenmix.viz.plots import plot_prediction_grid
    from tokenmix.viz.text import display_name

    files = _collect(args.images, IMG_EXTENSIONS)
    device = resolve_device(args.device)
    loaded = load_for_inference(args.checkpoint, args.model, device=device)
    classes = loaded.classes
    if args.classes is not None:
        classes = [ln.strip() for ln in args.classes.read_text().splitlines() if ln.strip()]
    num_outputs = loaded.model.num_classes
    if classes is None:
        classes = [str(i) for i in range(num_outputs)]
    if len(classes) != num_outputs:
        raise ValueError(f"{len(classes)} class names for a model with {num_outputs} outputs")
    load, normalize = eval_transforms(loaded.model.pretrained_cfg)
    images = torch.stack([load(decode_image(f, name=str(f))) for f in files])
    preds = predict_topk(
        loaded.model, images, prepare=normalize.to(device), classes=classes, k=args.top_k
    )
    known = set(classes)
    truths = [f.parent.name if f.parent.name in known else None for f in files]
    for f, pred, truth in zip(files, preds, truths, strict=True):
        # names are shown through display_name: a file name need not be UTF-8, and a lone
        # surrogate would stop a UTF-8 terminal and make the JSON unreadable to strict parsers
        shown = [(display_name(c), p) for c, p in pred]
        if args.json:
            truth_shown = None if truth is None else display_name(truth)
            print(json.dumps({"image": display_name(str(f)), "top": shown, "truth": truth_shown}))
        else:
            mark = (
                ""
                if truth is None
                else ("  [right]" if pred[0][0] == truth else f"  [wrong: {display_name(truth)}]")
            )
            print(f"{display_name(str(f))}: " + ", ".join(f"{c} {p:.1%}" for c, p in shown) + mark)
    n = min(len(files), args.max_grid)
    grid = plot_prediction_grid(
        images[:n], preds[:n], args.out, truths=truths[:n], names=[f.name for f in files[:n]]
    )
    labelled = [t for t in truths if t is not None]
    if labelled:
        right = sum(p[0][0] == t for p, t in zip(preds, truths, strict=True) if t is not None)
        print(f"{right}/{len(labelled)} labelled images right ({100 * right / len(labelled):.1f}%)")
    print(f"wrote {grid}")
    return 0


def _collect(paths: list[Path], extensions: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(extensions)}) in {', '.join(map(str, paths))}"
        )
    return files
