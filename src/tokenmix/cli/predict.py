"""Top-k labels for images, and a grid of the predictions (against the truth when known).

IMAGES are files or folders (searched recursively). An image inside a folder named after one of
the classes (the ImageFolder layout, e.g. test/cat/001.jpg) counts as labelled with that
class; the grid then marks each prediction right (green) or wrong (red). Images are decoded
with Pillow and given the model's eval transform (the training run's, for a tokenmix
checkpoint). File and class names that are not UTF-8 are printed, drawn and written to JSON
with their undecodable bytes escaped (``cl\\xe9ss``).

--json prints one JSON object per image on stdout and nothing else (the summary and the grid's
path go to stderr), so the output pipes into `jq` or a .jsonl file. --bad-images skip leaves
out images that do not decode (each named in a warning on stderr) instead of stopping.

Examples:
  tokenmix predict --checkpoint runs/digits_demo some/digit.png
  tokenmix predict --checkpoint runs/cifar10 /data/cifar10/test/cat --top-k 3 --out cats.png
  tokenmix predict --model dfformer_s18 photo.jpg            # published ImageNet weights
  tokenmix predict --checkpoint runs/digits_demo scans/ --json --bad-images skip > preds.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("tokenmix")

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
    p.add_argument(
        "--json", action="store_true", help="stdout: one JSON object per image, nothing else"
    )
    p.add_argument(
        "--bad-images",
        choices=("error", "skip"),
        default="error",
        help="an image that does not decode: stop naming it, or skip it with a warning",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from tokenmix.data.datasets import IMG_EXTENSIONS
    from tokenmix.data.decode import BadImageError, decode_image
    from tokenmix.engine.distributed import resolve_device
    from tokenmix.engine.predict import eval_preprocessing, load_for_inference, predict_topk
    from tokenmix.viz.plots import plot_prediction_grid
    from tokenmix.viz.text import display_name

    # with --json, stdout carries the JSON lines only; everything a person reads goes to stderr
    say = sys.stderr if args.json else sys.stdout
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
        raise ValueError(
            f"--classes: {len(classes)} class names for a model with {num_outputs} outputs"
        )
    load, normalize = eval_preprocessing(loaded).transforms()
    decoded, kept = [], []
    for f in files:
        try:
            decoded.append(load(decode_image(f, name=display_name(str(f)))))
        except BadImageError as e:
            if args.bad_images == "error":
                raise ValueError(f"{e} (--bad-images skip leaves such images out)") from e
            log.warning("skipping %s", e)
            continue
        kept.append(f)
    skipped = len(files) - len(kept)
    if not kept:
        raise ValueError(f"none of the {len(files)} images could be read")
    files, images = kept, torch.stack(decoded)
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
        print(
            f"{right}/{len(labelled)} labelled images right ({100 * right / len(labelled):.1f}%)",
            file=say,
        )
    if skipped:
        print(f"skipped {skipped} unreadable image{'s' * (skipped > 1)}", file=say)
    print(f"wrote {grid}", file=say)
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
