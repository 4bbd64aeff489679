"""`vae-train` as the elastic tests run it under torchrun: it also writes a ledger of every training
image it trained on and every checkpoint it wrote, and one chosen node can stop mid-epoch for the
test to kill it.

Run as `torchrun ... -m tests.elastic_worker <vae-train arguments>`, with ELASTIC_TEST_LEDGER (a
folder) and ELASTIC_TEST_NODE (this launch's name) set; ELASTIC_TEST_HALT="<node>:<epoch>:<batch>"
makes that node's worker, once per ledger folder, write `halted` there and wait to be killed before
that training batch. The ledger names images by a hash of their pixels, so the test counts what
each process was given without trusting the sampler's own indices.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from training import batching, cli
from training import train as train_module

HALT_WAIT_SECONDS = 120  # bounded: a test that never kills the process still ends


def image_key(image) -> str:
    """A name for one image (C, H, W) by its pixels: equal images, equal names."""
    return hashlib.blake2b(image.contiguous().cpu().numpy().tobytes(), digest_size=8).hexdigest()


class Ledger:
    """One JSON line per event, flushed at once, in a file of this process's own."""

    def __init__(self, folder: Path, node: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.node = folder, node
        self.rank = int(os.environ.get("RANK", "0"))
        self.handle = (folder / f"node{node}-pid{os.getpid()}.jsonl").open("w", encoding="utf-8")
        self.write(
            event="start",
            time_ns=time.time_ns(),
            restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        )

    def write(self, **fields: Any) -> None:
        self.handle.write(json.dumps({"node": self.node, "rank": self.rank, **fields}) + "\n")
        self.handle.flush()


def halt_here(ledger: Ledger, halt: str, epoch: int, batch: int) -> bool:
    if halt != f"{ledger.node}:{epoch}:{batch}":
        return False
    try:  # once per ledger folder: the relaunched node must run through
        with (ledger.folder / "halted").open("x") as marker:
            marker.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True


def main() -> int:
    ledger = Ledger(Path(os.environ["ELASTIC_TEST_LEDGER"]), os.environ["ELASTIC_TEST_NODE"])
    halt = os.environ.get("ELASTIC_TEST_HALT", "")
    real_epoch = batching.TensorBatches.epoch
    real_save = train_module.save_checkpoint

    def recorded_epoch(self, epoch: int = 0):
        if not self.shuffle:  # evaluation splits: not training images
            yield from real_epoch(self, epoch)
            return
        for number, (images, labels) in enumerate(real_epoch(self, epoch)):
            if halt_here(ledger, halt, epoch, number):
                threading.Event().wait(HALT_WAIT_SECONDS)  # until the test's SIGKILL
                os._exit(70)  # never killed: fail rather than leave the other ranks waiting
            ledger.write(
                event="batch", epoch=epoch, batch=number, images=list(map(image_key, images))
            )
            yield images, labels
        ledger.write(event="epoch_done", epoch=epoch)

    def recorded_save(path: Path, payload: dict[str, Any]) -> None:
        real_save(path, payload)
        ledger.write(event="checkpoint", name=Path(path).name, epoch=payload["epoch"])

    batching.TensorBatches.epoch = recorded_epoch  # type: ignore[method-assign]
    train_module.save_checkpoint = recorded_save  # type: ignore[assignment]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
