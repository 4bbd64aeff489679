"""The curl-able image routes against a real server: the PNGs and JSON they answer are what vae.v1
gives for the same request, and /openapi.json describes every route the server has."""

from __future__ import annotations

import base64
import io

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from server.codecs import grid_png, tensor_to_numpy, tensor_to_proto
from server.dataplane.latent_space import sample_prior
from server.fronts.http.app import build_routes
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

DIM = 8
IMAGE = (1, 28, 28)


@pytest.fixture(scope="module")
def base(live_server) -> str:
    return f"http://127.0.0.1:{live_server.server.http_port}"


@pytest.fixture(scope="module")
def v1(live_server):
    with grpc.insecure_channel(live_server.address) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


def ref(name: str = "tiny-vae") -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=name)


def v1_sample(v1, count: int, seed: int, **kw) -> vae_pb2.SampleResponse:
    return v1.Sample(vae_pb2.SampleRequest(model=ref(kw.pop("model", "tiny-vae")), count=count, seed=seed, **kw))  # fmt: skip


def test_sample_is_a_png_grid_of_what_vae_v1_samples(base, v1):
    response = requests.get(f"{base}/v1/models/tiny-vae/sample?count=6&seed=7&columns=3")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Vae-Seed"] == "7"
    images = tensor_to_numpy(v1_sample(v1, 6, 7).images)
    assert response.content == grid_png(images, 3)
    assert Image.open(io.BytesIO(response.content)).size == (3 * 30 + 2, 2 * 30 + 2)


def test_sample_without_a_seed_says_the_seed_that_repeats_it(base):
    first = requests.get(f"{base}/v1/models/tiny-vae/sample?count=4")
    seed = first.headers["X-Vae-Seed"]
    again = requests.get(f"{base}/v1/models/tiny-vae/sample?count=4&seed={seed}")
    assert again.content == first.content


def test_sample_as_json_gives_latents_images_and_pngs(base, v1):
    response = requests.get(
        f"{base}/v1/models/tiny-vae/sample?count=3&seed=11&temperature=0.5",
        headers={"Accept": "application/json"},
    )
    answer = response.json()
    reply = v1_sample(v1, 3, 11, temperature=0.5, format=vae_pb2.IMAGE_FORMAT_TENSOR_AND_PNG)
    latents = np.array(answer["latents"]["data"], np.float32).reshape(answer["latents"]["shape"])
    images = np.array(answer["images"]["data"], np.float32).reshape(answer["images"]["shape"])
    np.testing.assert_array_equal(latents, tensor_to_numpy(reply.latents))
    np.testing.assert_array_equal(images, tensor_to_numpy(reply.images))
    assert answer["seed"] == 11 and answer["model"] == "tiny-vae" and answer["version"] == 1
    assert [base64.b64decode(png) for png in answer["png"]] == list(reply.png)


def test_sample_takes_the_prior_and_the_label(base, v1):
    mixture = requests.get(f"{base}/v1/models/tiny-vae/sample?count=4&seed=3&prior=mixture")
    reply = v1_sample(v1, 4, 3, prior=vae_pb2.PRIOR_MIXTURE)
    assert mixture.content == grid_png(tensor_to_numpy(reply.images), 2)
    labelled = requests.get(f"{base}/v1/models/tiny-cvae/sample?count=4&seed=3&label=7")
    reply = v1_sample(v1, 4, 3, label=7, model="tiny-cvae")
    assert labelled.content == grid_png(tensor_to_numpy(reply.images), 2)


def test_interpolating_two_seeds_walks_between_their_first_samples(base, v1):
    response = requests.get(
        f"{base}/v1/models/tiny-vae/interpolate?start_seed=1&end_seed=2&steps=5&method=spherical",
        headers={"Accept": "application/json"},
    )
    answer = response.json()
    ends = [v1_sample(v1, 1, seed).latents for seed in (1, 2)]
    np.testing.assert_array_equal(tensor_to_numpy(ends[0])[0], sample_prior(1, DIM, 1)[0])
    request = vae_pb2.InterpolateRequest(
        model=ref(),
        steps=5,
        method=vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
        latents=vae_pb2.LatentPair(start=ends[0], end=ends[1]),
    )
    reply = v1.Interpolate(request)
    latents = np.array(answer["latents"]["data"], np.float32).reshape(5, DIM)
    np.testing.assert_array_equal(latents, tensor_to_numpy(reply.latents))


def test_interpolating_two_latents_gives_a_png_strip(base, v1):
    start, end = np.zeros(DIM, np.float32), np.ones(DIM, np.float32)
    query = f"start={','.join(map(str, start))}&end={','.join(map(str, end))}&steps=4"
    response = requests.get(f"{base}/v1/models/tiny-vae/interpolate?{query}")
    request = vae_pb2.InterpolateRequest(
        model=ref(),
        steps=4,
        latents=vae_pb2.LatentPair(
            start=tensor_to_proto(start[None]), end=tensor_to_proto(end[None])
        ),
    )
    assert response.content == grid_png(tensor_to_numpy(v1.Interpolate(request).images), 4)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encode_a_png_gives_what_vae_v1_encode_gives(base, v1):
    pixels = np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)
    response = requests.post(
        f"{base}/v1/models/tiny-vae/encode",
        data=_png(pixels),
        headers={"Content-Type": "image/png"},
    )
    answer = response.json()
    images = (pixels.astype(np.float32) / np.float32(255.0))[None, None]
    reply = v1.Encode(vae_pb2.EncodeRequest(model=ref(), images=tensor_to_proto(images)))
    np.testing.assert_array_equal(np.array(answer["mean"], np.float32), tensor_to_numpy(reply.mean))
    np.testing.assert_array_equal(
        np.array(answer["log_variance"], np.float32), tensor_to_numpy(reply.log_variance)
    )


def test_encode_a_larger_image_file_resizes_it_as_training_did(base):
    pixels = np.random.default_rng(5).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    response = requests.post(f"{base}/v1/models/tiny-vae/encode", data=_png(pixels))
    assert response.status_code == 200, response.text
    assert np.array(response.json()["mean"]).shape == (1, DIM)


def test_encode_json_images_with_labels(base, v1):
    images = np.random.default_rng(6).random((2, *IMAGE), dtype=np.float32)
    response = requests.post(
        f"{base}/v1/models/tiny-cvae/encode", json={"images": images.tolist(), "labels": [1, 2]}
    )
    reply = v1.Encode(
        vae_pb2.EncodeRequest(model=ref("tiny-cvae"), images=tensor_to_proto(images), labels=[1, 2])
    )
    np.testing.assert_array_equal(
        np.array(response.json()["mean"], np.float32), tensor_to_numpy(reply.mean)
    )


def test_decode_latents_to_a_png_grid_or_json(base, v1):
    z = np.random.default_rng(7).standard_normal((4, DIM), dtype=np.float32)
    reply = v1.Decode(vae_pb2.DecodeRequest(model=ref(), latents=tensor_to_proto(z)))
    png = requests.post(f"{base}/v1/models/tiny-vae/decode?columns=4", json={"latents": z.tolist()})
    assert png.headers["Content-Type"] == "image/png"
    assert png.content == grid_png(tensor_to_numpy(reply.images), 4)
    answer = requests.post(
        f"{base}/v1/models/tiny-vae/decode",
        json={"latents": z.tolist()},
        headers={"Accept": "application/json"},
    ).json()
    images = np.array(answer["images"]["data"], np.float32).reshape(4, *IMAGE)
    np.testing.assert_array_equal(images, tensor_to_numpy(reply.images))


def test_models_lists_every_model_with_its_metadata(base, v1):
    models = {m["name"]: m for m in requests.get(f"{base}/v1/models").json()["models"]}
    assert set(models) == {"tiny-vae", "tiny-cvae", "tiny-ae"}
    info = v1.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref("tiny-cvae")))
    cvae = models["tiny-cvae"]
    assert (cvae["latent_dim"], cvae["num_classes"], cvae["kind"]) == (DIM, 10, "cvae")
    assert cvae["image_shape"] == list(IMAGE) and cvae["version"] == info.version
    assert cvae["priors"] == ["standard_normal", "mixture"]
    one = requests.get(f"{base}/v1/models/tiny-cvae?version=1").json()
    assert one == cvae


def test_openapi_describes_every_route_the_server_has(base, live_server):
    document = requests.get(f"{base}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    server = live_server.server
    routes = build_routes(server.store, server.plane, lambda: True, lambda name: True)
    described = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert described == {(route.method, route.pattern) for route in routes}
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == len(routes)
    assert not any(i.endswith("_") for i in ids)
    sample = document["paths"]["/v1/models/{model}/sample"]["get"]
    assert {p["name"] for p in sample["parameters"]} >= {"model", "count", "seed", "prior"}


def test_every_described_get_route_answers(base):
    """Each GET path of /openapi.json, filled with a real model, answers 200."""
    document = requests.get(f"{base}/openapi.json").json()
    names = {"model": "tiny-vae", "version": "1", "file": "explorer.js"}
    for path, operations in document["paths"].items():
        if "get" not in operations or path.endswith("/manifold"):
            continue
        model = "tiny-vae-decoder" if path.startswith("/v2/models") else "tiny-vae"
        url = path.format(**{**names, "model": model})
        if path.endswith("/interpolate"):
            url += "?start_seed=1&end_seed=2"
        assert requests.get(base + url).status_code == 200, url
