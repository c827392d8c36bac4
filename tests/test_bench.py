"""Benchmark machinery: MAC counts with FFTs, timing, memory, workers, suite output.

Speed itself is never asserted here (a shared CI machine makes timed tests flaky); the
targets are measured by ``tokenmix bench`` as ratios in one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tokenmix
from tokenmix.bench.flops import count_macs
from tokenmix.bench.memory import cpu_peak_rss_growth, is_out_of_memory
from tokenmix.bench.suite import SuiteConfig, format_table, load_results, run_suite, write_results
from tokenmix.bench.timing import TimingSummary, interleaved_timings
from tokenmix.bench.worker import run_job
from tokenmix.bench.workload import Workload
from tokenmix.layers import reference_mode


def _raw_macs(model: torch.nn.Module, size: int) -> int:
    """MACs as the stock counters see the official computation (the reference path): no FFTs,
    no complex products."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), reference_mode(model):  # plain aten ops only
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    return counter.get_total_flops() // 2


def _fft_macs(model: torch.nn.Module, size: int) -> float:
    """Analytic FFT + complex-product MACs of every spectral mixer (see bench/flops.py)."""
    flops = 0.0
    for i, stage in enumerate(model.stages):
        side = size // 2 ** (i + 2)
        points = side * side
        for block in stage:
            mixer = block.token_mixer
            if not hasattr(mixer, "complex_weights"):
                continue
            channels = mixer.med_channels
            flops += 2 * int(channels * 2.5 * points * math.log2(points))  # rfft2 + irfft2
            flops += 6 * side * (side // 2 + 1) * channels  # complex filter product
    return flops / 2


@pytest.mark.parametrize("name", ["test_dfformer", "test_gfformer", "test_cdfformer"])
def test_macs_include_the_ffts(name: str) -> None:
    model = tokenmix.create_model(name).eval()
    total = count_macs(model, (3, 64, 64))
    extra = total - _raw_macs(model, 64)
    expected = _fft_macs(model, 64)
    assert expected > 0
    assert abs(extra - expected) <= 1  # integer rounding of the halving


def test_macs_of_conv_and_attention_models_need_no_fft_terms() -> None:
    model = tokenmix.create_model("test_caformer").eval()
    assert count_macs(model, (3, 64, 64)) >= _raw_macs(model, 64)
    assert _fft_macs(model, 64) == 0


@pytest.mark.parametrize(
    ("name", "paper", "with_fft"),
    # The papers' tables (224x224) come from counters that skip the FFTs: DFFormer-S18's
    # 3.8 G becomes 3.9 G with them; ConvFormer/CAFormer have no FFT.
    [("dfformer_s18", 3.8, 3.9), ("convformer_s18", 3.9, 3.9), ("caformer_s18", 4.1, 4.1)],
)
def test_full_size_macs_match_the_papers(name: str, paper: float, with_fft: float) -> None:
    with torch.device("meta"):
        model = tokenmix.create_model(name)
    assert round(_raw_macs(model, 224) / 1e9, 1) == paper
    assert round(count_macs(model) / 1e9, 1) == with_fft


def test_interleaved_timings_round_robin() -> None:
    calls: list[str] = []
    summaries = interleaved_timings(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        torch.device("cpu"),
        warmup=2,
        repeats=4,
    )
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up first, per candidate
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating order
    assert summaries["a"].repeats == 4 and summaries["b"].median >= 0
    with pytest.raises(ValueError):
        interleaved_timings({"a": lambda: None}, torch.device("cpu"), repeats=0)


def test_timing_summary_statistics() -> None:
    s = TimingSummary.of([4.0, 1.0, 3.0, 2.0, 100.0])
    assert s.median == 3.0 and s.minimum == 1.0 and s.q1 <= s.median <= s.q3
    with pytest.raises(ValueError):
        TimingSummary.of([])


def test_cpu_peak_rss_growth_sees_a_transient_allocation() -> None:
    def work() -> None:
        t = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched, then freed
        assert t.sum().item() > 0

    growth = cpu_peak_rss_growth(work)
    assert 56 * 2**20 <= growth <= 512 * 2**20


def test_out_of_memory_classification() -> None:
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_workload_validates_and_steps() -> None:
    with pytest.raises(ValueError, match="dtype"):
        Workload("test_dfformer", 64, dtype="int8")
    prepared = Workload("test_dfformer", 64, batch=2, train=True).prepare()
    before = prepared.model.head.fc2.weight.detach().clone()
    prepared.step("reference")
    prepared.step("fast")
    assert not torch.equal(before, prepared.model.head.fc2.weight)  # optimizer stepped
    prepared.step("fast@bf16")  # another autocast dtype on the same weights
    with pytest.raises(ValueError, match="variant"):
        prepared.step("slow")


def test_worker_jobs_in_process() -> None:
    job = {
        "kind": "time",
        "workload": Workload("test_dfformer", 64, batch=1).to_dict(),
        "paths": ["fast", "reference"],
        "warmup": 0,
        "repeats": 2,
    }
    out = run_job(job)
    assert out["status"] == "ok" and set(out["timings"]) == {"fast", "reference"}
    bad = run_job({**job, "workload": {**job["workload"], "model": "no_such_model"}})
    assert bad["status"] == "error" and "no_such_model" in bad["error"]


def test_suite_end_to_end_reports_oom_not_crash(tmp_path: Path) -> None:
    """Two sizes, three variants; a memory cap makes the larger size run out of memory."""
    config = SuiteConfig(
        models=("test_dfformer",),
        resolutions=(64, 1024),
        paths=("fast", "reference", "fast@bf16"),
        batch=4,
        warmup=0,
        repeats=1,
        threads=1,
        memory_limit_gb=0.2,
    )
    result = run_suite(config, progress=False)
    rows = {(r.resolution, r.path): r for r in result.rows}
    assert {k: r.status for k, r in rows.items()} == {
        (64, "fast"): "ok",
        (64, "reference"): "ok",
        (64, "fast@bf16"): "ok",
        (1024, "fast"): "oom",
        (1024, "reference"): "oom",
        (1024, "fast@bf16"): "oom",
    }, {k: r.error for k, r in rows.items() if r.status == "error"}
    assert rows[(64, "fast@bf16")].speedup_vs_reference is not None
    small = rows[(64, "fast")]
    assert small.throughput > 0 and small.peak_memory_mb > 0 and small.gmacs > 0
    assert rows[(64, "reference")].speedup_vs_reference == 1.0
    assert small.speedup_vs_reference == pytest.approx(
        small.throughput / rows[(64, "reference")].throughput
    )
    assert result.machine["torch"] == torch.__version__ and result.machine["threads"] == 1
    assert "OOM" in format_table(result)
    written = write_results(result, tmp_path, "run")
    names = sorted(p.name for p in written)
    assert names == ["run.csv", "run.json", "run_memory.png", "run_throughput.png"]
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["machine"]["cpu"] and len(data["rows"]) == 6
    assert load_results(tmp_path / "run.json").rows == result.rows


def test_suite_times_with_the_requested_cpu_allocator() -> None:
    """The timing worker (a fresh process) runs with the malloc setting asked for, and the
    result says which: the reference path's page faults depend on it."""
    base = {"models": ("test_dfformer",), "resolutions": (32,), "batch": 1, "warmup": 0}
    for allocator, expected in (("system", "default"), ("retain", "keeps freed memory")):
        config = SuiteConfig(**base, repeats=1, memory=False, cpu_allocator=allocator)
        result = run_suite(config, progress=False)
        assert all(r.status == "ok" for r in result.rows), [r.error for r in result.rows]
        assert result.machine["cpu_allocator"] == allocator
        assert expected in result.machine["malloc"], result.machine["malloc"]


def test_suite_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="cpu_allocator"):
        SuiteConfig(cpu_allocator="jemalloc")
    with pytest.raises(ValueError, match="variant 'turbo'"):
        SuiteConfig(paths=("fast", "turbo"))
    with pytest.raises(ValueError, match="variant 'fast@int8'"):
        SuiteConfig(paths=("fast@int8",))
    with pytest.raises(ValueError, match="distinct"):
        SuiteConfig(paths=("fast", "fast"))
    with pytest.raises(ValueError, match="fp16"):
        SuiteConfig(paths=("fast@fp16",), device="cpu")
    with pytest.raises(ValueError, match="fp16"):
        SuiteConfig(dtype="fp16", device="cpu")


def test_cli_rejects_unknown_models(capsys: pytest.CaptureFixture[str]) -> None:
    from tokenmix.cli.main import main

    assert main(["bench", "--models", "dfformer_s81", "--res", "64"]) == 2
    assert "dfformer_s81" in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_peak_share_uses_the_dtype_that_ran(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 (or auto) row on a CPU without bf16 units ran float32: its %peak is taken against
    the float32 peak, not against the emulated bf16 figure (which made it look 20x the peak)."""
    from tokenmix import kernels
    from tokenmix.bench.suite import computed_dtype, matmul_peak

    monkeypatch.setattr(kernels, "native_bf16", lambda device: native)
    machine = {"matmul_peak_gflops": {"fp32_blas": 100.0, "fp32_onednn": 120.0, "bf16_blas": 3.0}}
    ran = computed_dtype("bf16", "cpu")
    assert ran == ("bf16" if native else "fp32")
    assert computed_dtype("auto", "cpu") == ran
    assert computed_dtype("fp32", "cpu") == "fp32"
    assert matmul_peak(machine, ran) == (3.0 if native else 120.0)
