"""Device-side training augmentation: timm semantics, alignment of returned boxes, determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tokenmix.config.schema import AugmentConfig
from tokenmix.data.augment import (
    TIMM_OPS,
    MixParams,
    TimmRandAugment,
    TrainAugment,
    apply_mix,
    check_config,
    imagenet_recipe,
    one_hot_smooth,
    parse_randaugment,
    sample_mix,
)
from tokenmix.data.crops import crop_resize

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
PLAIN = dict(randaugment=None, erase_rate=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)


def _batch(b: int = 8, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(
        b
    ) % 5


def _augment(
    cfg: AugmentConfig, seed: int = 0, size: int = 16, num_classes: int = 5, smoothing: float = 0.1
) -> TrainAugment:
    return TrainAugment(
        cfg,
        img_size=size,
        num_classes=num_classes,
        smoothing=smoothing,
        mean=MEAN,
        std=STD,
        seed=seed,
    )


# --------------------------------------------------------------------------- RandAugment


def test_parse_randaugment() -> None:
    spec = parse_randaugment("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.magnitude_std, spec.increasing, spec.num_ops, spec.prob) == (
        9,
        0.5,
        True,
        2,
        0.5,
    )
    spec = parse_randaugment("rand-n3-m7-mmax12-p0.3")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_max, spec.prob, spec.increasing) == (
        3,
        7,
        12,
        0.3,
        False,
    )
    assert parse_randaugment("rand-m9-mstd101").magnitude_std == math.inf
    with pytest.raises(ValueError, match="unsupported RandAugment option 'w0'"):
        parse_randaugment("rand-m9-w0")
    with pytest.raises(ValueError, match="must start with 'rand'"):
        parse_randaugment("augmix-m5")
    with pytest.raises(ValueError, match="unsupported"):
        check_config(AugmentConfig(randaugment="rand-x9"))


def _one_op(name: str, spec: str = "rand-m9-n1-inc1-p1.0") -> TimmRandAugment:
    return TimmRandAugment(parse_randaugment(spec), ops=[name])


def _params(ra: TimmRandAugment) -> dict[str, torch.Tensor]:
    """Parameters kornia recorded for the last call (one operation)."""
    return ra._params[0].data[0].data


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("rotate", "degrees", 27.0),  # 30 * 9/10
        ("shear_x", "shear_x", math.degrees(math.atan(0.27))),  # coefficient 0.3 * 9/10
        ("shear_y", "shear_y", math.degrees(math.atan(0.27))),
        ("translate_x", "translate_x", 0.405 * 20),  # 0.45 * 9/10 of the width, in pixels
        ("translate_y", "translate_y", 0.405 * 20),
    ],
)
def test_randaugment_geometric_magnitudes_match_timm(name: str, key: str, value: float) -> None:
    ra = _one_op(name)
    ra(torch.rand(16, 3, 20, 20))
    got = _params(ra)[key].abs()
    assert torch.allclose(got, torch.full_like(got, value), atol=1e-4)
    assert (_params(ra)[key] < 0).any() and (_params(ra)[key] > 0).any()  # random sign


def test_randaugment_intensity_semantics_match_timm() -> None:
    x = torch.linspace(0, 1, 256).view(1, 1, 1, 256).expand(4, 3, 2, 256).contiguous()
    post = _one_op("posterize")(x)  # inc, level 9: 4 - int(3.6) = 1 bit
    assert set(torch.unique((post * 255).round()).tolist()) == {0.0, 128.0}
    post_plain = _one_op("posterize", "rand-m9-n1-p1.0")(x)  # not increasing: int(3.6) = 3 bits
    assert len(torch.unique(post_plain)) == 8
    sol = _one_op("solarize")(x)  # inc: threshold 256 - int(230.4) = 26 (of 255)
    k = torch.arange(256).float()
    ref = torch.where(k >= 26, 255 - k, k) / 255
    assert torch.allclose(sol[0, 0, 0], ref, atol=1e-6)
    add = _one_op("solarize_add")(x)  # + int(99) below 128, nothing else changes
    ref = torch.where(k < 128, (k + 99).clamp(max=255), k) / 255
    assert torch.allclose(add[0, 0, 0], ref, atol=1e-5)
    grey = torch.full((64, 3, 4, 4), 0.4)
    bright = _one_op("brightness")(grey)[:, 0, 0, 0]  # factor 1 +- 0.81, multiplicative (PIL)
    assert torch.allclose(
        torch.unique(bright.round(decimals=4)), torch.tensor([0.076, 0.724]), atol=1e-4
    )
    img = torch.rand(64, 3, 4, 4)
    con = _one_op("contrast")(img)  # blend with the mean of the greyscale image
    mean = (
        (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]).mean((-2, -1)).view(-1, 1, 1, 1)
    )
    f = ((con - mean) / (img - mean)).flatten(1)
    # away from the clamp (and from the mean, where the ratio is ill-conditioned) the factor
    # is exactly 1.81 or 0.19
    ok = (con > 0) & (con < 1) & ((img - mean).abs() > 0.05)
    vals = f[ok.flatten(1)]
    assert ((vals - 1.81).abs() < 1e-3).logical_or((vals - 0.19).abs() < 1e-3).all()
    col = _one_op("color")(torch.full((8, 3, 4, 4), 0.3))
    assert torch.allclose(col, torch.full_like(col, 0.3), atol=1e-6)  # grey stays grey


def test_randaugment_probability_and_noise() -> None:
    ra = _one_op("invert", "rand-m9-n1-inc1")  # timm default p = 0.5
    x = torch.rand(400, 3, 4, 4)
    changed = ((ra(x) - x).abs().flatten(1).max(1).values > 1e-6).float().mean()
    assert 0.4 < changed < 0.6
    ra = TimmRandAugment(parse_randaugment("rand-m9-mstd0.5-inc1"))
    levels = torch.tensor([ra.sample_level() for _ in range(400)])
    assert abs(levels.mean() - 9) < 0.1 and abs(levels.std() - 0.5) < 0.1 and levels.max() <= 10
    assert math.isclose(ra.m, levels[-1].item() * 3, rel_tol=1e-6)
    assert len(TIMM_OPS) == 15 and len(ra) == 15
    with pytest.raises(ValueError, match="unknown RandAugment operations"):
        TimmRandAugment(parse_randaugment("rand-m9"), ops=["cutout"])


def test_every_operation_runs_in_range() -> None:
    x = torch.rand(6, 3, 12, 12)
    for name in TIMM_OPS:
        for spec in ("rand-m9-n1-inc1-p1.0", "rand-m7-n1-p1.0"):  # m5 would be identity
            out = _one_op(name, spec)(x)
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, name
            assert not torch.equal(out, x) or name == "auto_contrast", name


# --------------------------------------------------------------------------- the pipeline


def test_plain_pipeline_is_crop_flip_normalise_with_returned_boxes() -> None:
    images, labels = _batch()
    aug = _augment(AugmentConfig(**PLAIN, interpolation="bilinear"), smoothing=0.0)
    out = aug(images, labels)
    assert out.images.shape == (8, 3, 16, 16) and out.images.dtype == torch.float32
    assert out.flips.any() and not out.flips.all()
    # the returned boxes and flips reproduce the images: token-label maps can use them
    ref = crop_resize(images.float() / 255, out.boxes, (16, 16), out.flips, mode="bilinear").clamp(
        0, 1
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out.images, (ref - mean) / std, atol=1e-5)
    assert torch.equal(out.targets, one_hot_smooth(labels, 5, 0.0)) and torch.equal(
        out.labels, labels
    )
    areas = (out.boxes[:, 2] - out.boxes[:, 0]) * (out.boxes[:, 3] - out.boxes[:, 1])
    assert (areas >= 0.08 - 1e-6).all() and (areas <= 1 + 1e-6).all()
    assert out.mix.mode is None


def test_no_crop_when_scale_is_none() -> None:
    images, labels = _batch(size=16)
    out = _augment(AugmentConfig(**PLAIN, scale=None, hflip_rate=0.0, interpolation="bilinear"))(
        images, labels
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out.images, (images / 255 - mean) / std, atol=1e-5)


def test_translate_shifts_whole_pixels_with_replicated_edges() -> None:
    images, labels = _batch(b=32, size=16)
    cfg = AugmentConfig(**PLAIN, scale=None, hflip_rate=0.0, translate=3, interpolation="bilinear")
    out = _augment(cfg)(images, labels)
    shifts = torch.round(out.boxes[:, :2] * 16).long()  # (dx, dy) in source pixels
    assert torch.allclose(out.boxes[:, 2:] - out.boxes[:, :2], torch.ones(32, 2))
    assert shifts.abs().max() <= 3 and len({tuple(s) for s in shifts.tolist()}) > 8
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pixels = out.images * std + mean
    for i, (dx, dy) in enumerate(shifts.tolist()):
        rows = (torch.arange(16) + dy).clamp(0, 15)  # output pixel y reads source y + dy
        cols = (torch.arange(16) + dx).clamp(0, 15)
        expected = images[i].float()[:, rows][:, :, cols] / 255
        assert torch.allclose(pixels[i], expected, atol=1e-5), (i, dx, dy)


def test_alternate_flip_shows_every_image_both_ways_in_two_epochs() -> None:
    images, labels = _batch(b=64, size=16)
    cfg = AugmentConfig(**PLAIN, scale=None, hflip="alternate", interpolation="bilinear")
    indices = torch.randperm(1000)[:64]
    flips = [_augment(cfg)(images, labels, indices=indices, epoch=e).flips for e in range(4)]
    assert torch.equal(flips[0], ~flips[1]) and torch.equal(flips[0], flips[2])
    assert torch.equal(flips[1], flips[3]) and 16 < int(flips[0].sum()) < 48
    # a function of the image and the run's seed: another order, step seed or rank, same flips
    again = _augment(cfg, seed=0)
    again.generator.manual_seed(12345)
    order = torch.randperm(64)
    out = again(images[order], labels[order], indices=indices[order], epoch=0)
    assert torch.equal(out.flips, flips[0][order])
    assert not torch.equal(_augment(cfg, seed=1)(images, labels, indices=indices).flips, flips[0])
    # the images are the flipped ones
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = torch.where(flips[1].view(-1, 1, 1, 1), images.flip(-1), images) / 255
    out = _augment(cfg)(images, labels, indices=indices, epoch=1)
    assert torch.allclose(out.images * std + mean, expected, atol=1e-5)
    with pytest.raises(ValueError, match="dataset indices"):
        _augment(cfg)(images, labels)
    with pytest.raises(ValueError, match=r"hflip_rate=0\.3"):
        check_config(AugmentConfig(hflip="alternate", hflip_rate=0.3))


def test_size_schedule_resizes_the_crops_of_each_epoch() -> None:
    """Progressive resizing: the epoch's step of ``size_schedule`` sets the output size; the
    pixels are the full-size crop downscaled with antialiasing, and CutMix boxes fit it."""
    images, labels = _batch(size=16)
    sched = [[0, 8], [2, 12], [4, 16]]
    cfg = AugmentConfig(**PLAIN, scale=None, hflip_rate=0.0, interpolation="bilinear")
    aug = _augment(replace(cfg, size_schedule=sched))
    assert [aug.size_at(e) for e in (0, 1, 2, 3, 4, 9)] == [(8, 8)] * 2 + [(12, 12)] * 2 + [
        (16, 16)
    ] * 2
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    full = _augment(cfg)(images, labels).images * std + mean
    for epoch, side in ((0, 8), (3, 12), (4, 16)):
        out = aug(images, labels, epoch=epoch)
        assert out.images.shape == (8, 3, side, side)
        expected = F.interpolate(full, size=side, mode="bilinear", antialias=True).clamp(0, 1)
        assert torch.allclose(out.images * std + mean, expected, atol=1e-5), epoch
    # antialiased: a 1-px checkerboard averages to grey at half size, not to one of its colours
    board = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2 * 255).to(torch.uint8)
    out = aug(board.expand(8, 3, 16, 16).contiguous(), labels, epoch=0)
    assert torch.allclose(out.images * std + mean, torch.full_like(out.images, 0.5), atol=0.02)
    mixed = _augment(replace(cfg, cutmix_alpha=1.0, size_schedule=sched), smoothing=0.0)
    for seed in range(4):
        mixed.generator.manual_seed(seed)
        out = mixed(images, labels, epoch=0)
        x0, y0, x1, y1 = (round(v * 8) for v in out.mix.box)
        assert math.isclose(out.mix.lam, 1 - (x1 - x0) * (y1 - y0) / 64, abs_tol=1e-6)
    for bad, match in (
        ([[1, 8]], "start at epoch 0"),
        ([[0, 8], [0, 16]], "increase strictly"),
        ([[0, 0]], "size >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            check_config(replace(cfg, size_schedule=bad))


def test_label_smoothing_targets() -> None:
    images, labels = _batch()
    out = _augment(AugmentConfig(**PLAIN), smoothing=0.1)(images, labels)
    assert torch.allclose(out.targets.max(1).values, torch.full((8,), 0.92))
    assert torch.allclose(out.targets.sum(1), torch.ones(8))


def test_mixup_blends_with_reversed_batch() -> None:
    images, labels = _batch(size=16)
    cfg = AugmentConfig(**{**PLAIN, "mixup_alpha": 0.8}, scale=None, hflip_rate=0.0)
    out = _augment(cfg, smoothing=0.1)(images, labels)
    lam = out.mix.lam
    assert out.mix.mode == "mixup" and 0 < lam < 1
    plain = _augment(AugmentConfig(**PLAIN, scale=None, hflip_rate=0.0))(images, labels).images
    assert torch.allclose(out.images, lam * plain + (1 - lam) * plain.flip(0), atol=1e-5)
    smooth = one_hot_smooth(labels, 5, 0.1)
    assert torch.allclose(out.targets, lam * smooth + (1 - lam) * smooth.flip(0))


def test_cutmix_box_and_corrected_lambda() -> None:
    images, labels = _batch(size=16)
    cfg = AugmentConfig(**{**PLAIN, "cutmix_alpha": 1.0}, scale=None, hflip_rate=0.0)
    plain = _augment(AugmentConfig(**PLAIN, scale=None, hflip_rate=0.0))(images, labels).images
    for seed in range(6):
        out = _augment(cfg, seed=seed, smoothing=0.0)(images, labels)
        assert out.mix.mode == "cutmix"
        x0, y0, x1, y1 = (round(v * 16) for v in out.mix.box)
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert math.isclose(out.mix.lam, 1 - inside.float().mean().item(), abs_tol=1e-6)
        assert torch.allclose(out.images[..., inside], plain.flip(0)[..., inside], atol=1e-5)
        assert torch.allclose(out.images[..., ~inside], plain[..., ~inside], atol=1e-5)
        lam = out.mix.lam
        onehot = one_hot_smooth(labels, 5, 0.0)
        assert torch.allclose(out.targets, lam * onehot + (1 - lam) * onehot.flip(0))


def test_mix_maps_follows_the_images() -> None:
    maps = torch.rand(4, 5, 16, 16)
    for mix in (
        MixParams("cutmix", 0.75, (0.25, 0.25, 0.75, 0.75)),
        MixParams("mixup", 0.3),
        MixParams(),
    ):
        assert torch.equal(mix.mix_maps(maps), apply_mix(maps, mix))
    coarse = MixParams("cutmix", 0.75, (0.25, 0.25, 0.75, 0.75)).mix_maps(maps[..., ::4, ::4])
    assert torch.equal(coarse[:, :, 1:3, 1:3], maps.flip(0)[:, :, 4:12:4, 4:12:4])
    assert torch.equal(coarse[:, :, 0], maps[:, :, 0, ::4])


def test_mix_switch_and_rate() -> None:
    cfg = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_rate=0.5, mix_rate=0.6)
    torch.manual_seed(0)
    modes = [sample_mix(cfg, (16, 16)).mode for _ in range(600)]
    assert 0.33 < modes.count(None) / 600 < 0.47
    assert 0.4 < modes.count("cutmix") / max(600 - modes.count(None), 1) < 0.6


def test_random_erasing_region() -> None:
    images, labels = _batch(b=64, size=32)
    cfg = AugmentConfig(
        **{**PLAIN, "erase_rate": 1.0}, erase_mode="const", scale=None, hflip_rate=0.0
    )
    out = _augment(cfg, size=32)(images, labels)
    zero = (out.images == 0).all(1)  # const erasing fills 0 (= the mean colour) on every channel
    frac = zero.flatten(1).float().mean(1)
    assert (frac > 0.01).all() and (frac < 0.35).all()
    pixel = _augment(
        AugmentConfig(**{**PLAIN, "erase_rate": 0.5}, scale=None, hflip_rate=0.0), size=32
    )(images, labels)
    changed = (pixel.images != out.images).any(1)  # noise where erased
    assert changed.any()


def test_full_recipe_runs_and_stays_finite() -> None:
    images, labels = _batch(b=20, size=40)
    aug = _augment(
        imagenet_recipe(rotation=10.0, color_jitter=0.4, randaugment_group=6),
        size=32,
        num_classes=5,
    )
    out = aug(images, labels)
    assert out.images.shape == (20, 3, 32, 32) and torch.isfinite(out.images).all()
    assert torch.allclose(out.targets.sum(1), torch.ones(20))


def test_seeded_reproducible_and_resumable_without_touching_global_rng() -> None:
    images, labels = _batch(b=12, size=24)
    cfg = imagenet_recipe(rotation=5.0, randaugment_group=4)
    a, b = _augment(cfg, seed=3), _augment(cfg, seed=3)
    before = torch.get_rng_state()
    first_a = a(images, labels)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    first_b = b(images, labels)
    assert torch.equal(first_a.images, first_b.images) and first_a.mix == first_b.mix
    state = a.state_dict()
    second = a(images, labels)
    assert not torch.equal(second.images, first_a.images)
    c = _augment(cfg, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c(images, labels).images, second.images)
    assert not torch.equal(_augment(cfg, seed=4)(images, labels).images, first_a.images)


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        _augment(imagenet_recipe())(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="hflip_rate"):
        check_config(AugmentConfig(hflip_rate=1.5))
    with pytest.raises(ValueError, match="erase_mode"):
        check_config(AugmentConfig(erase_mode="rand"))


@pytest.mark.gpu
def test_full_recipe_on_cuda_reproducible() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    images, labels = _batch(b=32, size=40)
    images, labels = images.cuda(), labels.cuda()
    cfg = imagenet_recipe(rotation=10.0, color_jitter=0.4, randaugment_group=8)
    cuda_state = torch.cuda.get_rng_state()
    a = _augment(cfg, seed=1, size=32)(images, labels)
    b = _augment(cfg, seed=1, size=32)(images, labels)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert a.images.is_cuda and a.targets.is_cuda and torch.isfinite(a.images).all()
    assert torch.equal(a.images, b.images) and a.mix == b.mix
