"""Training on two "nodes" on loopback: two torchrun launches, one process each, meeting through
torchrun's c10d rendezvous on 127.0.0.1, against one process with the same global batch; and a node
killed mid-epoch (agent and worker, SIGKILL), relaunched, and resumed from the last checkpoint.

Every process runs `tests.elastic_worker`: vae-train plus a ledger of the images it trained on (by
a hash of their pixels) and the checkpoints it wrote, which is what the counting tests read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import free_port
from tests.elastic_worker import image_key
from training.checkpoint import load_checkpoint

TORCHRUN = Path(sys.executable).parent / "torchrun"
ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 6
TRAIN_IMAGES = 1280
GLOBAL_BATCH = 64  # one process of 64, or two of 32
HALT = "1:3:5"  # node 1 stops before training batch 5 of epoch 3, and the test kills it there
RUN_SECONDS = 300  # a bound on each launch, far above the ~60 s they take on two busy cores
# The final test loss of two processes against one with the same global batch. They differ by the
# sampling noise (each rank draws its own) and float rounding; measured: 0.5%.
LOSS_TOLERANCE = 0.01


def train_args(run_dir: Path, data_dir: Path, batch_size: int) -> list[str]:
    return [
        "--dataset", "mnist", "--data-dir", str(data_dir), "--run-dir", str(run_dir),
        "--epochs", str(EPOCHS), "--batch-size", str(batch_size),
        "--train-subset", str(TRAIN_IMAGES), "--val-size", "200", "--hidden-dims", "32",
        "--latent-dim", "4", "--threads", "1", "--progress", "false", "--tensorboard", "false",
        "--figures", "false", "--iwae-samples", "0", "--prior-components", "0", "--device", "cpu",
        "--auto-resume", "true",
    ]  # fmt: skip


def worker_env(ledger: Path, node: str, halt: str = "") -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # torchrun's agents otherwise share one TCP store across rendezvous rounds, and a round
        # that a relaunched node joins never completes (pytorch/pytorch#135712); README says more.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "ELASTIC_TEST_LEDGER": str(ledger),
        "ELASTIC_TEST_NODE": node,
        "ELASTIC_TEST_HALT": halt,
    }


@dataclass
class Run:
    run_dir: Path
    ledger: Path
    logs: list[Path] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs)


class Nodes:
    """torchrun launches on loopback, one process each, all killed at the end whatever happens."""

    def __init__(self, run: Run, data_dir: Path, halt: str = "") -> None:
        self.run, self.data_dir, self.halt = run, data_dir, halt
        self.endpoint = f"127.0.0.1:{free_port()}"
        self.launched: list[subprocess.Popen] = []

    def launch(self, node: str) -> subprocess.Popen:
        host = "true" if node == "0" else "false"  # node 0 hosts the rendezvous store
        command = [
            str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", self.endpoint, "--rdzv-id", "elastic-test",
            "--rdzv-conf", f"is_host={host},join_timeout=120", "--max-restarts", "2",
            "-m", "tests.elastic_worker",
            *train_args(self.run.run_dir, self.data_dir, GLOBAL_BATCH // 2),
        ]  # fmt: skip
        log = self.run.run_dir.parent / f"node{node}-launch{len(self.launched)}.log"
        self.run.logs.append(log)
        with log.open("w") as handle:
            process = subprocess.Popen(
                command, cwd=ROOT, env=worker_env(self.run.ledger, node, self.halt),
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.launched.append(process)
        return process

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.launched:
            if process.poll() is None:
                kill_node(process)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (torchrun starts its workers in sessions of their own,
    so killing the launcher's process group would leave them running)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_node(agent: subprocess.Popen) -> None:
    """A lost machine: its torchrun agent and the worker under it die at once, without a word."""
    workers = descendants(agent.pid)
    agent.kill()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGKILL)
    agent.wait(timeout=30)


def wait_for_file(path: Path, nodes: list[subprocess.Popen], timeout: float) -> None:
    """Until `path` exists; fails at once if a node exits first, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        exited = [p.args for p in nodes if p.poll() is not None]
        assert not exited, f"a node exited before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def finish(processes: list[subprocess.Popen], run: Run) -> None:
    for process in processes:
        assert process.wait(timeout=RUN_SECONDS) == 0, run.output()[-6000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Run:
    """One process, no torchrun, the global batch of the two-node runs."""
    root = tmp_path_factory.mktemp("single")
    run = Run(root / "run", root / "ledger", [root / "single.log"])
    command = [
        sys.executable, "-m", "tests.elastic_worker",
        *train_args(run.run_dir, mnist_dir, GLOBAL_BATCH),
    ]  # fmt: skip
    with run.logs[0].open("w") as handle:
        result = subprocess.run(
            command, cwd=ROOT, env=worker_env(run.ledger, "single"), stdout=handle,
            stderr=subprocess.STDOUT, timeout=RUN_SECONDS, check=False,
        )  # fmt: skip
    assert result.returncode == 0, run.output()[-6000:]
    return run


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Run:
    root = tmp_path_factory.mktemp("two-nodes")
    run = Run(root / "run", root / "ledger")
    with Nodes(run, mnist_dir) as nodes:
        finish([nodes.launch("0"), nodes.launch("1")], run)
    return run


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Run:
    """Node 1 stops mid-epoch, is killed with its agent, and is launched again, as Kubernetes
    relaunches a lost pod; node 0's agent restarts its worker (--max-restarts) and both resume."""
    root = tmp_path_factory.mktemp("killed")
    run = Run(root / "run", root / "ledger")
    with Nodes(run, mnist_dir, halt=HALT) as nodes:
        survivor, victim = nodes.launch("0"), nodes.launch("1")
        wait_for_file(run.ledger / "halted", [survivor, victim], RUN_SECONDS)
        kill_node(victim)
        finish([survivor, nodes.launch("1")], run)
    return run


# --------------------------------------------------------------------------------- the ledger


@dataclass
class Attempt:
    """One worker process's ledger."""

    node: str
    rank: int
    started_ns: int
    restart: int  # TORCHELASTIC_RESTART_COUNT: how often this node's agent had restarted workers
    batches: dict[int, list[list[str]]]  # epoch -> the image keys of each batch, in order
    finished: set[int]  # epochs whose every batch this process trained on
    checkpoints: list[tuple[int, str, int]]  # (rank, file name, epoch)


def read_ledger(folder: Path) -> list[Attempt]:
    attempts = []
    for path in sorted(folder.glob("*.jsonl")):
        events = [json.loads(line) for line in path.read_text().splitlines()]
        start = events[0]
        batches: dict[int, list[list[str]]] = {}
        for event in events:
            if event["event"] == "batch":
                batches.setdefault(event["epoch"], []).append(event["images"])
        attempts.append(
            Attempt(
                start["node"], start["rank"], start["time_ns"], start["restart"], batches,
                {e["epoch"] for e in events if e["event"] == "epoch_done"},
                [(e["rank"], e["name"], e["epoch"]) for e in events if e["event"] == "checkpoint"],
            )
        )  # fmt: skip
    return sorted(attempts, key=lambda a: a.started_ns)


def lineage(attempts: list[Attempt], epoch: int) -> list[Attempt]:
    """The processes whose training of `epoch` the final model carries: per rank, the last one
    started that finished the epoch (a killed process's unfinished epoch is trained again)."""
    chosen: dict[int, Attempt] = {}
    for attempt in attempts:  # oldest first: later ones replace earlier ones
        if epoch in attempt.finished:
            chosen[attempt.rank] = attempt
    return [chosen[rank] for rank in sorted(chosen)]


def training_set(data_dir: Path) -> Counter[str]:
    """The image keys of the training split the runs use, each as often as it occurs."""
    from training.data import train_val_test

    train, _, _ = train_val_test("mnist", data_dir, 200, 0)
    return Counter(image_key(image) for image in train.images[:TRAIN_IMAGES])


def seen_in(attempts: list[Attempt], epoch: int) -> Counter[str]:
    return Counter(key for a in attempts for batch in a.batches[epoch] for key in batch)


def log_records(run: Run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------- two nodes vs one


def test_two_nodes_reach_the_single_process_test_loss(single: Run, two_nodes: Run) -> None:
    one = log_records(single)[-1]["test_loss"]
    two = log_records(two_nodes)[-1]["test_loss"]
    assert abs(two - one) / one < LOSS_TOLERANCE, (one, two)


def test_two_nodes_train_on_the_single_process_global_batches(single: Run, two_nodes: Run) -> None:
    (alone,) = read_ledger(single.ledger)
    pair = read_ledger(two_nodes.ledger)
    assert sorted(a.rank for a in pair) == [0, 1]
    for epoch in range(1, EPOCHS + 1):
        together = [
            Counter(b0 + b1)
            for b0, b1 in zip(pair[0].batches[epoch], pair[1].batches[epoch], strict=True)
        ]
        assert together == [Counter(batch) for batch in alone.batches[epoch]]


def test_two_nodes_train_on_every_image_once_per_epoch(two_nodes: Run, mnist_dir: Path) -> None:
    attempts = read_ledger(two_nodes.ledger)
    expected = training_set(mnist_dir)
    assert all(seen_in(attempts, e) == expected for e in range(1, EPOCHS + 1))


def test_the_log_counts_the_images_of_every_rank(two_nodes: Run) -> None:
    assert [r["train_images"] for r in log_records(two_nodes)] == [TRAIN_IMAGES] * EPOCHS


def test_two_nodes_log_the_fields_one_process_logs(single: Run, two_nodes: Run) -> None:
    assert [sorted(r) for r in log_records(two_nodes)] == [sorted(r) for r in log_records(single)]


def test_two_nodes_write_the_metrics_one_process_writes(single: Run, two_nodes: Run) -> None:
    one, two = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (single, two_nodes))
    assert (sorted(two), two["world_size"], two["steps"]) == (sorted(one), 2, one["steps"])


def test_only_rank_zero_writes_checkpoints(two_nodes: Run) -> None:
    written = [c for a in read_ledger(two_nodes.ledger) for c in a.checkpoints]
    assert {rank for rank, _, _ in written} == {0}
    assert sorted(epoch for _, name, epoch in written if name == "last.pt") == list(
        range(1, EPOCHS + 1)
    )


# --------------------------------------------------------------------- a node killed mid-epoch


def halted_epoch() -> int:
    return int(HALT.split(":")[1])


def test_killed_run_says_it_resumed_and_from_where(killed: Run) -> None:
    last = killed.run_dir / "last.pt"
    assert f"resuming from {last} after epoch {halted_epoch() - 1}" in killed.output()


def test_survivors_agent_restarted_its_worker_and_the_relaunched_node_started_anew(
    killed: Run,
) -> None:
    resumed = read_ledger(killed.ledger)[2:]
    assert sorted((a.node, a.restart) for a in resumed) == [("0", 1), ("1", 0)]


def test_killed_run_trains_every_image_once_in_each_epoch(killed: Run, mnist_dir: Path) -> None:
    attempts = read_ledger(killed.ledger)
    expected = training_set(mnist_dir)
    for epoch in range(1, EPOCHS + 1):
        carried = lineage(attempts, epoch)
        assert [a.rank for a in carried] == [0, 1], f"epoch {epoch} was not finished by both ranks"
        assert seen_in(carried, epoch) == expected, f"epoch {epoch}: duplicated or skipped images"


def test_kill_costs_only_the_epoch_in_progress(killed: Run) -> None:
    attempts = read_ledger(killed.ledger)
    first, resumed = attempts[:2], attempts[2:]
    assert len(resumed) == 2  # the relaunched node and the survivor's restarted worker
    assert {min(a.batches) for a in resumed} == {halted_epoch()}
    assert max(e for a in first for e in a.finished) == halted_epoch() - 1


def test_killed_run_logs_each_epoch_once(killed: Run) -> None:
    assert [r["epoch"] for r in log_records(killed)] == list(range(1, EPOCHS + 1))


def test_killed_run_ends_with_the_uninterrupted_runs_weights(killed: Run, two_nodes: Run) -> None:
    resumed = load_checkpoint(killed.run_dir / "last.pt")["model_state"]
    straight = load_checkpoint(two_nodes.run_dir / "last.pt")["model_state"]
    assert all(torch.equal(straight[name], weights) for name, weights in resumed.items())
