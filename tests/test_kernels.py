"""The kernel backend: detection, forced choices, fallbacks, amp policy, bounded peak job.

Machine classes are faked by replacing the detected capabilities (``dataclasses.replace``), and
an AVX2-only CPU is emulated for real in a subprocess (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2``), where oneDNN's bf16 primitives fail exactly as on such a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import tokenmix
from tokenmix import kernels
from tokenmix.bench.worker import run_job
from tokenmix.kernels import amp, ops, policy


def fake(monkeypatch: pytest.MonkeyPatch, **changes: object) -> kernels.Capabilities:
    caps = dataclasses.replace(kernels.detect(), **changes)
    for module in (amp, ops, policy):
        monkeypatch.setattr(module, "detect", lambda caps=caps: caps)
    return caps


def test_capabilities_are_consistent() -> None:
    caps = kernels.detect()
    assert caps.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert caps.cpu_class == f"{caps.cpu_vendor}-{caps.cpu_capability}"
    assert not caps.onednn_bf16_linear or caps.cpu_native_bf16  # bf16 kernels need the units
    assert caps.mkldnn == torch.backends.mkldnn.is_available()
    assert caps.cpu_model in kernels.summary_line()


def test_amp_policy_per_machine_class(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, cpu_native_bf16=True)
    assert kernels.resolve_amp("auto", "cpu") == torch.bfloat16
    assert kernels.resolve_amp("bf16", "cpu") == torch.bfloat16
    assert kernels.resolve_amp("none", "cpu") is None
    assert kernels.resolve_amp("fp32", "cpu") is None
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        kernels.resolve_amp("fp16", "cpu")
    with pytest.raises(ValueError, match="choose from"):
        kernels.resolve_amp("int8", "cpu")

    fake(monkeypatch, cpu_native_bf16=False, cpu_capability="AVX2")
    monkeypatch.setattr(amp, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.resolve_amp("auto", "cpu") is None  # silently float32
    with pytest.warns(RuntimeWarning, match=r"capability AVX2.*slower than float32.*float32"):
        assert kernels.resolve_amp("bf16", "cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert kernels.resolve_amp("bf16", "cpu") is None


def test_forced_choice_the_machine_cannot_run_falls_back_to_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake(monkeypatch, onednn_fp32_linear=False, onednn_fp32_conv=False)
    assert "oneDNN float32 linear" in kernels.runnable("linear", "onednn")
    with kernels.force(linear="onednn", conv_relu="onednn"):
        assert kernels.choose("linear", in_features=64, out_features=64) == "blas"
        assert kernels.choose("conv_relu") == "unfused"
        model = tokenmix.create_model("test_lvvit")
    assert kernels.layer_choices(model)["ConvStem"]["conv_relu"] == {"unfused"}


def test_thresholds_table_decides_by_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = fake(monkeypatch, mkl=True)
    table = {"default": dict(policy._table()["default"])}
    table[caps.cpu_class] = {
        "blas_min_features": 320,
        "linear_grad": "onednn",
        "dense_dft_max_points": 49,
    }
    monkeypatch.setattr(policy, "_table", lambda: table)
    assert kernels.choose("linear", in_features=320, out_features=1280) == "blas"
    assert kernels.choose("linear_relu", in_features=320, out_features=1280) == "unfused"
    assert kernels.choose("linear", in_features=256, out_features=1024) == "onednn"
    table[caps.cpu_class]["linear_grad"] = "blas"  # oneDNN forward, torch.mm backward
    assert kernels.choose("linear", in_features=256, out_features=1024) == "onednn_fwd"
    assert kernels.choose("linear_relu", in_features=256, out_features=1024) == "onednn"
    assert kernels.choose("dft", points=49) == "dense"
    assert kernels.choose("dft", points=196) == "fft"
    monkeypatch.setenv("TOKENMIX_KERNELS", "plain")
    assert kernels.choose("linear", in_features=64, out_features=64) == "blas"
    assert kernels.choose("dft", points=49) == "fft"


def test_bf16_relu_fusion_only_with_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bf16 units the fused bf16 oneDNN op (which fails on AVX2 CPUs) is never called:
    the product runs as autocast's plain bf16 linear, then the ReLU."""
    fake(monkeypatch, onednn_bf16_linear=False)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    def spy(*args: object) -> torch.Tensor:
        calls.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(ops.torch.ops.mkldnn, "_linear_pointwise", spy, raising=False)
    x, w = torch.randn(8, 16), torch.randn(32, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = ops.linear_relu(x, w, None, "onednn", "onednn")
        want = F.relu(F.linear(x, w))
    assert torch.bfloat16 not in calls
    assert torch.allclose(got.float(), want.float(), atol=1e-2, rtol=1e-2)


def test_peak_job_is_bounded_and_reports_emulated_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenmix.bench import worker

    fake(monkeypatch, cpu_native_bf16=False)
    out = run_job({"kind": "peak", "device": "cpu", "budget_s": 0.05})
    assert out["status"] == "ok", out
    assert out["emulated"] == ["bf16"] and out["gflops"]["bf16_matmul"] > 0
    # an emulated rate of ~1 GFLOP/s sizes the product to ~0.1 s a call, not 2048^3 (17 s)
    monkeypatch.setattr(worker, "_gflops", lambda *a, **k: 1.0)
    n, rate = worker._sized_product(torch.device("cpu"), torch.bfloat16, 2048)
    assert rate == 1.0 and 2 * n**3 / 1e9 <= 0.1
    monkeypatch.setattr(worker, "_gflops", lambda *a, **k: 1e6)  # fast: capped at the maximum
    assert worker._sized_product(torch.device("cpu"), torch.float32, 2048)[0] == 2048


AVX2_SCRIPT = """
import json, torch, warnings
import tokenmix
from tokenmix import kernels
caps = kernels.detect()
model = tokenmix.create_model("test_cdfformer").eval()
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x).float()
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    dtype = kernels.resolve_amp("bf16", "cpu")
print(json.dumps({"caps": caps.as_dict(), "err": (low - ref).abs().max().item(),
                  "scale": ref.abs().max().item(), "dtype": str(dtype),
                  "warning": str(w[0].message) if w else ""}))
"""


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="emulating an AVX2-only CPU needs an x86 CPU with at least AVX2",
)
def test_avx2_only_cpu_emulated_runs_bf16_without_crashing() -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop("TOKENMIX_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, "-c", AVX2_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["caps"]["cpu_capability"] == "AVX2"
    assert not out["caps"]["cpu_native_bf16"] and not out["caps"]["onednn_bf16_linear"]
    assert out["err"] <= 0.05 * out["scale"]  # a bf16 forward, through plain ops
    assert out["dtype"] == "None" and "AVX2" in out["warning"]


_FAULTS_SCRIPT = """
import resource, sys, torch
from tokenmix import kernels

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # a step's activations: 8 x 2 MiB alive together, then all freed
        alive = [torch.ones(2 << 20, dtype=torch.uint8) for _ in range(8)]
        del alive
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
plain = faults()
described = kernels.retain_freed_memory()
assert kernels.retain_freed_memory() == described  # idempotent
faults()
print(plain, faults(), described)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retained_malloc_stops_the_page_faults_of_reallocation() -> None:
    """With glibc's default thresholds each 2 MiB block a "step" frees goes back to the
    system (and the next step faults its pages in again); with retain_freed_memory the heap
    keeps them (in a subprocess: the setting is process-wide and cannot be undone).

    The baseline pins glibc's static defaults (128 KiB mmap and trim thresholds) through its
    environment variables: left to itself glibc raises its mmap threshold after the first free
    of an mmapped block, and whether the freed heap top is then trimmed depends on what else
    the interpreter allocated, so an unpinned baseline is sometimes 0 faults."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
        check=True,
    ).stdout.split(maxsplit=2)
    plain, retained, described = int(out[0]), int(out[1]), out[2]
    assert plain > 9 * 2000, plain  # every step faults its pages in again
    assert retained < plain / 20, (plain, retained)
    assert "glibc malloc keeps freed memory" in described
