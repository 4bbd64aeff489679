"""The Open Inference Protocol over REST against a real server on loopback, through tritonclient.http
(JSON and binary tensors): the answers equal vae.v1's bit for bit, and the metadata, config, index
and readiness routes say what the gRPC v2 front says."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc_grpc
import tritonclient.http as th

from server.codecs import tensor_to_numpy, tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

DIM = 8
IMAGE = (1, 28, 28)
MAX_BATCH = 256  # the live_server fixture's limit


@pytest.fixture(scope="module")
def url(live_server) -> str:
    return f"127.0.0.1:{live_server.server.http_port}"


@pytest.fixture(scope="module")
def client(url):
    client = th.InferenceServerClient(url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1(live_server):
    with grpc.insecure_channel(live_server.address) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


def infer(client, model: str, binary: bool, outputs=(), parameters=None, **arrays: np.ndarray):
    inputs = []
    for name, array in arrays.items():
        value = th.InferInput(name, list(array.shape), th.np_to_triton_dtype(array.dtype))
        value.set_data_from_numpy(array, binary_data=binary)
        inputs.append(value)
    wanted = [th.InferRequestedOutput(name, binary_data=binary) for name in outputs] or None
    return client.infer(model, inputs, outputs=wanted, parameters=parameters)


def latents(rows: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, DIM), dtype=np.float32)


def ref(name: str = "tiny-vae") -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=name)


def test_server_is_live_and_ready(client):
    assert client.is_server_live() and client.is_server_ready()


def test_server_metadata_names_the_server_and_its_extensions(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "vae-serve"
    assert metadata["extensions"] == ["model_configuration"]


@pytest.mark.parametrize("role", ["encoder", "decoder", "sampler"])
def test_every_model_is_ready_as_three_v2_models(client, role):
    assert client.is_model_ready(f"tiny-vae-{role}")
    assert client.is_model_ready(f"tiny-vae-{role}", "1")


@pytest.mark.parametrize(("name", "version"), [("tiny-vae-painter", ""), ("tiny-vae-decoder", "9")])
def test_an_unknown_model_or_version_is_not_ready(client, name, version):
    assert not client.is_model_ready(name, version)


def test_metadata_equals_the_grpc_v2_fronts(client, live_server):
    with tc_grpc.InferenceServerClient(live_server.address) as grpc_client:
        for role in ("encoder", "decoder", "sampler"):
            name = f"tiny-cvae-{role}"
            rest = client.get_model_metadata(name)
            over_grpc = grpc_client.get_model_metadata(name, as_json=True)
            for side in (rest, over_grpc):
                for tensor in (*side["inputs"], *side["outputs"]):
                    tensor["shape"] = [int(d) for d in tensor["shape"]]
            assert rest == over_grpc


def test_model_config_gives_perf_analyzer_the_batch_limit_and_the_tensors(client):
    config = client.get_model_config("tiny-vae-decoder")
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"][0] == {
        "name": "latent",
        "data_type": "TYPE_FP32",
        "dims": [DIM],
        "optional": False,
    }
    assert config["output"][0]["dims"] == list(IMAGE)


def test_repository_index_lists_each_version_of_each_v2_model(client):
    index = client.get_model_repository_index()
    names = {(entry["name"], entry["version"], entry["state"]) for entry in index}
    for model in ("tiny-vae", "tiny-cvae", "tiny-ae"):
        for role in ("encoder", "decoder", "sampler"):
            assert (f"{model}-{role}", "1", "READY") in names


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decoder_gives_what_vae_v1_decode_gives(client, v1, binary):
    z = latents(64)
    images = infer(client, "tiny-vae-decoder", binary, latent=z).as_numpy("image")
    reply = v1.Decode(vae_pb2.DecodeRequest(model=ref(), latents=tensor_to_proto(z)))
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, tensor_to_numpy(reply.images))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_conditional_decoder_takes_labels_like_vae_v1(client, v1, binary):
    z, labels = latents(), np.array([0, 3, 9], dtype=np.int64)
    images = infer(client, "tiny-cvae-decoder", binary, latent=z, label=labels).as_numpy("image")
    request = vae_pb2.DecodeRequest(
        model=ref("tiny-cvae"), latents=tensor_to_proto(z), labels=labels
    )
    np.testing.assert_array_equal(images, tensor_to_numpy(v1.Decode(request).images))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encoder_gives_what_vae_v1_encode_gives(client, v1, binary):
    images = np.random.default_rng(1).random((3, *IMAGE), dtype=np.float32)
    result = infer(client, "tiny-vae-encoder", binary, image=images)
    reply = v1.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images)))
    np.testing.assert_array_equal(result.as_numpy("mean"), tensor_to_numpy(reply.mean))
    np.testing.assert_array_equal(
        result.as_numpy("log_variance"), tensor_to_numpy(reply.log_variance)
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_sampler_with_a_seed_gives_what_vae_v1_sample_gives(client, v1, binary):
    result = infer(
        client,
        "tiny-vae-sampler",
        binary,
        count=np.array([5], np.int32),
        seed=np.array([42], np.uint64),
        temperature=np.array([0.7], np.float32),
    )
    reply = v1.Sample(vae_pb2.SampleRequest(model=ref(), count=5, seed=42, temperature=0.7))
    np.testing.assert_array_equal(result.as_numpy("image"), tensor_to_numpy(reply.images))
    np.testing.assert_array_equal(result.as_numpy("latent"), tensor_to_numpy(reply.latents))
    assert result.get_response()["parameters"]["seed"] == 42


def test_sampler_prior_parameter_draws_the_mixture_like_vae_v1(client, v1):
    count, seed = np.array([4], np.int32), np.array([9], np.uint64)
    result = infer(
        client, "tiny-vae-sampler", True, parameters={"prior": "mixture"}, count=count, seed=seed
    )
    reply = v1.Sample(
        vae_pb2.SampleRequest(model=ref(), count=4, seed=9, prior=vae_pb2.PRIOR_MIXTURE)
    )
    np.testing.assert_array_equal(result.as_numpy("image"), tensor_to_numpy(reply.images))
    standard = infer(client, "tiny-vae-sampler", True, count=count, seed=seed)
    assert not np.array_equal(standard.as_numpy("latent"), result.as_numpy("latent"))


def test_outputs_in_the_request_select_what_comes_back(client):
    result = infer(
        client, "tiny-vae-sampler", True, outputs=["latent"], count=np.array([2], np.int32)
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["latent"]
    assert result.as_numpy("latent").shape == (2, DIM)


def test_model_version_selects_a_version_and_the_response_names_it(client):
    value = th.InferInput("latent", [1, DIM], "FP32")
    value.set_data_from_numpy(latents(1))
    result = client.infer("tiny-vae-decoder", [value], model_version="1")
    assert result.get_response()["model_version"] == "1"


def test_a_plain_json_request_with_nested_data_gets_a_json_answer(url, v1):
    z = latents(2)
    body = {
        "id": "call-7",
        "inputs": [{"name": "latent", "datatype": "FP32", "shape": [2, DIM], "data": z.tolist()}],
    }
    response = requests.post(f"http://{url}/v2/models/tiny-vae-decoder/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    assert answer["id"] == "call-7" and answer["model_version"] == "1"
    (output,) = answer["outputs"]
    images = np.array(output["data"], np.float32).reshape(output["shape"])
    reply = v1.Decode(vae_pb2.DecodeRequest(model=ref(), latents=tensor_to_proto(z)))
    np.testing.assert_array_equal(images, tensor_to_numpy(reply.images))


def test_binary_output_of_a_json_request_follows_its_json_header(url):
    z = latents(1)
    body = {
        "inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, DIM], "data": z.ravel().tolist()}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    response = requests.post(f"http://{url}/v2/models/tiny-vae-decoder/infer", json=body)
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 28 * 28 * 4
    assert len(response.content) == length + 28 * 28 * 4
