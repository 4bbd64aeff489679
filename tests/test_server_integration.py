"""Every RPC through the generated stubs against the real server on loopback, errors included."""

import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.codecs import tensor_to_numpy, tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.server_helpers import wait_until
from training.data import load_idx_split


@pytest.fixture(scope="module")
def channel(live_server):
    with grpc.insecure_channel(
        live_server.address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return vae_pb2_grpc.VaeServiceStub(channel)


@pytest.fixture(scope="module")
def test_images(mnist_dir):
    test = load_idx_split("mnist", "test", mnist_dir)
    return test.images[:4].numpy(), test.labels[:4].tolist()


def ref(name="tiny-vae", version=0):
    return vae_pb2.ModelRef(name=name, version=version)


def expect_error(call, request, code, *fragments):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()
    return info.value.details()


# --- the happy path of each RPC ------------------------------------------------------------------


def test_sample_returns_count_images_in_unit_range(stub):
    reply = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=5, seed=1), timeout=10)
    images = tensor_to_numpy(reply.images)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert tensor_to_numpy(reply.latents).shape == (5, 8)


def test_sample_with_the_same_seed_repeats_exactly(stub):
    request = vae_pb2.SampleRequest(model=ref(), count=3, seed=42)
    first, second = stub.Sample(request, timeout=10), stub.Sample(request, timeout=10)
    assert first.images.data == second.images.data and first.seed == second.seed == 42


def test_sample_without_seed_reports_the_seed_it_drew(stub):
    reply = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=2), timeout=10)
    again = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=2, seed=reply.seed), timeout=10)
    assert again.images.data == reply.images.data


def test_sample_temperature_scales_the_latents(stub):
    cold = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=4, seed=3, temperature=0.5))
    warm = stub.Sample(vae_pb2.SampleRequest(model=ref(), count=4, seed=3, temperature=1.0))
    assert np.allclose(tensor_to_numpy(cold.latents) * 2, tensor_to_numpy(warm.latents), atol=1e-6)


def test_sample_can_return_png(stub):
    reply = stub.Sample(
        vae_pb2.SampleRequest(model=ref(), count=2, seed=1, format=vae_pb2.IMAGE_FORMAT_PNG)
    )
    assert len(reply.png) == 2 and all(p.startswith(b"\x89PNG") for p in reply.png)
    assert not reply.HasField("images")


def test_conditional_sample_uses_the_label(stub):
    request = vae_pb2.SampleRequest(model=ref("tiny-cvae"), count=2, seed=1, label=3)
    other = vae_pb2.SampleRequest(model=ref("tiny-cvae"), count=2, seed=1, label=4)
    assert stub.Sample(request).images.data != stub.Sample(other).images.data


def test_encode_returns_mean_and_log_variance(stub, test_images):
    images, _ = test_images
    reply = stub.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images)))
    assert tensor_to_numpy(reply.mean).shape == (4, 8)
    assert tensor_to_numpy(reply.log_variance).shape == (4, 8)
    assert (reply.model.name, reply.model.version) == ("tiny-vae", 1)


def test_encode_with_sampling_draws_around_the_mean(stub, test_images):
    images, _ = test_images
    reply = stub.Encode(
        vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images), sample=True, seed=0)
    )
    mean, z = tensor_to_numpy(reply.mean), tensor_to_numpy(reply.latents)
    assert z.shape == mean.shape and not np.array_equal(z, mean)


def test_autoencoder_encode_has_no_log_variance(stub, test_images):
    images, _ = test_images
    reply = stub.Encode(vae_pb2.EncodeRequest(model=ref("tiny-ae"), images=tensor_to_proto(images)))
    assert not reply.HasField("log_variance")


def test_decode_of_encoded_means_reconstructs_better_than_noise(stub, test_images):
    images, _ = test_images
    mean = stub.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images))).mean
    decoded = tensor_to_numpy(stub.Decode(vae_pb2.DecodeRequest(model=ref(), latents=mean)).images)
    noise = np.random.default_rng(0).random(images.shape, dtype=np.float32)
    assert np.abs(decoded - images).mean() < np.abs(noise - images).mean()


def test_conditional_encode_and_decode_take_one_label_per_row(stub, test_images):
    images, labels = test_images
    request = vae_pb2.EncodeRequest(
        model=ref("tiny-cvae"), images=tensor_to_proto(images), labels=labels
    )
    mean = stub.Encode(request).mean
    reply = stub.Decode(vae_pb2.DecodeRequest(model=ref("tiny-cvae"), latents=mean, labels=labels))
    assert tensor_to_numpy(reply.images).shape == (4, 1, 28, 28)


def test_interpolate_between_latents_ends_at_the_endpoints(stub):
    start, end = np.zeros(8, np.float32), np.ones(8, np.float32)
    request = vae_pb2.InterpolateRequest(
        model=ref(),
        steps=5,
        latents=vae_pb2.LatentPair(start=tensor_to_proto(start), end=tensor_to_proto(end)),
    )
    reply = stub.Interpolate(request)
    path = tensor_to_numpy(reply.latents)
    assert tensor_to_numpy(reply.images).shape == (5, 1, 28, 28)
    assert np.allclose(path[0], start) and np.allclose(path[-1], end) and np.allclose(path[2], 0.5)


def test_spherical_interpolation_between_images_starts_at_the_first_mean(stub, test_images):
    images, _ = test_images
    mean = tensor_to_numpy(
        stub.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images[:1]))).mean
    )
    request = vae_pb2.InterpolateRequest(
        model=ref(),
        steps=4,
        method=vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
        images=vae_pb2.ImagePair(start=tensor_to_proto(images[0]), end=tensor_to_proto(images[1])),
    )
    path = tensor_to_numpy(stub.Interpolate(request).latents)
    assert path.shape == (4, 8) and np.allclose(path[0], mean[0], atol=1e-4)


def test_get_model_info_describes_the_model_and_provider(stub):
    info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref("tiny-cvae")))
    assert (info.kind, info.num_classes, info.latent_dim) == ("cvae", 10, 8)
    assert list(info.image_shape) == [1, 28, 28] and list(info.available_versions) == [1]
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.metrics["test_elbo"] < 0 and len(info.checkpoint_sha256) == 64


def test_list_models_names_every_model(stub):
    names = [m.name for m in stub.ListModels(vae_pb2.ListModelsRequest()).models]
    assert names == ["tiny-ae", "tiny-cvae", "tiny-vae"]


# --- errors: each says what was wrong and what is allowed ------------------------------------------


def test_unknown_model_is_not_found_and_lists_loaded_models(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref("nope"), count=1),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
        "tiny-vae",
    )


def test_unknown_version_is_not_found_and_lists_versions(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref("tiny-vae", 7), count=1),
        grpc.StatusCode.NOT_FOUND,
        "no version 7",
        "[1]",
    )


def test_missing_model_name_with_several_models_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(count=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model name is required",
    )


def test_zero_count_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref(), count=0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "between 1 and 128",
    )


def test_count_over_the_limit_is_resource_exhausted(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref(), count=129),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit of 128",
    )


def test_negative_temperature_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref(), count=1, temperature=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature must be in (0, 10.0]",
    )


def test_nan_temperature_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref(), count=1, temperature=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    )


def test_unknown_image_format_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref(), count=1, format=9),
        grpc.StatusCode.INVALID_ARGUMENT,
        "format 9",
        "IMAGE_FORMAT_PNG",
    )


def test_conditional_sample_without_label_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref("tiny-cvae"), count=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set label to a class in 0..9",
    )


def test_label_out_of_range_is_invalid(stub):
    expect_error(
        stub.Sample,
        vae_pb2.SampleRequest(model=ref("tiny-cvae"), count=1, label=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "label 10 is out of range",
        "0..9",
    )


def test_labels_sent_to_an_unconditional_model_are_invalid(stub):
    request = vae_pb2.DecodeRequest(
        model=ref(), latents=tensor_to_proto(np.zeros((1, 8), np.float32)), labels=[1]
    )
    expect_error(stub.Decode, request, grpc.StatusCode.INVALID_ARGUMENT, "not conditional")


def test_wrong_image_shape_names_the_expected_shape(stub):
    request = vae_pb2.EncodeRequest(
        model=ref(), images=tensor_to_proto(np.zeros((2, 1, 32, 32), np.float32))
    )
    expect_error(
        stub.Encode, request, grpc.StatusCode.INVALID_ARGUMENT, "[2, 1, 32, 32]", "[N, 1, 28, 28]"
    )


def test_wrong_latent_size_names_the_expected_size(stub):
    request = vae_pb2.DecodeRequest(
        model=ref(), latents=tensor_to_proto(np.zeros((2, 5), np.float32))
    )
    expect_error(stub.Decode, request, grpc.StatusCode.INVALID_ARGUMENT, "expected [N, 8]")


def test_nan_in_a_tensor_is_invalid(stub):
    latents = np.zeros((2, 8), np.float32)
    latents[1, 3] = np.nan
    request = vae_pb2.DecodeRequest(model=ref(), latents=tensor_to_proto(latents))
    expect_error(stub.Decode, request, grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite")


def test_bytes_that_disagree_with_the_shape_are_invalid(stub):
    bad = vae_pb2.Tensor(shape=[2, 8], data=b"\x00" * 10)
    expect_error(
        stub.Decode,
        vae_pb2.DecodeRequest(model=ref(), latents=bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 64 bytes",
        "got 10",
    )


def test_too_many_rows_is_resource_exhausted(stub):
    request = vae_pb2.DecodeRequest(
        model=ref(), latents=tensor_to_proto(np.zeros((257, 8), np.float32))
    )
    expect_error(stub.Decode, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit of 256")


def test_message_over_the_size_limit_is_refused(stub):
    huge = np.zeros((1400, 1, 28, 28), np.float32)  # 4.4 MB > the 4 MiB limit of the fixture
    with pytest.raises(grpc.RpcError) as info:
        stub.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(huge)), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_interpolation_steps_out_of_range_are_invalid(stub):
    pair = vae_pb2.LatentPair(
        start=tensor_to_proto(np.zeros(8, np.float32)), end=tensor_to_proto(np.ones(8, np.float32))
    )
    request = vae_pb2.InterpolateRequest(model=ref(), steps=33, latents=pair)
    expect_error(stub.Interpolate, request, grpc.StatusCode.INVALID_ARGUMENT, "between 2 and 32")


def test_interpolation_without_endpoints_is_invalid(stub):
    expect_error(
        stub.Interpolate,
        vae_pb2.InterpolateRequest(model=ref(), steps=4),
        grpc.StatusCode.INVALID_ARGUMENT,
        "either images",
        "or latents",
    )


def test_unknown_interpolation_method_is_invalid(stub):
    pair = vae_pb2.LatentPair(
        start=tensor_to_proto(np.zeros(8, np.float32)), end=tensor_to_proto(np.ones(8, np.float32))
    )
    request = vae_pb2.InterpolateRequest(model=ref(), steps=4, latents=pair, method=7)
    expect_error(
        stub.Interpolate,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "method 7",
        "INTERPOLATION_METHOD_SPHERICAL",
    )


def test_sampling_an_autoencoder_posterior_is_invalid(stub, test_images):
    images, _ = test_images
    request = vae_pb2.EncodeRequest(
        model=ref("tiny-ae"), images=tensor_to_proto(images), sample=True
    )
    expect_error(stub.Encode, request, grpc.StatusCode.INVALID_ARGUMENT, "plain autoencoder")


# --- health, reflection, metrics ------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "vae.v1.VaeService", "vae.v1.VaeService/tiny-vae"])
def test_health_reports_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_model_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="vae.v1.VaeService/nope")
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in next(replies).list_services_response.service}
    assert {"vae.v1.VaeService", "grpc.health.v1.Health"} <= names


def _scrape(live_server) -> str:
    with urllib.request.urlopen(live_server.metrics_url, timeout=5) as reply:
        return reply.read().decode()


def _value(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_metrics_count_requests_by_rpc_model_and_code(stub, live_server):
    before = _scrape(live_server)
    stub.Sample(vae_pb2.SampleRequest(model=ref(), count=3, seed=1))
    with pytest.raises(grpc.RpcError):
        stub.Sample(vae_pb2.SampleRequest(model=ref(), count=0))
    ok = 'vae_requests_total{code="OK",model="tiny-vae",rpc="Sample"}'
    bad = 'vae_requests_total{code="INVALID_ARGUMENT",model="tiny-vae",rpc="Sample"}'
    # A refused call is counted after its status went out (server/fronts/calls.py counts in `finally`,
    # behind context.abort), so on a loaded machine the client may scrape first: wait for it.
    wait_until(
        lambda: _value(_scrape(live_server), bad) >= _value(before, bad) + 1, what="the refusal"
    )
    after = _scrape(live_server)
    assert _value(after, ok) == _value(before, ok) + 1
    assert _value(after, bad) == _value(before, bad) + 1
    samples = 'vae_samples_generated_total{model="tiny-vae"}'
    assert _value(after, samples) == _value(before, samples) + 3


def test_metrics_expose_latency_histograms_and_the_provider(live_server, stub):
    stub.Sample(vae_pb2.SampleRequest(model=ref(), count=1, seed=1))
    text = _scrape(live_server)
    assert (
        'vae_request_latency_seconds_bucket{code="OK",le="0.005",model="tiny-vae",rpc="Sample"}'
        in text
    )
    assert 'vae_inference_seconds_count{component="decoder",model="tiny-vae"}' in text
    assert (
        'vae_model_loaded{model="tiny-vae",provider="CPUExecutionProvider",version="1"} 1.0' in text
    )
    assert "process_resident_memory_bytes" in text


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("/vae.v1.VaeService/Sample", "vae.v1.SampleRequest"),
        ("/vae.v1.VaeService/SampleStream", "vae.v1.SampleStreamRequest"),
        ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
        ("/inference.GRPCInferenceService/ServerReady", "inference.ServerReadyRequest"),
    ],
)
def test_a_request_that_does_not_parse_is_invalid_argument_naming_the_method(
    channel, method, message
):
    # Field 1 as a length-delimited value that claims 100 bytes and brings 1: not a message.
    garbage = b"\x0a\x64\x00"
    if method.endswith("SampleStream"):
        call = channel.unary_stream(method)(garbage, timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    else:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(method)(garbage, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details()
    assert details.startswith(f"{method}: the request is not a valid {message} message")
    # The server goes on answering well-formed calls on the same channel.
    reply = vae_pb2_grpc.VaeServiceStub(channel).Sample(
        vae_pb2.SampleRequest(model=vae_pb2.ModelRef(name="tiny-vae"), count=1, seed=1), timeout=10
    )
    assert len(reply.latents.shape) == 2


def test_sample_draws_seed_scheme_2_a_client_can_repeat_offline(stub):
    reply = stub.Sample(
        vae_pb2.SampleRequest(model=vae_pb2.ModelRef(name="tiny-vae"), count=3, seed=12345),
        timeout=30,
    )
    latents = tensor_to_numpy(reply.latents)
    offline = np.random.Generator(np.random.Philox(key=12345)).standard_normal(
        latents.shape, dtype=np.float32
    )
    assert np.array_equal(latents, offline)
