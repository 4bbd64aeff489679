"""Where a run starts, in one process: --auto-resume, a torchrun restart, a stale last.pt from an
earlier run, a log written past the checkpoint; and image-folder shares without repeated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import CELEBA_SAMPLE
from tests.test_training_loop import Interrupted, tiny
from training import distributed, resume
from training import train as train_module
from training.batching import LoaderBatches
from training.checkpoint import load_checkpoint
from training.images import ImageFiles
from training.train import train


def logged_epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "log.jsonl").open()]


@pytest.fixture
def no_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A finished two-epoch run, copied by the tests that continue it."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    train(tiny(run_dir, mnist_dir))
    return run_dir


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("last.pt", "log.jsonl"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_auto_resume_without_a_checkpoint_starts_the_run(
    tmp_path: Path, mnist_dir: Path, no_restart: None
) -> None:
    train(tiny(tmp_path / "run", mnist_dir, auto_resume=True))
    assert logged_epochs(tmp_path / "run") == [1, 2]


def test_auto_resume_continues_from_the_checkpoint(
    two_epochs: Path, tmp_path: Path, mnist_dir: Path, no_restart: None
) -> None:
    run_dir = copy_run(two_epochs, tmp_path / "run")
    train(tiny(run_dir, mnist_dir, epochs=3, auto_resume=True))
    assert logged_epochs(run_dir) == [1, 2, 3]


def test_a_torchrun_restart_resumes_without_being_asked(
    two_epochs: Path, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    run_dir = copy_run(two_epochs, tmp_path / "run")
    train(tiny(run_dir, mnist_dir, epochs=3))
    assert logged_epochs(run_dir) == [1, 2, 3]


def test_resume_says_from_where_and_why(
    two_epochs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    document = load_checkpoint(two_epochs / "last.pt")
    line = resume.describe(document, two_epochs / "last.pt", 1)
    assert line == (
        f"resuming from {two_epochs / 'last.pt'} after epoch 2 (step {document['step']}; "
        "torchrun restart 2)"
    )


def test_resume_warns_when_the_process_count_changed(two_epochs: Path, no_restart: None) -> None:
    document = load_checkpoint(two_epochs / "last.pt")
    assert "written by 1 processes and 4 continue it" in resume.describe(document, two_epochs, 4)


def test_a_fresh_start_drops_an_earlier_runs_checkpoint(
    two_epochs: Path, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed in its first epoch, a new run in an old folder must not leave the old last.pt for its
    # restart to resume.
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    run_dir = copy_run(two_epochs, tmp_path / "run")

    def killed(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(train_module.reporting, "epoch_record", killed)
    with pytest.raises(Interrupted):
        train(tiny(run_dir, mnist_dir))
    assert not (run_dir / "last.pt").exists()


def test_an_epoch_logged_but_not_checkpointed_is_logged_once_after_resume(
    two_epochs: Path, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    run_dir = copy_run(two_epochs, tmp_path / "run")
    real_save = train_module.save_checkpoint

    def killed_before_epoch_three_is_saved(path: Path, payload: dict) -> None:
        if payload["epoch"] == 3:
            raise Interrupted  # log.jsonl has epoch 3 already
        real_save(path, payload)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_checkpoint", killed_before_epoch_three_is_saved)
        with pytest.raises(Interrupted):
            train(tiny(run_dir, mnist_dir, epochs=3, auto_resume=True))
    assert logged_epochs(run_dir) == [1, 2, 3]  # the crash left epoch 3 in the log
    train(tiny(run_dir, mnist_dir, epochs=3, auto_resume=True))
    assert logged_epochs(run_dir) == [1, 2, 3]


def test_an_unreadable_checkpoint_stops_the_resume_with_its_path(
    tmp_path: Path, mnist_dir: Path, no_restart: None
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"last\.pt: not a vae-train checkpoint"):
        train(tiny(tmp_path / "run", mnist_dir, auto_resume=True))


@pytest.mark.parametrize(("value", "count"), [(None, 0), ("", 0), ("3", 3)])
def test_restart_count_reads_torchruns_variable(
    value: str | None, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", value)
    assert distributed.restart_count() == count


def test_image_folder_shares_repeat_no_image() -> None:
    # 32 files over 3 ranks: 10 each and 2 left out, rather than 11 each with one repeated.
    files = ImageFiles(sorted(CELEBA_SAMPLE.glob("*.jpg")), side=8)
    shares = [
        LoaderBatches(files, 4, True, torch.device("cpu"), 0, rank, 3, 0) for rank in range(3)
    ]
    images = [image for share in shares for batch, _ in share.epoch(1) for image in batch]
    assert (len(images), len({image.numpy().tobytes() for image in images})) == (30, 30)
