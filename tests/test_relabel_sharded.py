"""`tokenmix relabel` under torchrun (2 CPU processes, Gloo) writes the one-process label file.

Every run here goes through the command, so ``index.json`` (which records the command's
settings) is comparable too. The sharded runs are real ``torchrun`` launches; crashes are
injected by running this module as the torchrun script: it wraps the dataset so that loading one
row raises, on whichever rank owns it (in torchrun's first attempt only, so that with
``--max-restarts 1`` torchrun's restart is the resume), and logs the rows each rank loads, so a
test can check that a resume skips every chunk recorded as finished. All processes use one
thread, so the teacher's arithmetic is the same in every process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import tokenmix
from tokenmix.cli.main import main as cli_main
from tokenmix.data.token_labels import TokenLabelStore

from .test_token_labeling import _image_folder

ROOT = Path(__file__).resolve().parents[1]
FILES = ("labels.npy", "index.json", "progress.json")
NUM_IMAGES = 16
CHUNK = 2  # 8 chunks: in a fresh 2-process run, even chunks go to rank 0 and odd to rank 1
ENV_CRASH_AT = "TOKENMIX_TEST_RELABEL_CRASH_AT"
ENV_LOG = "TOKENMIX_TEST_RELABEL_LOG"
ATTEMPT = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun in its workers: 0, then 1 after a restart


class _Faulty:
    """Wraps a dataset: `load` logs the row into this rank's log and raises at one row."""

    def __init__(self, dataset, crash_at: int | None, log_dir: Path | None) -> None:
        self.dataset, self.crash_at, self.classes = dataset, crash_at, dataset.classes
        name = f"loaded-rank{os.environ.get('RANK', '0')}-attempt{os.environ.get(ATTEMPT, '0')}"
        self.log = None if log_dir is None else log_dir / f"{name}.txt"

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_id(self, i: int) -> str:
        return self.dataset.sample_id(i)

    def load(self, i: int) -> Image.Image:
        if i == self.crash_at:
            raise RuntimeError(f"simulated crash at row {i}")
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"{i}\n")
        return self.dataset.load(i)


def _install_fault(crash_at: int | None, log_dir: Path | None, monkeypatch=None) -> None:
    """Make the command open its dataset through :class:`_Faulty`."""
    from tokenmix.data import datasets

    real = datasets.open_dataset

    def faulty(*args, **kwargs):
        return _Faulty(real(*args, **kwargs), crash_at, log_dir)

    if monkeypatch is None:
        datasets.open_dataset = faulty
    else:
        monkeypatch.setattr(datasets, "open_dataset", faulty)


def _args(images: Path, teacher: Path, out: Path) -> list[str]:
    return [
        "relabel",
        "--teacher",
        "test_lvvit",
        "--checkpoint",
        str(teacher),
        "--data",
        str(images),
        "--out",
        str(out),
        "--topk",
        "3",
        "--grid",
        "6",
        "--batch-size",
        "2",
        "--chunk-size",
        str(CHUNK),
        "--device",
        "cpu",
        "--workers",
        "0",
    ]


def _torchrun(
    args: list[str],
    *,
    crash_at: int | None = None,
    log_dir: Path | None = None,
    max_restarts: int = 0,
) -> subprocess.CompletedProcess:
    """Two processes of this module (a faulty dataset) or of the command itself."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    target = ["-m", "tokenmix.cli.main"]
    if crash_at is not None or log_dir is not None:
        target = ["-m", "tests.test_relabel_sharded"]  # run from the repository root
        env[ENV_CRASH_AT] = "" if crash_at is None else str(crash_at)
        env[ENV_LOG] = "" if log_dir is None else str(log_dir)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run += ["--max-restarts", str(max_restarts)]
    if max_restarts:
        # torchrun's workers otherwise share its rendezvous store across restarts and read
        # the crashed attempt's Gloo/NCCL addresses (pytorch/pytorch#135712, #167288)
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return subprocess.run(
        [*run, *target, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _in_process(args: list[str]) -> int:
    """The command in this process, single-threaded like the torchrun processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli_main(args)
    finally:
        torch.set_num_threads(threads)


def _same_files(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(FILES), "records left behind"
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _recorded(out: Path) -> set[int]:
    """Rows the progress records of `out` mark as finished."""
    rows: set[int] = set()
    for path in out.glob("progress-rank*.json"):
        for start, end in json.loads(path.read_text())["rows"]:
            rows.update(range(start, end))
    return rows


def _loaded(log_dir: Path, rank: str = "*", attempt: str = "*") -> list[int]:
    """Rows the faulty dataset loaded, from the logs of the given rank(s) and attempt(s)."""
    logs = log_dir.glob(f"loaded-rank{rank}-attempt{attempt}.txt")
    return sorted(int(v) for p in logs for v in p.read_text().split())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Images, teacher checkpoint and the one-process reference label directory."""
    root = tmp_path_factory.mktemp("relabel_sharded")
    images = _image_folder(root / "images", per_class=NUM_IMAGES // 2)
    teacher = root / "teacher.pth"
    torch.save(tokenmix.create_model("test_lvvit").state_dict(), teacher)
    assert _in_process(_args(images, teacher, root / "reference")) == 0
    return images, teacher, root / "reference"


def test_two_processes_write_the_one_process_file(setup, tmp_path: Path) -> None:
    images, teacher, reference = setup
    proc = _torchrun(_args(images, teacher, tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"{NUM_IMAGES} samples") == 1, "only rank 0 reports"
    _same_files(tmp_path / "two", reference)
    assert len(TokenLabelStore(tmp_path / "two")) == NUM_IMAGES


def test_torchrun_restart_after_a_crash_resumes(setup, tmp_path: Path) -> None:
    """Rank 1 dies in its third chunk; torchrun restarts both ranks, which finish the file."""
    images, teacher, reference = setup
    out, logs = tmp_path / "labels", tmp_path / "logs"
    logs.mkdir()
    # row 10 is in chunk 5, rank 1's third (1, 3, 5, 7); torchrun stops rank 0 and restarts
    proc = _torchrun(_args(images, teacher, out), crash_at=10, log_dir=logs, max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "simulated crash at row 10" in proc.stderr
    snapshot = logs / "finished-before-attempt1.json"  # the records the restart found
    finished = set(json.loads(snapshot.read_text()))
    assert {2, 3, 6, 7} <= finished and 10 not in finished  # rank 1's first two chunks
    assert _loaded(logs, "1", "0") == [2, 3, 6, 7]  # then row 10 raised
    assert _loaded(logs, attempt="1") == sorted(set(range(NUM_IMAGES)) - finished)  # once each
    _same_files(out, reference)


def test_one_process_finishes_a_crashed_two_process_run(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, teacher, reference = setup
    out, logs = tmp_path / "labels", tmp_path / "logs"
    crashed = _torchrun(_args(images, teacher, out), crash_at=7)  # rank 1's second chunk
    assert crashed.returncode != 0 and "simulated crash at row 7" in crashed.stderr
    finished = _recorded(out)
    assert {2, 3} <= finished and 7 not in finished
    with pytest.raises(ValueError, match="incomplete"):
        TokenLabelStore(out)
    logs.mkdir()
    _install_fault(None, logs, monkeypatch)
    assert _in_process(_args(images, teacher, out)) == 0
    assert _loaded(logs) == sorted(set(range(NUM_IMAGES)) - finished)
    _same_files(out, reference)


def test_two_processes_finish_a_crashed_one_process_run(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, teacher, reference = setup
    out, logs = tmp_path / "labels", tmp_path / "logs"
    _install_fault(9, None, monkeypatch)
    assert _in_process(_args(images, teacher, out)) == 2  # the command's error exit
    assert _recorded(out) == set(range(8))  # chunks 0-3; chunk 4 (rows 8-9) crashed
    logs.mkdir()
    resumed = _torchrun(_args(images, teacher, out), log_dir=logs)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the 4 chunks left are dealt round-robin, 2 each (by chunk number, rank 0 would get all)
    assert _loaded(logs, "0") == [8, 9, 12, 13]
    assert _loaded(logs, "1") == [10, 11, 14, 15]
    _same_files(out, reference)


def _worker(argv: list[str]) -> int:
    """A torchrun worker of the tests above: the command, with the faulty dataset."""
    crash = os.environ.get(ENV_CRASH_AT) or None
    log_dir = Path(os.environ[ENV_LOG]) if os.environ.get(ENV_LOG) else None
    attempt = int(os.environ.get(ATTEMPT, "0"))
    if attempt > 0 and log_dir is not None and os.environ.get("RANK") == "0":
        # no rank of this attempt writes a record before every rank has joined the first
        # barrier, so this is what the restart found
        out = Path(argv[argv.index("--out") + 1])
        finished = sorted(_recorded(out))
        (log_dir / f"finished-before-attempt{attempt}.json").write_text(json.dumps(finished))
    _install_fault(None if crash is None or attempt > 0 else int(crash), log_dir)
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
