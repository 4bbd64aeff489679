"""Where a run starts: afresh, or from `<run_dir>/last.pt` after `--resume`, `--auto-resume` or a
torchrun restart, decided alike on every rank; and the run directory's log made to match.

Resuming is exact at epoch granularity: the checkpoint holds the model, optimiser, LR scheduler,
loss scaler, epoch, step and history, and everything random in an epoch (the shuffle, each rank's
share, the sampling noise) is seeded from (seed, epoch, rank) at the epoch's start, so there is no
generator state to carry and the resumed epochs replay what an uninterrupted run would have done.
A process killed mid-epoch loses that epoch's steps and nothing before them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

import torch

from training import distributed
from training.checkpoint import CheckpointError, load_checkpoint

RESUME_KEYS = ("optimizer_state", "scheduler_state", "epoch", "step", "best_val_loss", "history")
NO_CHECKPOINT = -1  # a rank's view of last.pt when it has none to resume from
UNREADABLE = -2  # ... when the file is there but cannot be read


def load_resume_point(
    config, ranks: distributed.Ranks, device: torch.device
) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None for a fresh start (config: a TrainConfig).

    `--resume` requires `last.pt`; `--auto-resume` takes it when it is there; so does any start
    after torchrun restarted a worker group (TORCHELASTIC_RESTART_COUNT > 0 on any rank), so that
    `--max-restarts` never starts a run over. Every rank reads the file (the run directory must be
    storage every node shares) and all must see the same epoch, or all stop with the reason."""
    path = Path(config.run_dir) / "last.pt"
    restarted = distributed.any_rank(distributed.restart_count() > 0, ranks, device)
    wanted = config.resume or config.auto_resume or restarted
    document, epoch, problem = None, NO_CHECKPOINT, ""
    if wanted and (config.resume or path.is_file()):
        try:
            document = load_checkpoint(path)
            epoch = int(document.get("epoch", 0))
        except CheckpointError as exc:
            epoch, problem = UNREADABLE, str(exc)
    low, high = distributed.min_max(epoch, ranks, device)
    if low == UNREADABLE:
        raise CheckpointError(problem or f"another rank could not read {path}; see its log")
    if low != high:
        raise ValueError(
            f"the {ranks.world_size} processes see different checkpoints at {path} (epochs {low} to "
            f"{high}; {NO_CHECKPOINT} means none): every node must see one run directory, so put "
            "--run-dir on storage they all mount (a ReadWriteMany volume, NFS)"
        )
    if document is None:
        return None
    missing = sorted(set(RESUME_KEYS) - set(document))
    if missing:
        raise ValueError(
            f"{path} lacks {missing} (written by an older vae-train); it can be exported, but not "
            "resumed: start a new run without --resume or --auto-resume"
        )
    return document


def describe(document: dict[str, Any], path: Path, world_size: int) -> str:
    """The console line that says a run resumed, from where, and why."""
    restarts = distributed.restart_count()
    why = f"torchrun restart {restarts}" if restarts else "a new launch"
    line = f"resuming from {path} after epoch {document['epoch']} (step {document['step']}; {why})"
    earlier = document.get("world_size")
    if earlier is not None and int(earlier) != world_size:
        line += (
            f"; it was written by {earlier} processes and {world_size} continue it, so the global "
            "batch and the steps per epoch change from here on"
        )
    return line


def open_log(run_dir: Path, resumed: dict[str, Any] | None) -> TextIO:
    """`log.jsonl`, open for the epochs to come (rank 0 only).

    A fresh run starts a new log and drops a `last.pt` left by an earlier run in the same folder,
    which a restart would otherwise resume. A resumed run's log is rewritten from the checkpoint's
    history first: an epoch logged just before a crash, but not checkpointed, runs again, and must
    not appear twice."""
    path = run_dir / "log.jsonl"
    if resumed is None:
        (run_dir / "last.pt").unlink(missing_ok=True)
        return path.open("w", encoding="utf-8")
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    lines = "".join(json.dumps(record) + "\n" for record in resumed["history"])
    temporary.write_text(lines, encoding="utf-8")
    os.replace(temporary, path)
    return path.open("a", encoding="utf-8")
