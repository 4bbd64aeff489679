"""Dynamic batching: the Batcher in-process, then merged and split requests through a real server."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from server.codecs import tensor_to_numpy
from server.errors import ResourceExhausted
from server.inference.batching import Batcher, BatchingConfig
from tests.server_helpers import (
    metric,
    running_server,
    sample_request,
    settings,
    stub_for,
    wait_until,
)


class GatedModel:
    """A run function that doubles its input, records batch sizes, and can be held closed (it then
    runs in a thread, `offload`, so the event loop goes on while it is held)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, inputs):
        self.started.set()
        self.gate.wait(10)
        self.batches.append(len(inputs[0]))
        return [inputs[0] * 2.0]


def rows(start: int, count: int) -> list[np.ndarray | None]:
    return [np.arange(start, start + count, dtype=np.float32)[:, None]]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_requests_queued_together_run_as_one_batch_and_split_back():
    model = GatedModel()

    async def scenario():
        batcher = Batcher("t", model, BatchingConfig(max_batch_size=64))
        # Submitted in one turn of the loop: they meet in the batch of the next turn.
        return await asyncio.gather(*(batcher.submit(rows(10 * i, i)) for i in (1, 2, 3)))

    results = [out[0][:, 0].tolist() for out in run(scenario())]
    assert (model.batches, results) == ([6], [[20.0], [40.0, 42.0], [60.0, 62.0, 64.0]])


def test_a_lone_request_with_no_queue_delay_runs_on_the_next_loop_turn():
    model = GatedModel()

    async def scenario():
        batcher = Batcher("t", model, BatchingConfig(max_queue_delay_ms=0))
        return await batcher.submit(rows(3, 1))

    assert (run(scenario())[0][0, 0], model.batches) == (6.0, [1])


def test_requests_arriving_while_a_batch_runs_form_the_next_batch():
    model = GatedModel()
    model.gate.clear()

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher("t", model, BatchingConfig(max_batch_size=64), offload=pool)
            first = asyncio.ensure_future(batcher.submit(rows(0, 1)))
            while not model.started.is_set():
                await asyncio.sleep(0.001)
            later = [asyncio.ensure_future(batcher.submit(rows(i, 2))) for i in range(3)]
            await asyncio.sleep(0.05)  # they queue while the first batch is held
            model.gate.set()
            await asyncio.gather(first, *later)

    run(scenario())
    assert model.batches == [1, 6]


def test_a_full_batch_does_not_wait_for_the_queue_delay():
    model = GatedModel()

    async def scenario():
        batcher = Batcher("t", model, BatchingConfig(max_batch_size=4, max_queue_delay_ms=60_000))
        return await asyncio.gather(*(batcher.submit(rows(i, 2)) for i in range(2)))

    assert [out[0].shape for out in run(scenario())] == [(2, 1), (2, 1)]


def test_the_queue_delay_releases_a_partial_batch():
    async def scenario():
        batcher = Batcher(
            "t", GatedModel(), BatchingConfig(max_batch_size=64, max_queue_delay_ms=5)
        )
        return await batcher.submit(rows(3, 1))

    assert run(scenario())[0][0, 0] == 6.0


def test_a_batch_is_cut_at_max_batch_size_and_the_rest_runs_next():
    model = GatedModel()

    async def scenario():
        batcher = Batcher("t", model, BatchingConfig(max_batch_size=4))
        await asyncio.gather(*(batcher.submit(rows(i, 3)) for i in range(3)))

    run(scenario())
    assert model.batches == [3, 3, 3]


def test_a_full_queue_refuses_at_once_with_resource_exhausted():
    model = GatedModel()
    model.gate.clear()

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            config = BatchingConfig(max_batch_size=1, max_queue_rows=2)
            batcher = Batcher("m/1/decoder", model, config, offload=pool)
            running = asyncio.ensure_future(batcher.submit(rows(0, 1)))
            while not model.started.is_set():
                await asyncio.sleep(0.001)
            queued = asyncio.ensure_future(batcher.submit(rows(1, 2)))  # fills the queue
            await asyncio.sleep(0)
            try:
                with pytest.raises(ResourceExhausted, match=r"m/1/decoder: queue is full \(2 rows"):
                    await batcher.submit(rows(3, 1))
            finally:
                model.gate.set()
            await asyncio.gather(running, queued)

    run(scenario())


def test_a_cancelled_request_is_dropped_from_its_batch():
    model = GatedModel()

    async def scenario():
        batcher = Batcher("t", model, BatchingConfig(max_batch_size=64, max_queue_delay_ms=50))
        kept = asyncio.ensure_future(batcher.submit(rows(1, 1)))
        dropped = asyncio.ensure_future(batcher.submit(rows(2, 5)))
        await asyncio.sleep(0)  # both queued
        dropped.cancel()
        await kept

    run(scenario())
    assert model.batches == [1]


def test_a_failing_batch_fails_every_caller_in_it_and_the_batcher_lives_on():
    calls = []

    def flaky(inputs):
        calls.append(len(inputs[0]))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [inputs[0]]

    async def scenario():
        batcher = Batcher("t", flaky, BatchingConfig(max_batch_size=64))
        failed = await asyncio.gather(
            batcher.submit(rows(0, 1)), batcher.submit(rows(5, 1)), return_exceptions=True
        )
        return failed, await batcher.submit(rows(1, 1))

    failed, after = run(scenario())
    assert [str(e) for e in failed] == ["boom", "boom"]
    assert (calls, after[0][0, 0]) == ([2, 1], 1.0)


def test_the_queue_depth_observer_sees_rows_come_and_go():
    depths: list[int] = []

    async def scenario():
        batcher = Batcher("t", GatedModel(), BatchingConfig(), observe_queue=depths.append)
        await asyncio.gather(batcher.submit(rows(0, 2)), batcher.submit(rows(0, 3)))

    run(scenario())
    assert (depths[0], depths[-1]) == (2, 0)  # the first request queued, then the batch took all


def test_batching_config_names_the_bad_value():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1, got 0"):
        BatchingConfig(max_batch_size=0)


# --- through a real server -------------------------------------------------------------------------


def concurrent_samples(server, seeds: list[int]) -> list[np.ndarray]:
    with stub_for(server) as stub, ThreadPoolExecutor(len(seeds)) as pool:
        responses = pool.map(lambda s: stub.Sample(sample_request(seed=s), timeout=30), seeds)
        return [tensor_to_numpy(r.images) for r in responses]


@pytest.fixture(scope="module")
def batching_server(repository: Path):
    # A long delay so that concurrent requests surely meet in one batch.
    config = settings(repository, BatchingConfig(max_batch_size=16, max_queue_delay_ms=200))
    with running_server(config) as server:
        yield server


@pytest.fixture(scope="module")
def unbatched_server(repository: Path):
    with running_server(settings(repository, BatchingConfig(enabled=False))) as server:
        yield server


def test_concurrent_requests_are_merged_into_larger_batches(batching_server):
    before = metric(batching_server, "vae_batch_size_count", model="tiny-vae", component="decoder")
    concurrent_samples(batching_server, list(range(16)))
    after_count = metric(
        batching_server, "vae_batch_size_count", model="tiny-vae", component="decoder"
    )
    # 16 one-row requests ran in fewer onnxruntime calls than requests.
    assert 1 <= after_count - before < 16


def test_each_caller_gets_its_own_seeds_images_from_a_merged_batch(
    batching_server, unbatched_server
):
    seeds = [101 + i for i in range(12)]
    merged = concurrent_samples(batching_server, seeds)
    alone = concurrent_samples(unbatched_server, seeds)
    for got, expected in zip(merged, alone, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batching_off_runs_each_request_alone(unbatched_server):
    def largest_bucket_used() -> float:
        return metric(
            unbatched_server,
            "vae_batch_size_bucket",
            model="tiny-vae",
            component="decoder",
            le="1.0",
        ) - metric(unbatched_server, "vae_batch_size_count", model="tiny-vae", component="decoder")

    concurrent_samples(unbatched_server, list(range(8)))
    assert largest_bucket_used() == 0.0  # every call had at most 1 row


def test_a_full_queue_answers_resource_exhausted_at_once(repository: Path):
    # The first request waits for company for 3 s and fills the 4-row queue meanwhile.
    config = settings(
        repository,
        BatchingConfig(max_batch_size=64, max_queue_delay_ms=3000, max_queue_rows=4),
    )
    with running_server(config) as server, stub_for(server) as stub:
        pending = stub.Sample.future(sample_request(count=4), timeout=30)
        wait_until(
            lambda: metric(server, "vae_queue_rows", model="tiny-vae", component="decoder") == 4,
            what="the first request to be queued",
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.Sample(sample_request(count=1), timeout=2)
        assert pending.result().seed == 0
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full (4 rows waiting, limit 4)" in refused.value.details()


def test_per_model_batching_overrides_the_server_default(repository: Path):
    from server.process.app import VaeServer

    config = settings(
        repository,
        BatchingConfig(max_batch_size=64),
        model_batching={"tiny-vae": BatchingConfig(enabled=False)},
    )
    server = VaeServer(config)
    server.store.load_all(warm_up=False)
    assert server.store.get("tiny-vae").config.enabled is False


def test_a_cancelled_calls_rows_are_dropped_from_the_batch(repository: Path):
    config = settings(repository, BatchingConfig(max_batch_size=64, max_queue_delay_ms=1500))
    labels = {"model": "tiny-vae", "component": "decoder"}
    cancelled = {"rpc": "Sample", "model": "tiny-vae", "code": "CANCELLED"}
    with running_server(config) as server, stub_for(server) as stub:
        rows_before = metric(server, "vae_batch_size_sum", **labels)
        doomed = stub.Sample.future(sample_request(count=5), timeout=30)
        wait_until(lambda: metric(server, "vae_queue_rows", **labels) == 5, what="5 rows queued")
        doomed.cancel()
        wait_until(lambda: metric(server, "vae_requests_total", **cancelled) == 1, what="cancel")
        stub.Sample(sample_request(count=1), timeout=30)
        assert metric(server, "vae_batch_size_sum", **labels) - rows_before == 1


def test_a_deadline_that_passes_in_the_queue_is_deadline_exceeded_and_counted(repository: Path):
    # The batch waits 2 s for company; the caller gives up after 0.3 s.
    config = settings(repository, BatchingConfig(max_batch_size=64, max_queue_delay_ms=2000))
    labels = {"rpc": "Sample", "model": "tiny-vae", "code": "DEADLINE_EXCEEDED"}
    with running_server(config) as server, stub_for(server) as stub:
        with pytest.raises(grpc.RpcError) as late:
            stub.Sample(sample_request(count=3), timeout=0.3)
        wait_until(lambda: metric(server, "vae_requests_total", **labels) == 1, what="counted")
        # Its rows left the queue with it: the next batch holds only the next caller's row.
        rows_before = metric(server, "vae_batch_size_sum", model="tiny-vae", component="decoder")
        stub.Sample(sample_request(count=1), timeout=30)
        rows = metric(server, "vae_batch_size_sum", model="tiny-vae", component="decoder")
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert rows - rows_before == 1


def test_calls_over_the_concurrency_limit_are_refused_at_once(repository: Path):
    config = settings(
        repository,
        BatchingConfig(max_batch_size=64, max_queue_delay_ms=3000),
        max_concurrent_rpcs=2,
    )
    with running_server(config) as server, stub_for(server) as stub:
        held = [stub.Sample.future(sample_request(seed=i), timeout=30) for i in range(2)]
        wait_until(
            lambda: metric(server, "vae_in_flight_requests") == 2, what="two calls in flight"
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.Sample(sample_request(seed=9), timeout=5)
        assert [f.result().seed for f in held] == [0, 1]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
