"""Token labeling: loss, MixToken targets, label-map alignment, relabel store and resume.

Relabeling with several processes (torchrun) is tested in ``test_relabel_sharded.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tokenmix
from tokenmix.cli.main import main as cli_main
from tokenmix.data.crops import crop_resize, sample_rrc_boxes
from tokenmix.data.datasets import open_dataset
from tokenmix.data.token_labels import TokenLabelStore, label_maps, token_label_targets
from tokenmix.engine.losses import TokenLabelingLoss, mix_token_target, one_hot_smooth
from tokenmix.engine.relabel import dense_logits, relabel_dataset
from tokenmix.models.lvvit import MixBox


# --- loss -------------------------------------------------------------------------------------
def _ce(logits: list[float], target: list[float]) -> float:
    """Cross entropy written out: -sum_c t_c * (z_c - log sum_j exp z_j)."""
    lse = math.log(sum(math.exp(z) for z in logits))
    return -sum(t * (z - lse) for z, t in zip(logits, target, strict=True))


def test_loss_hand_checked_on_2x2_tokens() -> None:
    """B = 2 images of 2x2 tokens, 2 classes; MixToken box = the top-left token (lam 3/4)."""
    cls = [[2.0, 0.0], [0.0, 0.0]]
    aux = [
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]],
        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
    ]
    dense = [
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
        [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],
    ]
    labels = [0, 1]
    box = MixBox(0, 0, 1, 1)

    # by hand: lam = 1 - 1/4; sample b's class target = lam * own + (1 - lam) * sample (1-b)'s
    lam = 0.75
    own = [[1.0, 0.0], [0.0, 1.0]]
    mixed = [[lam * own[b][c] + (1 - lam) * own[1 - b][c] for c in range(2)] for b in range(2)]
    assert mixed == [[0.75, 0.25], [0.25, 0.75]]
    cls_term = (_ce(cls[0], mixed[0]) + _ce(cls[1], mixed[1])) / 2
    dense_term = sum(_ce(aux[b][i], dense[b][i]) for b in range(2) for i in range(4)) / 8
    expected = 1.0 * cls_term + 0.5 * dense_term
    assert expected == pytest.approx(0.986237, abs=1e-6)  # also worked out on paper

    loss = TokenLabelingLoss(cls_weight=1.0, dense_weight=0.5)
    out = (torch.tensor(cls), torch.tensor(aux), box)
    value = loss(out, torch.tensor(labels), torch.tensor(dense))
    assert value.item() == pytest.approx(expected, abs=1e-6)
    # the same class target given as probabilities
    assert loss(out, torch.tensor(own), torch.tensor(dense)).item() == pytest.approx(expected)


def test_loss_defaults_fallback_and_ground_truth_only() -> None:
    torch.manual_seed(0)
    cls, aux = torch.randn(4, 5), torch.randn(4, 9, 5)
    labels = torch.tensor([0, 3, 1, 4])
    box = MixBox(0, 0, 2, 2)
    loss = TokenLabelingLoss()
    assert (loss.cls_weight, loss.dense_weight) == (1.0, 1.0)  # the official code's defaults
    # no dense target: the class target (un-mixed) for every token, as the official fallback
    repeated = torch.nn.functional.one_hot(labels, 5).float()[:, None].expand(4, 9, 5)
    assert torch.allclose(loss((cls, aux, box), labels), loss((cls, aux, box), labels, repeated))
    # ground-truth fine-tuning: dense weight 0 is the class term alone
    gt_only = TokenLabelingLoss(dense_weight=0.0)((cls, aux, box), labels)
    target = mix_token_target(torch.nn.functional.one_hot(labels, 5).float(), box, 9)
    ref = torch.sum(-target * cls.log_softmax(-1), -1).mean()
    assert torch.allclose(gt_only, ref)


def test_loss_smoothing_and_shape_errors() -> None:
    cls, aux = torch.randn(2, 4), torch.randn(2, 4, 4)
    labels = torch.tensor([1, 2])
    smooth = TokenLabelingLoss(smoothing=0.1)
    plain = TokenLabelingLoss()
    target = one_hot_smooth(labels, 4, 0.1)
    assert torch.allclose(smooth((cls, aux, MixBox()), labels), plain((cls, aux, MixBox()), target))
    with pytest.raises(ValueError, match="dense_target has shape"):
        plain((cls, aux, MixBox()), labels, torch.zeros(2, 9, 4))
    with pytest.raises(ValueError, match="not both zero"):
        TokenLabelingLoss(cls_weight=0.0, dense_weight=0.0)


def test_mix_token_target_uses_box_area() -> None:
    target = torch.eye(2)
    out = mix_token_target(target, (2, 0, 4, 1), 16)  # the recorded official box: lam 0.875
    assert torch.allclose(out, torch.tensor([[0.875, 0.125], [0.125, 0.875]]))
    assert mix_token_target(target, (0, 0, 0, 0), 16) is target


# --- label maps: crop/flip alignment ------------------------------------------------------------
A, B, C = 0, 1, 2  # left half, top-right quarter, bottom-right quarter


def _class_at(x: float, y: float) -> int:
    return A if x < 0.5 else (B if y < 0.5 else C)


def _layout_image(size: int) -> torch.Tensor:
    """[1, 1, size, size] image whose pixel value is the class id of its region."""
    coords = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.where(x < 0.5, A, torch.where(y < 0.5, B, C)).float()[None, None]


def _one_hot_map(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 stored map of the layout: value 1 at the class under each cell."""
    indices = _layout_image(grid).long()  # [1, 1, g, g]
    return torch.ones_like(indices, dtype=torch.float32), indices


# two asymmetric boxes (x0, y0, x1, y1): a wide one across the B/C border and a tall one
# offset to the right half; their token borders fall on the layout's borders at 0.5
BOXES = torch.tensor([[0.0, 0.25, 1.0, 0.75], [0.5, 0.0, 1.0, 1.0]])


@pytest.mark.parametrize("flip", [(False, False), (True, False), (False, True)])
def test_token_targets_follow_an_asymmetric_crop_and_flip(flip: tuple[bool, bool]) -> None:
    """Left half A, top-right B, bottom-right C: after cropping and flipping, each token's
    target is the class of the image pixels under that token, checked against the image
    cropped by the same function and against the layout worked out by hand."""
    flips = torch.tensor(flip)
    values, indices = _one_hot_map(16)
    values, indices = values.expand(2, -1, -1, -1), indices.expand(2, -1, -1, -1)
    dense, cls = token_label_targets(values, indices, BOXES, (4, 4), 3, flips)
    images = crop_resize(_layout_image(64).expand(2, -1, -1, -1), BOXES, (64, 64), flips, "nearest")
    for b, (x0, y0, x1, y1) in enumerate(BOXES.tolist()):
        for i in range(4):
            for j in range(4):
                u = (j + 0.5) / 4
                if flip[b]:
                    u = 1 - u
                expect = _class_at(x0 + u * (x1 - x0), y0 + (i + 0.5) / 4 * (y1 - y0))
                assert images[b, 0, i * 16 + 8, j * 16 + 8].item() == expect  # pixels there
                assert dense[b, i * 4 + j].argmax().item() == expect
                assert dense[b, i * 4 + j, expect].item() >= 0.75
    # class target = crop average: wide box half A, a quarter each B and C; tall box B/C halves
    assert torch.allclose(cls, torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.5, 0.5]]), atol=0.02)


def test_transposed_box_would_give_other_labels() -> None:
    """The control: reading the boxes as (y0, x0, y1, x1), as the official roi_align call
    does, labels tokens differently, so the alignment test above catches a transposed box."""
    values, indices = _one_hot_map(16)
    values, indices = values.expand(2, -1, -1, -1), indices.expand(2, -1, -1, -1)
    right, _ = token_label_targets(values, indices, BOXES, (4, 4), 3)
    swapped, _ = token_label_targets(values, indices, BOXES[:, [1, 0, 3, 2]], (4, 4), 3)
    assert not torch.equal(right[1].argmax(-1), swapped[1].argmax(-1))


def test_token_targets_average_finer_label_cells() -> None:
    """A 16x16 map under 4x4 tokens, whole image: each token gets the mean of its 4x4 cells."""
    torch.manual_seed(0)
    values = torch.rand(2, 3, 16, 16)
    indices = torch.stack([torch.full((16, 16), c) for c in (0, 2, 4)])[None].expand(2, -1, -1, -1)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    dense, cls = token_label_targets(values, indices, boxes, (4, 4), 5)
    expect = torch.nn.functional.avg_pool2d(label_maps(values, indices, 5), 4)
    assert torch.allclose(dense, expect.flatten(2).transpose(1, 2), atol=1e-6)
    assert torch.allclose(cls, label_maps(values, indices, 5).mean(dim=(2, 3)), atol=1e-6)


def test_label_maps_scatter_and_reject_bad_indices() -> None:
    values = torch.tensor([[[[0.7]], [[0.2]]]])  # [1, k=2, 1, 1]
    indices = torch.tensor([[[[3]], [[1]]]])
    maps = label_maps(values, indices, 5)
    assert maps[0, :, 0, 0].tolist() == pytest.approx([0, 0.2, 0, 0.7, 0])
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        label_maps(values, indices, 3)


# --- relabel ----------------------------------------------------------------------------------
def _image_folder(root: Path, per_class: int = 3, classes: int = 2) -> Path:
    """Tiny ImageFolder of synthetic PNGs of different sizes."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = 40 + 4 * i, 56 - 4 * c
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"img{i}.png")
    return root


def _teacher(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pth"
    torch.save(tokenmix.create_model("test_lvvit").state_dict(), path)
    return path


def test_dense_logits_of_teachers() -> None:
    x = torch.randn(2, 3, 64, 64)
    lvvit = tokenmix.create_model("test_lvvit").eval()
    with torch.no_grad():
        _, aux, _ = lvvit.forward_train(x)
        assert torch.allclose(dense_logits(lvvit, x).flatten(2).transpose(1, 2), aux, atol=1e-6)
    # MetaFormer: the head per location; with a 1x1 final map that is the model's output
    conv = tokenmix.create_model("test_convformer").eval()
    small = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(dense_logits(conv, small)[:, :, 0, 0], conv(small), atol=1e-5)
        assert dense_logits(conv, x).shape == (2, 10, 2, 2)


def test_relabel_then_train_step_round_trip(tmp_path: Path) -> None:
    data = open_dataset(_image_folder(tmp_path / "images"), "train")
    teacher = tokenmix.create_model("test_lvvit", pretrained=_teacher(tmp_path))
    store = relabel_dataset(
        teacher, data, tmp_path / "labels", topk=3, grid=(8, 8), batch_size=4, progress=False
    )
    assert len(store) == len(data) == 6 and store.grid == (8, 8) and store.topk == 3
    ids = [data.sample_id(i) for i in range(len(data))]
    values, indices = store.load(ids[:4])
    assert values.shape == indices.shape == (4, 3, 8, 8)
    assert torch.all(values[:, :-1] >= values[:, 1:])  # sorted top-k probabilities
    assert torch.all(values.sum(1) <= 1.0 + 1e-2)

    # a training step: the same boxes and flips for the images and their label maps
    student = tokenmix.create_model("test_lvvit").train()
    student.token_labeling = True
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    loss_fn = TokenLabelingLoss(smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    images = torch.stack([data[i][0] for i in range(4)]).float() / 255
    labels = torch.tensor([data.label(i) for i in range(4)])
    losses = []
    for _ in range(4):
        boxes = sample_rrc_boxes(4, generator=g)
        flips = torch.rand(4, generator=g) < 0.5
        x = crop_resize(images, boxes, (64, 64), flips)
        dense, cls_target = token_label_targets(
            values, indices, boxes, student.grid_size, 10, flips
        )
        outputs = student(x, generator=g)
        loss = loss_fn(outputs, cls_target, dense)
        optimizer.zero_grad()
        loss.backward()
        assert student.aux_head.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    # ground-truth labels work the same way (fine-tuning without token labels)
    assert math.isfinite(TokenLabelingLoss(dense_weight=0.0)(outputs, labels).item())


class _Crashing:
    """Wraps a dataset; `load` raises at one index, like a crash in the middle of a chunk."""

    def __init__(self, dataset, crash_at: int | None) -> None:
        self.dataset, self.crash_at, self.loaded = dataset, crash_at, []
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_id(self, i: int) -> str:
        return self.dataset.sample_id(i)

    def load(self, i: int) -> Image.Image:
        if i == self.crash_at:
            raise RuntimeError("simulated crash")
        self.loaded.append(i)
        return self.dataset.load(i)


def test_relabel_resumes_after_a_crash_without_redoing_chunks(tmp_path: Path) -> None:
    data = open_dataset(_image_folder(tmp_path / "images", per_class=5), "train")  # 10 images
    teacher = tokenmix.create_model("test_lvvit", pretrained=_teacher(tmp_path))
    opts = {"topk": 2, "batch_size": 2, "chunk_size": 4, "progress": False}

    relabel_dataset(teacher, data, tmp_path / "full", **opts)

    crashing = _Crashing(data, crash_at=7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        relabel_dataset(teacher, crashing, tmp_path / "resumed", **opts)
    progress = json.loads((tmp_path / "resumed" / "progress-rank0.json").read_text())
    assert progress == {"rows": [[0, 4]]}  # the finished chunk; rows 4-5 were not committed
    assert json.loads((tmp_path / "resumed" / "progress.json").read_text()) == {"done": 0}
    with pytest.raises(ValueError, match=r"incomplete \(4 of 10 samples"):
        TokenLabelStore(tmp_path / "resumed")

    again = _Crashing(data, crash_at=None)
    relabel_dataset(teacher, again, tmp_path / "resumed", **opts)
    assert again.loaded == list(range(4, 10))  # finished chunks were not redone
    for name in ("labels.npy", "index.json", "progress.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [
        "index.json",
        "labels.npy",
        "progress.json",
    ]  # the per-rank records are gone once the run is complete


def test_relabel_resumes_a_directory_of_the_single_process_format(tmp_path: Path) -> None:
    """Label directories of earlier versions count finished leading rows in progress.json."""
    data = open_dataset(_image_folder(tmp_path / "images", per_class=3), "train")  # 6 images
    teacher = tokenmix.create_model("test_lvvit", pretrained=_teacher(tmp_path))
    opts = {"topk": 2, "batch_size": 2, "chunk_size": 2, "progress": False}
    relabel_dataset(teacher, data, tmp_path / "full", **opts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        relabel_dataset(teacher, _Crashing(data, crash_at=4), tmp_path / "old", **opts)
    (tmp_path / "old" / "progress-rank0.json").unlink()  # as the earlier version left it:
    (tmp_path / "old" / "progress.json").write_text(json.dumps({"done": 4}))
    again = _Crashing(data, crash_at=None)
    relabel_dataset(teacher, again, tmp_path / "old", **opts)
    assert again.loaded == [4, 5]
    for name in ("labels.npy", "index.json", "progress.json"):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_relabel_refuses_to_resume_with_other_settings(tmp_path: Path) -> None:
    data = open_dataset(_image_folder(tmp_path / "images"), "train")
    teacher = tokenmix.create_model("test_lvvit", pretrained=_teacher(tmp_path))
    relabel_dataset(teacher, data, tmp_path / "labels", topk=2, progress=False)
    with pytest.raises(ValueError, match=r"topk: 2 -> 3"):
        relabel_dataset(teacher, data, tmp_path / "labels", topk=3, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a token-label directory"):
        relabel_dataset(teacher, data, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "keep.txt").read_text() == "precious"
    store = TokenLabelStore(tmp_path / "labels")
    with pytest.raises(KeyError, match="no token labels"):
        store.rows(["class0/missing.png"])


def test_relabel_command(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "images")
    out = tmp_path / "labels"
    args = [
        "relabel",
        "--teacher",
        "test_lvvit",
        "--checkpoint",
        str(_teacher(tmp_path)),
        "--data",
        str(root),
        "--out",
        str(out),
        "--topk",
        "3",
        "--grid",
        "6",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
    assert cli_main(args) == 0
    store = TokenLabelStore(out)
    assert store.grid == (6, 6) and store.topk == 3 and store.num_classes == 10
    assert store.meta["teacher"] == "test_lvvit" and store.meta["split"] == "train"
    assert cli_main(args) == 0  # already complete: nothing to do
    bad = [a if a != "3" else "4" for a in args]
    assert cli_main(bad) == 2  # other settings into the same directory are refused
