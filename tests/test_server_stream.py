"""SampleStream: large counts arrive in chunks that together equal one Sample call."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from client.api import VaeClient
from server.proto_gen.vae.v1 import vae_pb2
from tests.server_helpers import running_server, settings, stub_for


@pytest.fixture(scope="module")
def server(repository: Path):
    with running_server(settings(repository)) as running:
        yield running


def stream(server, count: int, chunk_size: int, seed: int = 7) -> list:
    with VaeClient(f"127.0.0.1:{server.port}") as client:
        return list(client.sample_stream(count, chunk_size, seed=seed, model="tiny-vae"))


def test_a_stream_arrives_in_chunks_of_the_asked_size(server):
    chunks = stream(server, 1000, 256)
    assert [(len(images), offset) for images, _, offset in chunks] == [
        (256, 0),
        (256, 256),
        (256, 512),
        (232, 768),
    ]


def test_a_stream_gives_the_same_images_as_one_sample_call(server):
    streamed = np.concatenate([images for images, _, _ in stream(server, 200, 64)])
    with VaeClient(f"127.0.0.1:{server.port}") as client:
        images, _, _ = client.sample(200, seed=7, model="tiny-vae")
    np.testing.assert_allclose(streamed, images, atol=1e-6)


def test_a_stream_may_be_larger_than_the_per_request_sample_limit(server):
    limit = server.settings.limits.max_samples
    chunks = stream(server, 4 * limit, 0)
    assert sum(len(images) for images, _, _ in chunks) == 4 * limit


def test_a_chunk_over_the_sample_limit_is_invalid(server):
    request = vae_pb2.SampleStreamRequest(
        model=vae_pb2.ModelRef(name="tiny-vae"), count=10, chunk_size=100_000
    )
    with stub_for(server) as stub, pytest.raises(grpc.RpcError) as refused:
        list(stub.SampleStream(request, timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_size must be between 1 and 256 (0: server default), got 100000" in (
        refused.value.details()
    )


def test_a_stream_over_its_limit_is_resource_exhausted(server):
    request = vae_pb2.SampleStreamRequest(model=vae_pb2.ModelRef(name="tiny-vae"), count=10**9)
    with stub_for(server) as stub, pytest.raises(grpc.RpcError) as refused:
        list(stub.SampleStream(request, timeout=10))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
