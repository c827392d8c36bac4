"""The fast path computes the reference path's function (which is the official code's).

Tolerances: float32 forward within 1e-5 absolute (outputs are O(1), like the official cases);
gradients within 1e-5 relative to each gradient's scale; under bf16 autocast the fast path may
deviate from the float32 reference by at most 1.5x the reference path's own bf16 deviation
plus 0.5 % of the output scale (both are ~1-2 % of the scale: bf16 has an 8-bit mantissa).
Weights are perturbed away from their init so that StarReLU's scale and bias, norm weights and
res-scales are not 1 and 0 (the folds and fusions must handle any value).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tokenmix
from tokenmix import kernels
from tokenmix.kernels.ops import linear
from tokenmix.layers import (
    DualPath,
    Mlp,
    StarReLU,
    create_token_mixer,
    fold_star_relu,
    reference_mode,
    relu_square,
    set_reference_mode,
    spectral,
    uses_reference_path,
)
from tokenmix.layers.conv import conv_bn, conv_bn_relu
from tokenmix.layers.spectral import dft_as_matmul, spectral_filter

from .conftest import REFERENCE, require

# Every kernel choice the backend can make, each forced in turn (models are built inside the
# block, since layers resolve their kernels at construction). A set the host cannot run is
# skipped with the reason. "host" is whatever this machine picks; "special" every non-plain
# kernel; "blas" the BLAS (MKL on Intel) linears with unfused ReLUs and FFTs, the branch wide
# layers take on Intel CPUs; "onednn_fwd" oneDNN linears with torch.mm backward products (the
# AMD AVX2 choice); "plain" plain F.* ops everywhere.
KERNEL_SETS = {
    "host": {},
    "special": {family: options[0] for family, options in kernels.CHOICES.items()},
    "blas": {"linear": "blas", "linear_relu": "onednn", "dft": "fft", "attention": "sdpa"},
    "onednn_fwd": {"linear": "onednn_fwd"},
    "plain": dict(kernels.PLAIN),
}


@pytest.fixture(params=sorted(KERNEL_SETS))
def kernel_set(request: pytest.FixtureRequest):
    choices = KERNEL_SETS[request.param]
    for family, option in choices.items():
        why = kernels.runnable(family, option)
        if why:
            pytest.skip(f"kernels {request.param}: {family}={option}: {why}")
    with kernels.force(**choices):
        yield request.param


MODELS = [
    "test_dfformer",
    "test_cdfformer",
    "test_gfformer",
    "test_convformer",
    "test_caformer",
    "test_lvvit",
]
# native size, a resized non-square one (odd FFT widths), a larger one
SIZES = [(64, 64), (96, 80), (128, 128)]


def perturbed(name: str) -> torch.nn.Module:
    model = tokenmix.create_model(name)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", SIZES)
def test_forward_matches_reference_fp32(name: str, size: tuple[int, int], kernel_set: str) -> None:
    model = perturbed(name).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        fast = model(x)
        with reference_mode(model):
            ref = model(x)
    assert (fast - ref).abs().max().item() <= 1e-5
    assert not uses_reference_path(model)  # the context restored the fast path


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_backward_matches_reference_fp32(name: str, size: tuple[int, int], kernel_set: str) -> None:
    model = perturbed(name).train()
    x = torch.randn(2, 3, *size)

    def grads(reference: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with reference_mode(model, reference):
            out = model(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        g["input"] = xi.grad.clone()
        return g

    fast, ref = grads(False), grads(True)
    assert fast.keys() == ref.keys()
    for key in ref:
        scale = ref[key].abs().max().item() + 1e-6
        err = (fast[key] - ref[key]).abs().max().item()
        # one-element parameters (StarReLU's scale and bias, ...) sum over whole activations:
        # their float32 rounding is a few times larger than that of a per-element gradient
        tol = 1e-5 if ref[key].numel() > 1 else 3e-5
        assert err <= tol * max(scale, 1.0), f"{key}: {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_within_documented_tolerance(name: str, kernel_set: str) -> None:
    model = perturbed(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with reference_mode(model):
            ref32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast16 = model(x).float()
            with reference_mode(model):
                ref16 = model(x).float()
    scale = ref32.abs().max().item()
    err_fast = (fast16 - ref32).abs().max().item()
    err_ref = (ref16 - ref32).abs().max().item()
    assert err_fast <= 1.5 * err_ref + 0.005 * scale, (err_fast, err_ref)


CASES = {
    "dfformer_tiny": "test_dfformer",
    "dfformer_tiny_resize": "test_dfformer",
    "cdfformer_tiny": "test_cdfformer",
    "gfformer_tiny": "test_gfformer",
    "convformer_tiny": "test_convformer",
    "caformer_tiny": "test_caformer",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_path_reproduces_official_outputs(case: str) -> None:
    """The oracle itself: the reference path gives the official code's stored outputs."""
    tensors = load_file(str(require(REFERENCE / "cases" / f"{case}.safetensors")))
    state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
    model = set_reference_mode(tokenmix.create_model(CASES[case]).eval())
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(tensors["input"])
    assert (out - tensors["output"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["test_dfformer", "test_gfformer", "test_lvvit"])
@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiles_without_graph_breaks(name: str, reference: bool) -> None:
    """Both paths trace into one graph (fullgraph fails on any break); aot_eager needs no C++."""
    model = set_reference_mode(perturbed(name).eval(), reference)
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["test_dfformer", "test_lvvit"])
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiles_with_every_special_kernel_chosen(name: str) -> None:
    """Layers built with every non-plain kernel still trace into one graph: the kernels step
    aside while compiling, and the traced function is the eager one."""
    choices = KERNEL_SETS["special"]
    if any(kernels.runnable(f, o) for f, o in choices.items()):
        pytest.skip("a special kernel cannot run here")
    with kernels.force(**choices):
        model = perturbed(name).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_switch_covers_every_dual_path_layer_and_restores() -> None:
    model = tokenmix.create_model("test_cdfformer")
    layers = [m for m in model.modules() if isinstance(m, DualPath)]
    kinds = {type(m).__name__ for m in layers}
    assert {"LayerNormNoBias", "StarReLU", "Mlp", "DynamicFilter", "SepConv"} <= kinds
    set_reference_mode(model)
    assert all(m.reference for m in layers)
    layers[0].reference = False  # a mixed state is restored exactly
    with reference_mode(model, enabled=False):
        assert not any(m.reference for m in layers)
        with pytest.raises(RuntimeError), reference_mode(model):
            raise RuntimeError("inside")
        assert not any(m.reference for m in layers)
    assert [m.reference for m in layers] == [False] + [True] * (len(layers) - 1)


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_square_gradient(inplace: bool) -> None:
    x = torch.randn(64, 32, dtype=torch.float64)
    x[0, :8] = 0.0  # exact zeros: relu'(0) = 0
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    g = torch.randn(64, 32, dtype=torch.float64)
    (F.relu(a) ** 2).backward(g)
    # in place needs a tensor nothing else keeps: the output of an op, like a linear layer's
    relu_square(b * 1.0, inplace=inplace).backward(g)
    assert torch.allclose(a.grad, b.grad, atol=1e-13)


def test_star_relu_fold_into_linear() -> None:
    act = StarReLU(scale_value=0.7, bias_value=-0.3)
    fc = torch.nn.Linear(16, 8)
    h = torch.randn(5, 16)
    expected = fc(act.forward_reference(h))
    weight, bias = fold_star_relu(act, fc)
    assert torch.allclose(F.linear(F.relu(h) ** 2, weight, bias), expected, atol=1e-6)


@pytest.mark.parametrize("kernel", kernels.CHOICES["linear"])
@pytest.mark.parametrize("features", [(11, 24), (336, 328)])
def test_linear_kernels_forward_backward(features: tuple[int, int], kernel: str) -> None:
    """oneDNN (forward and backward) and BLAS linears, thin and wide: both are ``F.linear``'s
    function."""
    why = kernels.runnable("linear", kernel)
    if why:
        pytest.skip(why)
    out_f, in_f = features
    x = torch.randn(37, in_f, requires_grad=True)
    w = torch.randn(out_f, in_f, requires_grad=True)
    b = torch.randn(out_f, requires_grad=True)
    out = linear(x, w, b, kernel)
    g = torch.randn_like(out)
    out.backward(g)
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    ref = F.linear(x, w, b)
    ref.backward(g)
    # float32 sums of in_f products in another order: rounding relative to the result's scale
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    for got, t in zip(grads, (x, w, b), strict=True):
        assert (got - t.grad).abs().max().item() <= 1e-5 * t.grad.abs().max().item()
    # 4-D input (the mixers' channels-last maps) keeps its leading shape
    assert linear(torch.randn(2, 3, 5, in_f), w.detach(), None, kernel).shape == (2, 3, 5, out_f)


def test_kernel_choice_resolved_at_construction_and_shown() -> None:
    """Layers keep the choice made when they were built, show it in repr, and a choice the
    machine cannot run falls back to the plain op; unknown names are errors."""
    with kernels.force(linear="blas", dft="fft"):
        model = tokenmix.create_model("test_dfformer")
    mixer = model.stages[0][0].token_mixer
    assert mixer.kernels["linear"] == "blas" and mixer.kernels["dft"] == "fft"
    assert "kernels=linear:blas" in repr(mixer)
    with kernels.force(**kernels.PLAIN):
        plain = tokenmix.create_model("test_lvvit")
    assert kernels.layer_choices(plain)["ConvStem"] == {"conv_relu": {"unfused"}, "stem": {"whole"}}
    with pytest.raises(ValueError, match="unknown kernel family"):
        kernels.force(turbo="on").__enter__()
    with pytest.raises(ValueError, match="choose from"):
        kernels.force(linear="mkl").__enter__()


@pytest.mark.parametrize("size", [(16, 16), (6, 5), (7, 7), (8, 3), (1, 4), (3, 1), (20, 18)])
def test_spectral_filter_implementations_equal_the_fft(size: tuple[int, int]) -> None:
    """FFT, dense 2-D DFT matrix (small maps) and separable DFT matrices (export) against
    ``irfft2(rfft2(x) * f)`` in float64. Includes odd and one-point sizes, and filters that are
    not Hermitian (irfft2 drops the imaginary parts of the zero and Nyquist columns; the
    matrices must too). Each kernel is forced; the default is the machine's choice."""
    x = torch.randn(3, 2, *size)
    filters = torch.randn(3, 2, size[0], size[1] // 2 + 1, 2)
    spec = torch.fft.rfft2(x.double(), norm="ortho") * torch.view_as_complex(filters.double())
    expected = torch.fft.irfft2(spec, s=size, norm="ortho").float()
    default = spectral_filter(x, filters, size)
    fft = spectral_filter(x, filters, size, "fft")
    dense = spectral_filter(x, filters, size, "dense")
    with dft_as_matmul():
        separable = spectral_filter(x, filters, size)
    for got in (default, fft, dense, separable):
        assert (got - expected).abs().max().item() <= 4e-6


@pytest.mark.parametrize("kernel", kernels.CHOICES["dft"])
def test_dft_kernels_in_training_and_inference_agree(kernel: str) -> None:
    """Each DFT kernel's gradients equal the float64 FFT's, and inference (in place) the
    training result."""
    x = torch.randn(4, 2, 7, 7, requires_grad=True)
    filters = torch.randn(4, 2, 7, 4, 2, requires_grad=True)
    out = spectral_filter(x, filters, (7, 7), kernel)
    grads = torch.autograd.grad(out.square().sum(), (x, filters))
    with torch.no_grad():
        assert torch.equal(spectral_filter(x, filters, (7, 7), kernel), out)
    x64, f64 = (t.detach().double().requires_grad_() for t in (x, filters))
    spec = torch.fft.rfft2(x64, norm="ortho") * torch.view_as_complex(f64)
    ref = torch.fft.irfft2(spec, s=(7, 7), norm="ortho")
    ref_grads = torch.autograd.grad(ref.square().sum(), (x64, f64))
    for got, want in zip(grads, ref_grads, strict=True):
        assert (got.double() - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


def test_conv_bn_fold_in_eval_and_plain_in_training() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 3, 10, 10)
    bn.eval()
    assert torch.allclose(conv_bn(conv, bn, x), bn(conv(x)), atol=1e-5)
    bn.train()
    stats = bn.running_mean.clone()
    out = conv_bn(conv, bn, x)  # batch statistics, and the running ones are updated
    assert not torch.equal(bn.running_mean, stats)
    bn.running_mean.copy_(stats)
    assert torch.allclose(out, bn(conv(x)), atol=1e-6)


@pytest.mark.parametrize("choice", kernels.CHOICES["conv_relu"])
@pytest.mark.parametrize(("kernel", "stride"), [(7, 2), (3, 1)])
def test_conv_bn_relu_kernels_in_inference_equal_the_three_ops(
    kernel: int, stride: int, choice: str
) -> None:
    why = kernels.runnable("conv_relu", choice)
    if why:
        pytest.skip(why)
    conv = torch.nn.Conv2d(3, 8, kernel, stride=stride, padding=kernel // 2, bias=False)
    bn = torch.nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 3, 17, 16).contiguous(memory_format=torch.channels_last)
    expected = F.relu(bn(conv(x)))
    with torch.no_grad():  # folded BN, the fused oneDNN op or conv + in-place ReLU
        assert torch.allclose(conv_bn_relu(conv, bn, x, choice), expected, atol=1e-5)
    # with autograd: the unfused ops, gradients reach the convolution
    conv_bn_relu(conv, bn, x, choice).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["mlp", "sepconv", "dynamic_filter", "global_filter"])
def test_weights_train_when_the_input_needs_no_gradient(kind: str, kernel_set: str) -> None:
    """Frozen earlier layers: the input needs no gradient but this layer's weights do, so the
    inference shortcuts (fused ReLU, in-place passes) must not run; gradients equal the
    reference path's."""
    torch.manual_seed(0)
    layer = Mlp(16) if kind == "mlp" else create_token_mixer(kind, 16, (6, 6))
    x = torch.randn(2, 6, 6, 16)
    grads = []
    for reference in (False, True):
        set_reference_mode(layer, reference)
        layer.zero_grad()
        layer(x).square().sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for fast, ref in zip(*grads, strict=True):
        assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-5)


def test_resized_filter_cache_follows_weight_updates() -> None:
    """Inference at a new size caches the resized filters; a weight change must invalidate."""
    model = tokenmix.create_model("test_dfformer").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)  # cached path, same result
        mixer = model.stages[0][0].token_mixer
        mixer.complex_weights.mul_(2.0)
        changed = model(x)
        with reference_mode(model):
            ref = model(x)
    assert not torch.allclose(changed, first)
    assert (changed - ref).abs().max().item() <= 1e-5


def test_lvvit_stem_in_chunks_equals_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference runs the stem a few images at a time (small activations); with running
    statistics that is the same function. In training mode BatchNorm uses the batch's
    statistics, so the stem must see the whole batch even without autograd."""
    from tokenmix.kernels import policy

    with kernels.force(stem="chunked"):
        model = perturbed("test_lvvit").eval()
    stem = model.patch_embed
    x = torch.randn(5, 3, 64, 64)
    per_image = stem.conv1.out_channels * 32 * 32 * 4  # conv1's output, float32
    layers, seen = stem._layers, []

    def counting(chunk: torch.Tensor) -> torch.Tensor:
        seen.append(chunk.shape[0])
        return layers(chunk)

    with torch.no_grad():
        whole = stem(x)
        assert seen == []
        monkeypatch.setattr(stem, "_layers", counting)
        monkeypatch.setattr(policy, "stem_chunk_bytes", lambda: 2 * per_image)
        chunked = stem(x)
        assert seen == [2, 2, 1]
        assert torch.equal(chunked, whole)
        with reference_mode(model):
            ref_stem = stem(x)
            ref_out = model(x)
        # the stem's activations are O(10) here: float32 rounding relative to their scale
        assert (chunked - ref_stem).abs().max().item() <= 1e-5 * ref_stem.abs().max().item()
        assert (model(x) - ref_out).abs().max().item() <= 1e-5

        seen.clear()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        fast_train = stem(x)  # batch statistics: one call on the whole batch
        assert seen == [5]
        model.load_state_dict(state)  # undo the running-statistics update
        with reference_mode(model):
            ref_train = stem(x)
        assert (fast_train - ref_train).abs().max().item() <= 1e-5 * ref_train.abs().max().item()


@pytest.mark.parametrize("kind", ["dynamic_filter", "global_filter"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("matmul", [False, True])
def test_star_relu_affine_applied_in_the_spectrum(
    kind: str, bias: bool, matmul: bool, kernel_set: str
) -> None:
    """The fast FFT mixers apply StarReLU's scale to the filters and its bias to the zero
    frequency; with a scale and bias far from their init (and pwconv1 biases), inference and
    gradients equal the reference path's, FFT and DFT-matrix spectra alike, on a map with an odd
    width (6x5) and at its native size."""
    torch.manual_seed(0)
    layer = create_token_mixer(kind, 8, (6, 5), bias=bias)
    with torch.no_grad():
        layer.act1.scale.fill_(1.7)
        layer.act1.bias.fill_(-0.45)
        layer.complex_weights.normal_()
    x = torch.randn(3, 6, 5, 8)
    with spectral.dft_as_matmul(matmul):
        with torch.no_grad():
            fast = layer(x)
            with reference_mode(layer):
                ref = layer(x)
        assert (fast - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
        grads = []
        for reference in (False, True):
            set_reference_mode(layer, reference)
            layer.zero_grad()
            layer(x).square().sum().backward()
            grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
        set_reference_mode(layer, False)
    for name, ref_grad in grads[1].items():
        scale = max(1.0, ref_grad.abs().max().item())
        assert (grads[0][name] - ref_grad).abs().max().item() <= 1e-5 * scale, name
