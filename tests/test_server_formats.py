"""uint8 images both ways, the [0, 1] range of Encode, shapes that would overflow, reflection v1 and
the plaintext health port: against a real server on loopback."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from client.api import VaeClient
from server.codecs import images_to_uint8, tensor_to_numpy, tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import free_port
from tests.server_helpers import running_server, settings
from tests.system_tools import require_tool

U8 = vae_pb2.IMAGE_FORMAT_UINT8


@pytest.fixture(scope="module")
def channel(live_server):
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return vae_pb2_grpc.VaeServiceStub(channel)


def ref(name="tiny-vae"):
    return vae_pb2.ModelRef(name=name)


def refused(call, request, code):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


# --- uint8 out ------------------------------------------------------------------------------------


def test_sample_as_uint8_is_the_float_images_rounded_to_bytes(stub):
    as_float = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=6, seed=9), timeout=10)
    as_bytes = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=6, seed=9, format=U8))
    pixels = tensor_to_numpy(as_bytes.images)
    assert (as_bytes.images.dtype, pixels.dtype, pixels.shape) == (
        vae_pb2.DATA_TYPE_UINT8,
        np.uint8,
        (6, 1, 28, 28),
    )
    np.testing.assert_array_equal(pixels, images_to_uint8(tensor_to_numpy(as_float.images)))
    assert len(as_bytes.images.data) * 4 == len(as_float.images.data)  # a quarter of the bytes


def test_decode_interpolate_and_sample_stream_answer_uint8_too(stub):
    latents = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32)
    decode = stub.Decode(
        vae_pb2.DecodeRequest(model=ref(), latents=tensor_to_proto(latents), format=U8)
    )
    path = vae_pb2.InterpolateRequest(model=ref(), steps=4, format=U8)
    path.latents.start.CopyFrom(tensor_to_proto(latents[0]))
    path.latents.end.CopyFrom(tensor_to_proto(latents[1]))
    interpolate = stub.Interpolate(path, timeout=10)
    stream = list(
        stub.SampleStream(
            vae_pb2.SampleStreamRequest(model=ref(), count=5, chunk_size=2, seed=1, format=U8)
        )
    )
    shapes = [tensor_to_numpy(r.images).shape for r in (decode, interpolate, *stream)]
    dtypes = {r.images.dtype for r in (decode, interpolate, *stream)}
    assert shapes == [
        (3, 1, 28, 28),
        (4, 1, 28, 28),
        (2, 1, 28, 28),
        (2, 1, 28, 28),
        (1, 1, 28, 28),
    ]
    assert dtypes == {vae_pb2.DATA_TYPE_UINT8}


def test_vae_client_asks_for_uint8_and_gets_bytes(live_server):
    with VaeClient(live_server.address) as client:
        images, _, _ = client.sample(4, seed=3, model="tiny-vae", image_format="uint8")
        floats, _, _ = client.sample(4, seed=3, model="tiny-vae")
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, images_to_uint8(floats))


# --- uint8 and the [0, 1] range in ------------------------------------------------------------------


def test_encode_reads_uint8_images_as_value_over_255(stub):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    as_bytes = vae_pb2.Tensor(
        shape=pixels.shape, data=pixels.tobytes(), dtype=vae_pb2.DATA_TYPE_UINT8
    )
    from_bytes = stub.Encode(vae_pb2.EncodeRequest(model=ref(), images=as_bytes), timeout=10)
    floats = tensor_to_proto(pixels.astype(np.float32) / 255.0)
    from_floats = stub.Encode(vae_pb2.EncodeRequest(model=ref(), images=floats), timeout=10)
    np.testing.assert_allclose(
        tensor_to_numpy(from_bytes.mean), tensor_to_numpy(from_floats.mean), atol=1e-5
    )


def test_encode_refuses_values_outside_the_unit_range_and_names_it(stub):
    images = np.full((1, 1, 28, 28), 7.0, dtype=np.float32)
    details = refused(
        stub.Encode,
        vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "values must lie in [0, 1]" in details and "[7, 7]" in details and "clamp" in details


def test_encode_with_clamp_clips_into_the_unit_range(stub):
    over = np.full((1, 1, 28, 28), 7.0, dtype=np.float32)
    clamped = stub.Encode(
        vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(over), clamp=True), timeout=10
    )
    ones = stub.Encode(
        vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(np.ones_like(over))), timeout=10
    )
    np.testing.assert_array_equal(tensor_to_numpy(clamped.mean), tensor_to_numpy(ones.mean))


def test_interpolate_refuses_image_ends_outside_the_unit_range(stub):
    request = vae_pb2.InterpolateRequest(model=ref(), steps=3)
    request.images.start.CopyFrom(tensor_to_proto(np.full((1, 28, 28), -0.5, np.float32)))
    request.images.end.CopyFrom(tensor_to_proto(np.zeros((1, 28, 28), np.float32)))
    details = refused(stub.Interpolate, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "images.start: values must lie in [0, 1]" in details


def test_latents_must_be_float32(stub):
    latents = vae_pb2.Tensor(shape=[1, 8], data=bytes(8), dtype=vae_pb2.DATA_TYPE_UINT8)
    details = refused(
        stub.Decode,
        vae_pb2.DecodeRequest(model=ref(), latents=latents),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "dtype DATA_TYPE_UINT8 is not accepted here; allowed: DATA_TYPE_FLOAT32" in details


def test_an_unknown_dtype_is_refused_with_the_allowed_ones(stub):
    images = vae_pb2.Tensor(shape=[1, 1, 28, 28], data=bytes(784), dtype=7)
    details = refused(
        stub.Encode,
        vae_pb2.EncodeRequest(model=ref(), images=images),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "dtype 7" in details and "DATA_TYPE_FLOAT32 or DATA_TYPE_UINT8" in details


# --- shapes that would overflow ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [[2**40, 2**40], [2**62, 2**62, 2**62], [1 << 31] * 64, [2**63 - 1, 2]],
    ids=["2^40x2^40", "three-2^62", "64-dims", "int64-max"],
)
def test_huge_shapes_with_no_data_are_invalid_not_internal(stub, shape):
    latents = vae_pb2.Tensor(shape=shape, data=b"")
    details = refused(
        stub.Decode,
        vae_pb2.DecodeRequest(model=ref(), latents=latents),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "needs over 2**63 values" in details and "got 0" in details


def test_a_negative_dimension_is_invalid(stub):
    latents = vae_pb2.Tensor(shape=[-1, 8], data=b"")
    details = refused(
        stub.Decode,
        vae_pb2.DecodeRequest(model=ref(), latents=latents),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "non-positive dimension" in details


# --- reflection v1 ---------------------------------------------------------------------------------


def reflect_v1(channel, request: reflection_pb2.ServerReflectionRequest):
    """One request over grpc.reflection.v1 (same messages as v1alpha under another package)."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return next(call(iter([request]), timeout=10))


def test_reflection_v1_lists_every_service(channel):
    reply = reflect_v1(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "vae.v1.VaeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    } <= names


@pytest.mark.parametrize("symbol", ["vae.v1.VaeService", "grpc.reflection.v1.ServerReflection"])
def test_reflection_v1_describes_a_service(channel, symbol):
    reply = reflect_v1(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert symbol in services


# --- the plaintext health port -----------------------------------------------------------------------


def test_the_health_port_answers_in_plaintext_beside_a_tls_port(repository, tmp_path):
    import subprocess

    openssl = require_tool("openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
         "-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    health_port = free_port()
    config = settings(
        repository,
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
        health_port=health_port,
    )
    request = health_pb2.HealthCheckRequest(service="vae.v1.VaeService")
    with running_server(config) as server:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            status = health_pb2_grpc.HealthStub(plain).Check(request, timeout=10).status
            # The health port serves health only: the model API stays behind TLS.
            with pytest.raises(grpc.RpcError) as only_health:
                vae_pb2_grpc.VaeServiceStub(plain).ListModels(
                    vae_pb2.ListModelsRequest(), timeout=5
                )
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as not_tls,
            pytest.raises(grpc.RpcError),
        ):
            health_pb2_grpc.HealthStub(not_tls).Check(request, timeout=3)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert only_health.value.code() == grpc.StatusCode.UNIMPLEMENTED
