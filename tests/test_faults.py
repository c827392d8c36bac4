"""Faults around a run folder: a second run, a full disk, a read-only folder, truncated files,
and kills at every kind of point inside checkpoint writes.

The kill test forks training processes from one driver process (``python -m
tests.test_faults SPEC``) so that torch is imported once, arms a hook on the file operations a
checkpoint write is made of (``safetensors`` and ``torch.save`` writes, ``os.replace``,
``os.fsync``, ``shutil.rmtree`` / ``move`` / ``copy2``), and SIGKILLs the child at the Nth one,
half the time after leaving the file being written torn at a random length. After each kill
every visible checkpoint must read back in full, and the run resumed to its end must have the
uninterrupted run's losses and weights. ``tests/test_resume.py`` kills at a random instant
(mostly mid-step); this test aims the kills at the write window.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenmix.cli.main import main
from tokenmix.config import load_config
from tokenmix.engine import checkpoint as ckpt
from tokenmix.engine.metrics import read_metrics
from tokenmix.engine.runlock import LOCK_FILE, RunLock, RunLockedError
from tokenmix.engine.train import fit
from tokenmix.models import CheckpointError

from .conftest import ROOT
from .test_engine import TINY

# 3 steps an epoch (48 images, batch 16), 2 epochs, a checkpoint every step, EMA on: the
# write sequence has every file kind, pruning, best weights and results.json in it.
FAULT_RUN = [
    *TINY,
    "data.train_limit=48",
    "data.val_limit=16",
    "train.epochs=2",
    "ema.enabled=true",
    "checkpoint.every_steps=1",
    "checkpoint.keep_last=2",
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (6 steps, evaluated at 3 and 6) with step checkpoints 2, 3, 4, 6 and
    best weights; copy it before changing it."""
    run = tmp_path_factory.mktemp("faults") / "run"
    more = ["ema.enabled=false", "checkpoint.every_steps=2", "checkpoint.keep_last=5"]
    cfg = load_config(overrides=[*FAULT_RUN, *more])
    fit(cfg, run)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _tiny_state(step: int) -> dict:
    return {
        "model_state": {"w": torch.full((64,), float(step))},
        "train_state": {"step": step},
        "meta": {"step": step},
    }


# --- 4: one run per folder -------------------------------------------------------------------
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid()}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_in_a_busy_folder_is_refused_naming_the_holder(tmp_path: Path, capsys) -> None:
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe = tmp_path / "tiny.yaml"
        recipe.write_text("model: {name: test_convformer}\n")
        args = ["train", "--config", str(recipe), "--set", *TINY, f"run.output_dir={run.parent}"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and str(run) in err and "run.name" in err
        assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run) as lock:  # the kernel dropped the dead holder's lock
        assert lock.held and json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_lock_is_exclusive_within_one_process_and_released_after_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(overrides=[*TINY, "train.max_steps=1"])
    with RunLock(run), pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
        fit(cfg, run)
    fit(cfg, run)  # free again, and the run itself released it
    with RunLock(run):
        pass


# --- 14: disk full, read-only folders --------------------------------------------------------
def test_disk_full_mid_checkpoint_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    d = tmp_path / "runs" / "x" / "checkpoints"
    ckpt.save_checkpoint(d, 36, **_tiny_state(36))
    real = ckpt.save_file

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ckpt.save_checkpoint(d, 40, **_tiny_state(40))
    text = str(err.value)
    assert text.startswith("no space left on device while writing checkpoint step_00000040")
    assert str(d) in text and "step_00000036 is intact" in text and "--resume" in text
    assert err.value.errno == errno.ENOSPC
    assert isinstance(err.value, RuntimeError)  # the command line prints it, no traceback
    assert sorted(p.name for p in d.iterdir()) == ["step_00000036"]  # no .tmp_step_* left
    monkeypatch.setattr(ckpt, "save_file", real)
    assert ckpt.load_checkpoint_weights(d / "step_00000036")["w"][0] == 36.0


def test_writer_errors_without_an_errno_are_explained(tmp_path: Path, monkeypatch) -> None:
    """torch's zip writer and safetensors' Rust writer do not raise OSError on a full disk."""
    from safetensors import SafetensorError

    d = tmp_path / "checkpoints"
    ckpt.save_checkpoint(d, 1, **_tiny_state(1))

    def torch_full(obj, f):
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(
        ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20)
    )
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ckpt.save_checkpoint(d, 2, **_tiny_state(2))
    assert "no space left on device (most likely) while writing checkpoint step_00000002" in str(
        err.value
    )
    assert "inline_container.cc" in str(err.value) and "1 MiB free" in str(err.value)
    monkeypatch.undo()

    def rust_full(tensors, filename, metadata=None):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(ckpt, "save_file", rust_full)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"^no space left on device while") as err:
        ckpt.save_checkpoint(d, 2, **_tiny_state(2))
    assert err.value.errno == errno.ENOSPC and "step_00000001 is intact" in str(err.value)
    assert [p.name for p in d.iterdir()] == ["step_00000001"]


def test_disk_full_during_a_run_stops_it_cleanly(
    finished_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Through the whole command: the second new checkpoint (step 9, the end of epoch 3) hits
    a full disk."""
    run = _copy(finished_run, tmp_path)
    real, calls = ckpt.save_file, {"n": 0}

    def fills_up(tensors, filename, metadata=None):
        calls["n"] += Path(filename).parent.name.startswith(".tmp_step_")
        if calls["n"] >= 2:
            Path(filename).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", fills_up)
    code = main(["train", "--resume", str(run), "--set", "train.epochs=4"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no space left on device while writing checkpoint step_00000009" in err
    assert str(run / "checkpoints") in err and "step_00000008 is intact" in err
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [n for n in names if n.startswith(".")], names
    assert "step_00000008" in names and "step_00000009" not in names


def test_write_errors_of_a_read_only_folder_are_clear_without_chmod(
    tmp_path: Path, monkeypatch
) -> None:
    """What a read-only mount (EROFS) does; runs as root too, where chmod cannot test it."""
    from tokenmix.engine import runlock

    run = tmp_path / "run"
    real_open = os.open

    def read_only(path, flags, *args):
        if Path(path).name == LOCK_FILE:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(runlock.os, "open", read_only)
    with pytest.raises(runlock.RunFolderError) as err:
        fit(load_config(overrides=[*TINY, "train.max_steps=1"]), run)
    assert f"cannot write to the run folder {run}: read-only file system" in str(err.value)
    monkeypatch.undo()

    d = run / "checkpoints"
    ckpt.save_checkpoint(d, 1, **_tiny_state(1))

    def no_mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ckpt.save_checkpoint(d, 2, **_tiny_state(2))
    assert str(err.value).startswith("read-only file system while writing checkpoint step_00000002")
    assert "step_00000001 is intact" in str(err.value)


def test_full_disk_while_logging_names_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    """A file object's write() names no file; the error still names the folder and cause."""
    from tokenmix.engine.metrics import MetricsWriter
    from tokenmix.engine.runlock import RunFolderError

    def full(self, kind, step, **values):
        if step >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MetricsWriter, "write", full)
    run = tmp_path / "run"
    with pytest.raises(RunFolderError) as err:
        fit(load_config(overrides=[*TINY, "checkpoint.every_steps=1"]), run)
    text = str(err.value)
    assert text.startswith(f"no space left on device while writing to {run}")
    assert "step_00000001 is intact" in text


needs_permissions = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions"
)


@needs_permissions
def test_read_only_run_folder_is_a_clear_error(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    (run / LOCK_FILE).unlink(missing_ok=True)
    run.chmod(0o555)
    try:
        assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 2
    finally:
        run.chmod(0o755)
    err = capsys.readouterr().err
    assert f"cannot write to the run folder {run}: permission denied" in err


@needs_permissions
def test_read_only_checkpoints_folder_keeps_earlier_checkpoints(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    ckpt.save_checkpoint(d, 1, **_tiny_state(1))
    d.chmod(0o555)
    try:
        with pytest.raises(ckpt.CheckpointWriteError) as err:
            ckpt.save_checkpoint(d, 2, **_tiny_state(2))
    finally:
        d.chmod(0o755)
    assert str(err.value).startswith("permission denied while writing checkpoint step_00000002")
    assert str(d) in str(err.value) and "step_00000001 is intact" in str(err.value)
    assert ckpt.load_train_state(d / "step_00000001") == {"step": 1}


# --- 15: truncated files ---------------------------------------------------------------------
def test_resume_falls_back_past_a_truncated_newest_checkpoint(
    finished_run: Path, tmp_path: Path, caplog
) -> None:
    run = _copy(finished_run, tmp_path)
    bad = run / "checkpoints" / "step_00000006" / ckpt.MODEL_FILE
    _truncate(bad)
    size = bad.stat().st_size
    assert main(["train", "--resume", str(run)]) == 0
    assert f"checkpoint {bad.parent} is damaged: {bad}" in caplog.text
    assert "falling back" in caplog.text
    # step 4 was resumed, the damaged step 6 moved aside (kept), and steps 5-6 trained again
    (branch,) = (run / "branches").iterdir()
    assert (branch / "checkpoints" / "step_00000006" / ckpt.MODEL_FILE).stat().st_size == size
    ckpt.check_checkpoint(run / "checkpoints" / "step_00000006")
    steps = [r["step"] for r in read_metrics(run) if r["kind"] == "train"]
    assert steps == list(range(1, 7))


def test_damaged_checkpoints_name_the_file(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    step4 = run / "checkpoints" / "step_00000004"
    _truncate(step4 / ckpt.MODEL_FILE)
    # an explicitly named checkpoint is not replaced by another: a clear error instead
    assert main(["train", "--resume", str(step4)]) == 2
    assert str(step4 / ckpt.MODEL_FILE) in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"step_00000004/model\.safetensors"):
        ckpt.load_checkpoint_weights(step4)
    _truncate(step4 / ckpt.STATE_FILE)
    with pytest.raises(CheckpointError, match=r"step_00000004/state\.pt"):
        ckpt.check_checkpoint(step4)


def test_eval_of_a_truncated_best_file_names_it(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    best = run / "checkpoints" / ckpt.BEST_FILE
    _truncate(best, 0.3)
    args = ["eval", "--checkpoint", str(run), "--data", "digits", "--limit", "8", "--workers", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(best) in err and "not a readable safetensors file" in err


# --- proof: kills inside checkpoint writes ---------------------------------------------------
# file operations the checkpoint, best-weights and run-file writes are made of
HOOKED = [
    ("tokenmix.engine.checkpoint", "save_file"),
    ("torch", "save"),
    ("os", "replace"),
    ("os", "fsync"),
    ("shutil", "rmtree"),
    ("shutil", "move"),
    ("shutil", "copy2"),
]


# what the hooks do in this process: count, and kill at operation number ``kill_at``
_FAULT: dict = {"count": 0, "kill_at": None, "rng": random.Random(0), "installed": False}


def _install_hooks() -> None:
    """Wrap the operations in :data:`HOOKED` once; each call counts, and the one numbered
    ``_FAULT["kill_at"]`` SIGKILLs this process (a file write: half the time after writing
    the file and cutting it to a random length, as a kill inside ``write()`` would)."""
    import importlib

    if _FAULT["installed"]:
        return
    _FAULT["installed"] = True
    for module, name in HOOKED:
        owner = importlib.import_module(module)
        real = getattr(owner, name)

        def hooked(*args, _real=real, _name=name, **kwargs):
            _FAULT["count"] += 1
            if _FAULT["count"] == _FAULT["kill_at"]:
                rng = _FAULT["rng"]
                if _name in ("save_file", "save") and rng.random() < 0.5:
                    _real(*args, **kwargs)
                    target = Path(args[1])
                    with open(target, "r+b") as f:
                        f.truncate(rng.randrange(max(1, target.stat().st_size)))
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(owner, name, hooked)


def _child(argv: list[str], kill_at: int | None, seed: int) -> str:
    """Run ``tokenmix argv`` in a forked child; ``"killed"``, ``"done"`` or a failure."""
    pid = os.fork()
    if pid == 0:  # the child: never return into the driver
        code = 3
        try:
            _FAULT.update(count=0, kill_at=kill_at, rng=random.Random(seed))
            code = main(argv)
        except BaseException:  # report anything, then leave
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return "done" if code == 0 else f"exit {code}"


def _check_intact(run: Path) -> int:
    """Every visible checkpoint reads back in full (so the newest is intact); its step."""
    found = ckpt.list_checkpoints(run / "checkpoints")
    for path in found:  # every file read in full: a torn one raises, naming itself
        step = ckpt.load_train_state(path)["counters"]["step"]
        assert path.name == f"step_{step:08d}"
        ckpt.load_checkpoint_weights(path, ckpt.MODEL_FILE)
        ckpt.load_checkpoint_weights(path, ckpt.EMA_FILE)
    return int(found[-1].name[5:]) if found else 0


def _final(run: Path) -> tuple[list[tuple[int, float]], dict[str, torch.Tensor]]:
    losses = [(r["step"], r["loss"]) for r in read_metrics(run) if r["kind"] == "train"]
    last = ckpt.latest_checkpoint(run / "checkpoints")
    weights = {
        f"{name}:{k}": v
        for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE)
        for k, v in ckpt.load_checkpoint_weights(last, name).items()
    }
    return losses, weights


def _driver(spec_path: str) -> int:
    """Kill runs at seeded points of their write sequence until ``kills`` kills happened (at
    most ``per_round`` in one run, then it is resumed to its end and compared with the
    uninterrupted run, and a new run starts); writes a report when every check held.

    The uninterrupted run goes first, in this process: it counts the operations of a whole
    run and warms up the lazy imports and caches that every forked child then shares.
    """
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    root, rng = Path(spec["root"]), random.Random(spec["seed"])

    def argv(out: Path, resume: bool) -> list[str]:
        return [
            "train",
            "--config",
            spec["recipe"],
            "--set",
            *spec["overrides"],
            f"run.output_dir={out}",
            *(["--resume"] if resume else []),
        ]

    _install_hooks()
    assert main(argv(root / "ref", False)) == 0
    events = _FAULT["count"]
    ref_losses, ref_weights = _final(root / "ref" / "recipe")
    kills: list[dict] = []
    rounds = 0
    while len(kills) < spec["kills"]:
        rounds += 1
        run = root / f"round{rounds}" / "recipe"
        in_round = 0
        while True:
            resume = ckpt.latest_checkpoint(run / "checkpoints") is not None
            kill_at = None
            if in_round < spec["per_round"] and len(kills) < spec["kills"]:
                kill_at = rng.randint(1, min(events, spec["window"]))
            status = _child(argv(run.parent, resume), kill_at, rng.randrange(2**31))
            if status == "killed":
                in_round += 1
                kills.append({"round": rounds, "at": kill_at, "step": _check_intact(run)})
                continue
            assert status == "done", f"round {rounds}: {status}"
            break
        losses, weights = _final(run)
        assert [s for s, _ in losses] == [s for s, _ in ref_losses], losses
        assert losses == ref_losses, f"round {rounds}: losses differ from the uninterrupted run"
        assert weights.keys() == ref_weights.keys()
        for key, value in weights.items():
            assert torch.equal(value, ref_weights[key]), f"round {rounds}: {key} differs"
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        assert not leftovers, leftovers
        assert json.loads((run / "results.json").read_text())["steps"] == ref_losses[-1][0]
    (root / "report.json").write_text(json.dumps({"events": events, "kills": kills}))
    return 0


def _kill_test(tmp_path: Path, kills: int, per_round: int, seed: int) -> dict:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {name: test_convformer}\n")
    spec = {
        "root": str(tmp_path),
        "recipe": str(recipe),
        "overrides": FAULT_RUN,
        "seed": seed,
        "kills": kills,
        "per_round": per_round,
        "window": 40,  # about two checkpoints' worth of operations: kills land close together
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_faults", str(tmp_path / "spec.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["kills"]) >= kills
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kills_inside_checkpoint_writes_resume_to_the_same_run(tmp_path: Path) -> None:
    report = _kill_test(tmp_path, kills=3, per_round=3, seed=1)
    assert any(k["step"] > 0 for k in report["kills"])  # kills after progress, not only at start


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_many_kills_inside_checkpoint_writes(tmp_path: Path) -> None:
    report = _kill_test(tmp_path, kills=24, per_round=6, seed=7)
    hit = {k["at"] for k in report["kills"]}
    assert len(hit) >= 10  # spread over many different points of the write sequence


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1]))
