"""The Open Inference Protocol (KServe v2) against a real server on loopback, through tritonclient:
every v2 call, answers equal to vae.v1's, and each bad input with its status code and message."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server.codecs import tensor_to_numpy, tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.server_helpers import metric, running_server, settings, wait_until

DIM = 8  # the tiny models' latent size (tests/conftest.py)
IMAGE = (1, 28, 28)
MAX_BATCH, MAX_SAMPLES = 256, 128  # the live_server fixture's limits


@pytest.fixture(scope="module")
def client(live_server):
    with tc.InferenceServerClient(live_server.address) as client:
        yield client


@pytest.fixture(scope="module")
def v1(live_server):
    with grpc.insecure_channel(live_server.address) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


@pytest.fixture(scope="module")
def raw(live_server):
    """tritonclient's own stub, for requests its high-level client will not build."""
    with grpc.insecure_channel(live_server.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, array: np.ndarray) -> tc.InferInput:
    value = tc.InferInput(name, list(array.shape), tc.np_to_triton_dtype(array.dtype))
    value.set_data_from_numpy(array)
    return value


def infer(client, model: str, outputs=(), **arrays: np.ndarray) -> tc.InferResult:
    requested = [tc.InferRequestedOutput(name) for name in outputs] or None
    inputs = [tensor(name, array) for name, array in arrays.items()]
    return client.infer(model, inputs, outputs=requested)


def latents(rows: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, DIM), dtype=np.float32)


def refused(call) -> tuple[str, str]:
    with pytest.raises(tc.InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def ref(name: str = "tiny-vae") -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=name)


# --- server and model metadata ------------------------------------------------------------------


def test_server_is_live_and_ready(client):
    assert client.is_server_live() and client.is_server_ready()


def test_server_metadata_names_the_server_and_its_extensions(client):
    metadata = client.get_server_metadata()
    assert (metadata.name, list(metadata.extensions)) == ("vae-serve", ["model_configuration"])


@pytest.mark.parametrize("role", ["encoder", "decoder", "sampler"])
def test_every_model_is_ready_as_three_v2_models(client, role):
    assert client.is_model_ready(f"tiny-vae-{role}")
    assert client.is_model_ready(f"tiny-vae-{role}", model_version="1")


@pytest.mark.parametrize(
    ("name", "version"), [("tiny-vae", ""), ("nope-decoder", ""), ("tiny-vae-decoder", "7")]
)
def test_an_unknown_model_or_version_is_not_ready(client, name, version):
    assert not client.is_model_ready(name, model_version=version)


def test_repository_index_lists_each_version_of_each_v2_model(client):
    index = client.get_model_repository_index()
    entries = {(m.name, m.version, m.state) for m in index.models}
    for model in ("tiny-vae", "tiny-cvae", "tiny-ae"):
        for role in ("encoder", "decoder", "sampler"):
            assert (f"{model}-{role}", "1", "READY") in entries
    assert len(entries) == 9


def _tensors(specs) -> list[tuple[str, str, list[int]]]:
    return [(t.name, t.datatype, list(t.shape)) for t in specs]


def test_decoder_metadata_of_a_conditional_model(client):
    metadata = client.get_model_metadata("tiny-cvae-decoder")
    assert (metadata.name, list(metadata.versions), metadata.platform) == (
        "tiny-cvae-decoder",
        ["1"],
        "onnxruntime_onnx",
    )
    assert _tensors(metadata.inputs) == [("latent", "FP32", [-1, DIM]), ("label", "INT64", [-1])]
    assert _tensors(metadata.outputs) == [("image", "FP32", [-1, *IMAGE])]


def test_encoder_metadata_of_a_vae_and_of_an_autoencoder(client):
    vae = client.get_model_metadata("tiny-vae-encoder")
    assert _tensors(vae.inputs) == [("image", "FP32", [-1, *IMAGE])]
    assert _tensors(vae.outputs) == [
        ("mean", "FP32", [-1, DIM]),
        ("log_variance", "FP32", [-1, DIM]),
    ]
    ae = client.get_model_metadata("tiny-ae-encoder")
    assert _tensors(ae.outputs) == [("mean", "FP32", [-1, DIM])]


def test_sampler_metadata(client):
    metadata = client.get_model_metadata("tiny-cvae-sampler")
    assert _tensors(metadata.inputs) == [
        ("count", "INT32", [1]),
        ("seed", "UINT64", [1]),
        ("temperature", "FP32", [1]),
        ("label", "INT64", [1]),
    ]
    assert _tensors(metadata.outputs) == [
        ("image", "FP32", [-1, *IMAGE]),
        ("latent", "FP32", [-1, DIM]),
    ]


def test_model_config_gives_perf_analyzer_the_batch_limit_and_the_tensors(client):
    config = client.get_model_config("tiny-vae-decoder").config
    assert (config.name, config.max_batch_size) == ("tiny-vae-decoder", MAX_BATCH)
    assert [(t.name, list(t.dims)) for t in config.input] == [("latent", [DIM])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("image", list(IMAGE))]
    sampler = client.get_model_config("tiny-vae-sampler").config
    assert sampler.max_batch_size == 0
    assert [(t.name, t.optional) for t in sampler.input] == [
        ("count", False),
        ("seed", True),
        ("temperature", True),
    ]


def test_reflection_lists_and_describes_the_inference_service(live_server):
    with grpc.insecure_channel(live_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="vae.v1.VaeService"),
        ]
        listed, inference, vae = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "vae.v1.VaeService"} <= names
    assert inference.file_descriptor_response.file_descriptor_proto  # described, not an error
    assert vae.file_descriptor_response.file_descriptor_proto


# --- inference, equal to vae.v1 -----------------------------------------------------------------


def test_decoder_gives_what_vae_v1_decode_gives(client, v1):
    z = latents()
    images = infer(client, "tiny-vae-decoder", latent=z).as_numpy("image")
    reply = v1.Decode(vae_pb2.DecodeRequest(model=ref(), latents=tensor_to_proto(z)))
    np.testing.assert_array_equal(images, tensor_to_numpy(reply.images))


def test_conditional_decoder_takes_labels_like_vae_v1(client, v1):
    z, labels = latents(), np.array([0, 3, 9], dtype=np.int64)
    images = infer(client, "tiny-cvae-decoder", latent=z, label=labels).as_numpy("image")
    request = vae_pb2.DecodeRequest(
        model=ref("tiny-cvae"), latents=tensor_to_proto(z), labels=labels
    )
    np.testing.assert_array_equal(images, tensor_to_numpy(v1.Decode(request).images))


def test_encoder_gives_what_vae_v1_encode_gives(client, v1):
    images = np.random.default_rng(1).random((3, *IMAGE), dtype=np.float32)
    result = infer(client, "tiny-vae-encoder", image=images)
    reply = v1.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images)))
    np.testing.assert_array_equal(result.as_numpy("mean"), tensor_to_numpy(reply.mean))
    np.testing.assert_array_equal(
        result.as_numpy("log_variance"), tensor_to_numpy(reply.log_variance)
    )


def test_autoencoder_encoder_returns_only_the_mean(client):
    images = np.random.default_rng(2).random((2, *IMAGE), dtype=np.float32)
    response = infer(client, "tiny-ae-encoder", image=images).get_response()
    assert [o.name for o in response.outputs] == ["mean"]


def test_sampler_with_a_seed_gives_what_vae_v1_sample_gives(client, v1):
    result = infer(
        client,
        "tiny-vae-sampler",
        count=np.array([5], np.int32),
        seed=np.array([42], np.uint64),
        temperature=np.array([0.7], np.float32),
    )
    reply = v1.Sample(vae_pb2.SampleRequest(model=ref(), count=5, seed=42, temperature=0.7))
    np.testing.assert_array_equal(result.as_numpy("image"), tensor_to_numpy(reply.images))
    np.testing.assert_array_equal(result.as_numpy("latent"), tensor_to_numpy(reply.latents))
    assert result.get_response().parameters["seed"].int64_param == 42


def _sample_with_prior(raw, prior, model: str = "tiny-vae-sampler"):
    request = _raw_request(
        ("count", "INT32", [1], np.array([4], np.int32).tobytes()),
        ("seed", "UINT64", [1], np.array([9], np.uint64).tobytes()),
    )
    request.model_name = model
    if isinstance(prior, str):
        request.parameters["prior"].string_param = prior
    else:
        request.parameters["prior"].int64_param = prior
    return raw.ModelInfer(request)


def test_sampler_prior_parameter_draws_the_mixture_like_vae_v1(raw, v1):
    reply = _sample_with_prior(raw, "mixture")
    images = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(4, *IMAGE)
    v1_reply = v1.Sample(
        vae_pb2.SampleRequest(model=ref(), count=4, seed=9, prior=vae_pb2.PRIOR_MIXTURE)
    )
    np.testing.assert_array_equal(images, tensor_to_numpy(v1_reply.images))
    standard = _sample_with_prior(raw, "standard_normal")
    assert standard.raw_output_contents[0] != reply.raw_output_contents[0]


@pytest.mark.parametrize(
    ("model", "prior", "code", "message"),
    [
        ("tiny-vae-sampler", "gamma", "INVALID_ARGUMENT", "prior 'gamma' is not one of"),
        (
            "tiny-vae-sampler",
            3,
            "INVALID_ARGUMENT",
            "parameter prior must be a string (string_param)",
        ),
    ],
)
def test_a_bad_sampler_prior_is_refused(raw, model, prior, code, message):
    with pytest.raises(grpc.RpcError) as info:
        _sample_with_prior(raw, prior, model)
    assert info.value.code().name == code
    assert message in info.value.details()


def test_conditional_sampler_takes_a_label_like_vae_v1(client, v1):
    result = infer(
        client,
        "tiny-cvae-sampler",
        count=np.array([3], np.int32),
        seed=np.array([5], np.uint64),
        label=np.array([4], np.int64),
    )
    reply = v1.Sample(vae_pb2.SampleRequest(model=ref("tiny-cvae"), count=3, seed=5, label=4))
    np.testing.assert_array_equal(result.as_numpy("image"), tensor_to_numpy(reply.images))


def test_sampler_without_a_seed_reports_the_seed_it_drew(client):
    first = infer(client, "tiny-vae-sampler", count=np.array([2], np.int32))
    seed = first.get_response().parameters["seed"].int64_param
    again = infer(
        client, "tiny-vae-sampler", count=np.array([2], np.int32), seed=np.array([seed], np.uint64)
    )
    np.testing.assert_array_equal(first.as_numpy("image"), again.as_numpy("image"))


def test_outputs_in_the_request_select_what_comes_back(client):
    result = infer(client, "tiny-vae-sampler", outputs=["latent"], count=np.array([2], np.int32))
    assert [o.name for o in result.get_response().outputs] == ["latent"]
    assert result.as_numpy("latent").shape == (2, DIM)


def test_typed_contents_give_what_raw_contents_give(client, raw):
    z = latents(2)
    request = service_pb2.ModelInferRequest(model_name="tiny-vae-decoder")
    request.inputs.add(name="latent", datatype="FP32", shape=z.shape).contents.fp32_contents.extend(
        z.ravel().tolist()
    )
    reply = raw.ModelInfer(request)
    typed = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(reply.outputs[0].shape)
    np.testing.assert_array_equal(
        typed, infer(client, "tiny-vae-decoder", latent=z).as_numpy("image")
    )


def test_model_version_selects_a_version_and_the_response_names_it(client):
    z = latents(1)
    request = [tensor("latent", z)]
    response = client.infer("tiny-vae-decoder", request, model_version="1", request_id="r-7")
    assert (response.get_response().model_version, response.get_response().id) == ("1", "r-7")


def test_encoder_clamp_parameter_clips_images_like_vae_v1(client, raw):
    images = np.full((1, *IMAGE), 1.5, np.float32)
    request = service_pb2.ModelInferRequest(model_name="tiny-vae-encoder")
    request.inputs.add(name="image", datatype="FP32", shape=images.shape)
    request.raw_input_contents.append(images.tobytes())
    request.parameters["clamp"].bool_param = True
    clipped = raw.ModelInfer(request).raw_output_contents[0]
    ones = infer(client, "tiny-vae-encoder", image=np.ones_like(images)).as_numpy("mean")
    np.testing.assert_array_equal(np.frombuffer(clipped, np.float32).reshape(ones.shape), ones)


# --- refusals -----------------------------------------------------------------------------------

F32, I32, I64 = np.float32, np.int32, np.int64


@pytest.mark.parametrize(
    ("model", "version", "code", "message"),
    [
        (
            "nope-decoder",
            "",
            "NOT_FOUND",
            "unknown model 'nope-decoder'; models are tiny-ae-encoder",
        ),
        ("tiny-vae", "", "NOT_FOUND", "tiny-vae-decoder, tiny-vae-sampler"),
        ("tiny-vae-decoder", "7", "NOT_FOUND", "has no version 7; loaded versions are [1]"),
        (
            "tiny-vae-decoder",
            "x",
            "INVALID_ARGUMENT",
            "empty (the highest loaded) or a positive integer, got 'x'",
        ),
    ],
)
def test_unknown_model_or_bad_version(client, model, version, code, message):
    status, text = refused(
        lambda: client.infer(model, [tensor("latent", latents(1))], model_version=version)
    )
    assert status == f"StatusCode.{code}" and message in text
    status, text = refused(lambda: client.get_model_metadata(model, model_version=version))
    assert status == f"StatusCode.{code}" and message in text


@pytest.mark.parametrize(
    ("model", "inputs", "code", "message"),
    [
        (
            "tiny-vae-decoder",
            {"latent": np.zeros((2, DIM), np.float64)},
            "INVALID_ARGUMENT",
            "input 'latent' has datatype FP64; expected FP32",
        ),
        (
            "tiny-vae-decoder",
            {"latent": np.zeros((2, DIM - 1), F32)},
            "INVALID_ARGUMENT",
            "input 'latent' has shape [2, 7]; expected [-1, 8]",
        ),
        (
            "tiny-vae-decoder",
            {"z": np.zeros((2, DIM), F32)},
            "INVALID_ARGUMENT",
            "no input named 'z'; its inputs are latent FP32 [-1, 8]",
        ),
        (
            "tiny-vae-decoder",
            {"latent": np.full((1, DIM), np.nan, F32)},
            "INVALID_ARGUMENT",
            "input 'latent' contains NaN or infinite values",
        ),
        (
            "tiny-vae-decoder",
            {"latent": np.zeros((MAX_BATCH + 1, DIM), F32)},
            "RESOURCE_EXHAUSTED",
            f"257 rows is over this server's limit of {MAX_BATCH}",
        ),
        (
            "tiny-vae-decoder",
            {"latent": np.zeros((1, DIM), F32), "label": np.zeros(1, I64)},
            "INVALID_ARGUMENT",
            "no input named 'label'",
        ),
        (
            "tiny-cvae-decoder",
            {"latent": np.zeros((1, DIM), F32)},
            "INVALID_ARGUMENT",
            "missing input label INT64 [-1]",
        ),
        (
            "tiny-cvae-decoder",
            {"latent": np.zeros((2, DIM), F32), "label": np.array([1, 10], I64)},
            "INVALID_ARGUMENT",
            "label 10 is out of range; model 'tiny-cvae' has classes 0..9",
        ),
        (
            "tiny-cvae-decoder",
            {"latent": np.zeros((2, DIM), F32), "label": np.array([1], I64)},
            "INVALID_ARGUMENT",
            "send one label per row (2), got 1",
        ),
        (
            "tiny-vae-encoder",
            {"image": np.full((1, *IMAGE), 2.0, F32)},
            "INVALID_ARGUMENT",
            "values must lie in [0, 1]",
        ),
        (
            "tiny-ae-encoder",
            {"image": np.zeros((1, 1, 27, 28), F32)},
            "INVALID_ARGUMENT",
            "expected [-1, 1, 28, 28]",
        ),
        (
            "tiny-vae-sampler",
            {"count": np.array([MAX_SAMPLES + 1], I32)},
            "RESOURCE_EXHAUSTED",
            f"count 129 is over this server's limit of {MAX_SAMPLES} samples",
        ),
        (
            "tiny-vae-sampler",
            {"count": np.array([0], I32)},
            "INVALID_ARGUMENT",
            "count must be between 1 and 128, got 0",
        ),
        (
            "tiny-vae-sampler",
            {"count": np.array([1], I64)},
            "INVALID_ARGUMENT",
            "input 'count' has datatype INT64; expected INT32",
        ),
        (
            "tiny-vae-sampler",
            {"count": np.array([1, 2], I32)},
            "INVALID_ARGUMENT",
            "input 'count' has shape [2]; expected [1]",
        ),
        (
            "tiny-vae-sampler",
            {"seed": np.array([1], np.uint64)},
            "INVALID_ARGUMENT",
            "missing input count INT32 [1]",
        ),
        (
            "tiny-vae-sampler",
            {"count": np.array([1], I32), "seed": np.array([2**63], np.uint64)},
            "INVALID_ARGUMENT",
            "seed 9223372036854775808 is out of range",
        ),
        (
            "tiny-vae-sampler",
            {"count": np.array([1], I32), "temperature": np.array([99], F32)},
            "INVALID_ARGUMENT",
            "temperature must be in (0, 10",
        ),
        (
            "tiny-cvae-sampler",
            {"count": np.array([1], I32)},
            "INVALID_ARGUMENT",
            "missing input label INT64 [1]",
        ),
    ],
)
def test_bad_inputs_are_refused_naming_what_is_expected(client, model, inputs, code, message):
    status, text = refused(lambda: infer(client, model, **inputs))
    assert status == f"StatusCode.{code}", text
    assert message in text


def test_an_unknown_output_is_refused_naming_the_outputs(client):
    status, text = refused(
        lambda: infer(
            client, "tiny-ae-encoder", outputs=["log_variance"], image=np.zeros((1, *IMAGE), F32)
        )
    )
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "no output named 'log_variance'; its outputs are mean FP32 [-1, 8]" in text


def _raw_request(*tensors: tuple[str, str, list[int], bytes]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="tiny-vae-decoder")
    for name, datatype, shape, data in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    return request


def _refused_raw(raw, request) -> str:
    with pytest.raises(grpc.RpcError) as info:
        raw.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return info.value.details()


def test_raw_contents_of_the_wrong_size_are_refused(raw):
    request = _raw_request(("latent", "FP32", [2, DIM], b"\0" * (2 * DIM * 4 - 4)))
    assert "needs 64 bytes of little-endian FP32 in raw_input_contents[0], got 60" in _refused_raw(
        raw, request
    )


def test_raw_contents_must_cover_every_input(raw):
    request = _raw_request(("latent", "FP32", [1, DIM], b"\0" * DIM * 4))
    request.raw_input_contents.append(b"")
    assert "raw_input_contents holds 2 tensors for 1 inputs" in _refused_raw(raw, request)


def test_an_input_sent_twice_is_refused(raw):
    one = ("latent", "FP32", [1, DIM], b"\0" * DIM * 4)
    assert "input 'latent' is sent twice" in _refused_raw(raw, _raw_request(one, one))


def test_typed_contents_of_the_wrong_length_are_refused(raw):
    request = service_pb2.ModelInferRequest(model_name="tiny-vae-decoder")
    request.inputs.add(
        name="latent", datatype="FP32", shape=[1, DIM]
    ).contents.fp32_contents.extend([0.0] * 3)
    assert "needs 8 values in contents.fp32_contents, got 3" in _refused_raw(raw, request)


def test_a_clamp_parameter_that_is_not_a_bool_is_refused(raw):
    request = _raw_request(("image", "FP32", [1, *IMAGE], b"\0" * 784 * 4))
    request.model_name = "tiny-vae-encoder"
    request.parameters["clamp"].string_param = "yes"
    assert "parameter clamp must be a bool" in _refused_raw(raw, request)


# --- metrics ------------------------------------------------------------------------------------


def test_model_infer_is_counted_by_rpc_model_and_code(client, live_server):
    server = live_server.server
    ok = dict(rpc="ModelInfer", model="tiny-vae", code="OK")
    bad = dict(rpc="ModelInfer", model="tiny-vae", code="INVALID_ARGUMENT")
    before_ok, before_bad = (
        metric(server, "vae_requests_total", **ok),
        metric(server, "vae_requests_total", **bad),
    )
    infer(client, "tiny-vae-decoder", latent=latents(1))
    refused(lambda: infer(client, "tiny-vae-decoder", latent=latents(1)[:, :3]))
    assert metric(server, "vae_requests_total", **ok) == before_ok + 1
    assert metric(server, "vae_requests_total", **bad) == before_bad + 1
    assert metric(server, "vae_request_latency_seconds_count", **ok) >= 1


def test_metadata_calls_are_counted_under_their_own_rpc(client, live_server):
    before = metric(live_server.server, "vae_requests_total", rpc="ServerLive", model="", code="OK")
    client.is_server_live()
    assert (
        metric(live_server.server, "vae_requests_total", rpc="ServerLive", model="", code="OK")
        == before + 1
    )


def test_calls_while_draining_get_unavailable_like_vae_v1(repository):
    with running_server(settings(repository)) as server:
        server.calls.draining = True  # what the drain sets once --drain-delay-seconds has passed
        with tc.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            status, text = refused(lambda: infer(client, "tiny-vae-decoder", latent=latents(1)))
        server.calls.draining = False
    assert status == "StatusCode.UNAVAILABLE"
    assert "server is shutting down; retry against another replica" in text


def test_readiness_turns_false_as_soon_as_the_drain_starts(repository):
    with running_server(settings(repository, drain_delay_seconds=3.0)) as server:
        with tc.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            assert client.is_server_ready() and client.is_model_ready("tiny-vae-decoder")
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            wait_until(lambda: not client.is_server_ready(), timeout=2.5, what="ServerReady false")
            assert not client.is_model_ready("tiny-vae-decoder")
            assert client.is_server_live()  # still answering during --drain-delay-seconds
        stopper.join()
