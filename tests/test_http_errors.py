"""Bad requests on every HTTP route get a precise status and a one-line JSON error (the gRPC front's
text where both fronts refuse the same thing), are counted in the metrics, and the server stays up."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc_grpc

from tests.server_helpers import metric

DIM = 8
LATENT = {"name": "latent", "datatype": "FP32", "shape": [1, DIM], "data": [0.0] * DIM}


@pytest.fixture(scope="module")
def base(live_server) -> str:
    return f"http://127.0.0.1:{live_server.server.http_port}"


def refused(response: requests.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def infer(base: str, model: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{base}/v2/models/{model}/infer", data=data, **kwargs)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"{not json", ("not valid JSON", "line 1 column 2")),
        (b"[1, 2]", ("must be a JSON object, got list",)),
        ({"inputs": "latent"}, ("needs 'inputs', a list of tensors",)),
        ({"inputs": [{**LATENT, "shape": [1, 9], "data": [0.0] * 9}]}, ("has shape [1, 9]; expected [-1, 8]",)),
        ({"inputs": [{**LATENT, "datatype": "FP64"}]}, ("has datatype FP64; expected FP32",)),
        ({"inputs": [{**LATENT, "data": [0.0] * 3}]}, ("needs 8 values in 'data', got 3",)),
        ({"inputs": [{**LATENT, "data": ["a"] * DIM}]}, ("needs FP32 values",)),
        ({"inputs": [{**LATENT, "shape": "1x8"}]}, ("'shape' must be a list of integers",)),
        ({"inputs": [{**LATENT, "name": "z"}]}, ("no input named 'z'; its inputs are latent FP32 [-1, 8]",)),
        ({"inputs": [LATENT, LATENT]}, ("input 'latent' is sent twice",)),
        ({"inputs": []}, ("missing input latent FP32 [-1, 8]",)),
        ({"inputs": [{k: v for k, v in LATENT.items() if k != "data"}]}, ("has no 'data' and no binary_data_size",)),
        ({"inputs": [LATENT], "outputs": [{"name": "mean"}]}, ("no output named 'mean'",)),
        ({"inputs": [LATENT], "parameters": "x"}, ("'parameters' must be a JSON object",)),
        ({"inputs": [{**LATENT, "shape": [0, DIM], "data": []}]}, ("non-positive dimension",)),
    ],
)  # fmt: skip
def test_bad_infer_bodies_are_400_naming_what_is_expected(base, body, fragments):
    refused(infer(base, "tiny-vae-decoder", body), 400, *fragments)


def test_nan_in_json_data_is_refused(base):
    body = (
        b'{"inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, 2], "data": [NaN, 1]}]}'
    )
    body = body.replace(b"[1, 2]", b"[1, 8]").replace(b"[NaN, 1]", b"[NaN, 1, 1, 1, 1, 1, 1, 1]")
    refused(infer(base, "tiny-vae-decoder", body), 400, "NaN or infinite")


def test_nan_in_binary_data_is_refused(base):
    data = np.full((1, DIM), np.nan, np.float32).tobytes()
    header = json.dumps(
        {"inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, DIM],
                     "parameters": {"binary_data_size": len(data)}}]}
    ).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(header))}
    refused(infer(base, "tiny-vae-decoder", header + data, headers=headers), 400, "NaN")


@pytest.mark.parametrize(
    ("declared", "sent", "length", "fragments"),
    [
        (4 * DIM - 4, 4 * DIM - 4, None, ("needs 32 bytes of little-endian FP32 in its binary data, got 28",)),
        (4 * DIM + 4, 4 * DIM, None, ("needs bytes 0..36 of the binary data, which holds 32",)),
        (4 * DIM, 4 * DIM + 4, None, ("holds 36 bytes of binary data but the inputs' binary_data_size add up to 32",)),
        (4 * DIM, 4 * DIM, "99999", ("Inference-Header-Content-Length 99999 is more than the body's",)),
        (4 * DIM, 4 * DIM, "ten", ("must be a byte count, got 'ten'",)),
    ],
)  # fmt: skip
def test_binary_size_mismatches_are_400(base, declared, sent, length, fragments):
    header = json.dumps(
        {"inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, DIM],
                     "parameters": {"binary_data_size": declared}}]}
    ).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": length or str(len(header))}
    body = header + b"\0" * sent
    refused(infer(base, "tiny-vae-decoder", body, headers=headers), 400, *fragments)


def test_the_same_bad_request_gets_the_grpc_v2_fronts_text(base, live_server):
    rest = refused(
        infer(base, "tiny-vae-decoder", {"inputs": [{**LATENT, "datatype": "INT64"}]}), 400
    )
    value = tc_grpc.InferInput("latent", [1, DIM], "INT64")
    value.set_data_from_numpy(np.zeros((1, DIM), np.int64))
    with (
        tc_grpc.InferenceServerClient(live_server.address) as client,
        pytest.raises(tc_grpc.InferenceServerException) as info,
    ):
        client.infer("tiny-vae-decoder", [value])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == rest


@pytest.mark.parametrize(
    ("method", "path", "status", "fragments"),
    [
        ("GET", "/v2/models/tiny-vae-painter", 404, ("unknown model 'tiny-vae-painter'; models are",)),
        ("GET", "/v2/models/tiny-vae-decoder/versions/9", 404, ("has no version 9; loaded versions are [1]",)),
        ("GET", "/v2/models/tiny-vae-decoder/versions/x1", 400, ("model_version must be empty",)),
        ("GET", "/v2/models/..%2F..%2Fetc%2Fpasswd-decoder", 404, ("unknown model '../../etc/passwd-decoder'",)),
        ("GET", "/v1/models/..%2F..%2Fetc/sample", 404, ("unknown model '../../etc'",)),
        ("GET", "/v1/models/nope/sample", 404, ("unknown model 'nope'; loaded models are",)),
        ("GET", "/v1/models/tiny-vae/sample?version=7", 404, ("has no version 7",)),
        ("GET", "/static/..%2F..%2Fapp.py", 404, ("no file '../../app.py'",)),
        ("GET", "/v3/everything", 404, ("no route '/v3/everything'; see /openapi.json",)),
        ("POST", "/v2/health/live", 405, ("/v2/health/live takes GET, not POST",)),
        ("GET", "/v2/models/tiny-vae-decoder/infer", 405, ("takes POST, not GET",)),
    ],
)  # fmt: skip
def test_unknown_models_versions_and_routes(base, method, path, status, fragments):
    refused(requests.request(method, base + path), status, *fragments)


@pytest.mark.parametrize(
    ("query", "status", "fragments"),
    [
        ("count=abc", 400, ("query parameter count must be an integer >= 1, got 'abc'",)),
        ("count=0", 400, ("count must be an integer >= 1",)),
        ("count=100000", 413, ("count 100000 is over this server's limit of 128",)),
        ("temperature=nan", 400, ("temperature must be a finite number",)),
        ("temperature=99", 400, ("temperature must be in (0, 10.0]",)),
        ("prior=gamma", 400, ("prior 'gamma' is not one of",)),
        ("seed=-1", 400, ("seed must be an integer in 0..",)),
        ("label=3", 400, ("is not conditional; send no labels",)),
    ],
)  # fmt: skip
def test_bad_sample_queries(base, query, status, fragments):
    refused(requests.get(f"{base}/v1/models/tiny-vae/sample?{query}"), status, *fragments)


@pytest.mark.parametrize(
    ("path", "body", "headers", "fragments"),
    [
        ("decode", b'{"latents": [[1, 2]]}', {}, ("latents: shape [1, 2] does not fit model 'tiny-vae'; expected [N, 8]",)),
        ("decode", b'{"latents": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}', {}, ("NaN or infinite",)),
        ("decode", b'{"latents": "z"}', {}, ("latents must be a non-empty list of numbers nested 2 deep",)),
        ("encode", b"GIF89a....", {"Content-Type": "image/png"}, ("not a PNG or JPEG image",)),
        ("encode", b'{"images": [[[[2.0]]]]}', {"Content-Type": "application/json"}, ("does not fit model",)),
    ],
)  # fmt: skip
def test_bad_encode_and_decode_bodies(base, path, body, headers, fragments):
    response = requests.post(f"{base}/v1/models/tiny-vae/{path}", data=body, headers=headers)
    refused(response, 400, *fragments)


@pytest.mark.parametrize(
    "query",
    ["steps=4", "start=1,2&end=3,4", "start_seed=1&end_seed=2&method=cubic", "start_seed=1&end_seed=2&steps=1"],
)  # fmt: skip
def test_bad_interpolations_are_400(base, query):
    refused(requests.get(f"{base}/v1/models/tiny-vae/interpolate?{query}"), 400)


def test_the_manifold_needs_a_two_dimensional_latent_space(base):
    response = requests.get(f"{base}/v1/models/tiny-vae/manifold")
    refused(response, 400, "has 8 latent dimensions; the manifold is drawn for models with 2")


def test_a_body_over_the_message_limit_is_413_before_it_is_read(base, live_server):
    limit = live_server.server.settings.limits.max_message_bytes
    response = infer(base, "tiny-vae-decoder", b" " * (limit + 1))
    refused(response, 413, f"is {limit + 1} bytes, over this server's limit of {limit}")


def test_a_chunked_body_over_the_limit_is_413(base, live_server):
    limit = live_server.server.settings.limits.max_message_bytes

    def chunks():
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    response = requests.post(f"{base}/v2/models/tiny-vae-decoder/infer", data=chunks())
    refused(response, 413, "over this server's limit")


def test_a_bad_timeout_header_is_400(base):
    response = requests.get(f"{base}/v2", headers={"X-Vae-Timeout-Ms": "soon"})
    refused(response, 400, "X-Vae-Timeout-Ms must be a positive number of milliseconds")


def test_refusals_are_counted_by_route_and_the_server_stays_up(base, live_server):
    labels = {"rpc": "http.ModelInfer", "model": "tiny-vae", "code": "INVALID_ARGUMENT"}
    before = metric(live_server.server, "vae_requests_total", **labels)
    refused(infer(base, "tiny-vae-decoder", {"inputs": []}), 400)
    assert metric(live_server.server, "vae_requests_total", **labels) == before + 1
    assert requests.get(f"{base}/v2/health/live").json() == {"live": True}
    ok = infer(base, "tiny-vae-decoder", {"inputs": [LATENT]})
    assert ok.status_code == 200
    assert ok.headers["X-Request-Id"]
    with grpc.insecure_channel(live_server.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
