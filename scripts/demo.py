"""The demo: get Fashion-MNIST, train the MLP VAE, export it, serve it, call it, write PNGs, stop.

Run with `make demo` (which installs everything first). Settings come from the environment:
VAE_DATA_DIR (where the IDX files are), DEMO_EPOCHS (default 3), DEMO_PORT / DEMO_METRICS_PORT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_DIR = ROOT / "runs" / "fashion-mlp-vae"
REPOSITORY = ROOT / "model_repository"
OUTPUT = ROOT / "demo_output"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*args: str) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_data() -> None:
    """Use VAE_DATA_DIR, else the Debian package's folder (installing it if apt can), else download."""
    if os.environ.get("VAE_DATA_DIR"):
        print(f"data: VAE_DATA_DIR={os.environ['VAE_DATA_DIR']}")
        return
    if (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists():
        print(f"data: {DEBIAN_DIR}")
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("data: installing the Debian package dataset-fashion-mnist")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False
        )
        if result.returncode == 0:
            return
    print("data: not on disk; vae-train will download it with torchvision")


def wait_healthy(address: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"vae-serve exited with {server.returncode} before becoming ready")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"vae-serve did not report SERVING within {timeout:.0f}s")


def two_test_images() -> tuple[Path, Path]:
    """A sneaker and a bag from the Fashion-MNIST test set, saved as .npy for the client."""
    from training.data import load_idx_split

    data_dir = Path(os.environ["VAE_DATA_DIR"]) if os.environ.get("VAE_DATA_DIR") else None
    test = load_idx_split("fashion-mnist", "test", data_dir)
    paths = []
    for label, name in ((7, "sneaker"), (8, "bag")):
        index = int((test.labels == label).nonzero()[0])
        path = OUTPUT / f"{name}.npy"
        np.save(path, test.images[index].numpy())
        paths.append(path)
    return paths[0], paths[1]


def measure_latency(address: str, calls: int = 200) -> dict[str, float]:
    from client.api import VaeClient

    timings = []
    with VaeClient(address) as client:
        for i in range(calls):
            started = time.perf_counter()
            client.sample(1, seed=i)
            timings.append(time.perf_counter() - started)
    ms = np.array(timings) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> int:
    started = time.perf_counter()
    epochs = os.environ.get("DEMO_EPOCHS", "3")
    OUTPUT.mkdir(exist_ok=True)
    step("data")
    ensure_data()

    step(f"train the MLP VAE (784-400-20) for {epochs} epochs")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    run(
        str(BIN / "vae-train"),
        "--dataset",
        "fashion-mnist",
        "--epochs",
        epochs,
        "--run-dir",
        str(RUN_DIR),
        # The demo samples N(0, I) and the mixture; the two-stage prior would add minutes of
        # training (`vae-train prior <run> --kind two-stage` adds it later).
        "--prior-two-stage",
        "false",
    )

    step("export encoder and decoder to ONNX")
    run(str(BIN / "vae-export"), str(RUN_DIR / "best.pt"), "--repository", str(REPOSITORY))

    step("serve")
    port = int(os.environ.get("DEMO_PORT") or free_port())
    metrics_port = int(os.environ.get("DEMO_METRICS_PORT") or free_port())
    http_port = int(os.environ.get("DEMO_HTTP_PORT") or free_port())
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(BIN / "vae-serve"),
            "--repository",
            str(REPOSITORY),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--http-port",
            str(http_port),
        ],
        cwd=ROOT,
    )
    try:
        wait_healthy(address, server)
        step("call the server through vae-client")
        client = [str(BIN / "vae-client"), "--address", address, "--model", RUN_DIR.name]
        run(
            *client,
            "sample",
            "--count",
            "64",
            "--seed",
            "7",
            "--output",
            str(OUTPUT / "samples.png"),
        )
        start, end = two_test_images()
        run(
            *client,
            "interpolate",
            "--start",
            str(start),
            "--end",
            str(end),
            "--steps",
            "10",
            "--method",
            "spherical",
            "--output",
            str(OUTPUT / "interpolation.png"),
        )
        step("the same model over HTTP: a PNG grid from GET /v1/models/<name>/sample")
        url = f"http://127.0.0.1:{http_port}/v1/models/{RUN_DIR.name}/sample?count=16&seed=7"
        with urllib.request.urlopen(url, timeout=30) as reply:
            (OUTPUT / "http_samples.png").write_bytes(reply.read())
        print(
            f"wrote {OUTPUT / 'http_samples.png'}; the explorer was at http://127.0.0.1:{http_port}/"
        )
        latency = measure_latency(address)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            scraped = reply.read().decode()
        ok_samples = sum(
            float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("vae_samples_generated_total")
        )
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    if code != 0:
        raise SystemExit(f"vae-serve exited with {code} after SIGTERM")

    versions = sorted(
        int(p.name) for p in (REPOSITORY / RUN_DIR.name).iterdir() if p.name.isdigit()
    )
    meta = json.loads((REPOSITORY / RUN_DIR.name / str(versions[-1]) / "model.json").read_text())
    step("summary")
    print(
        f"model            {meta['name']} version {meta['version']} ({meta['kind']}, "
        f"latent {meta['latent_dim']}, {meta['dataset']})"
    )
    print(
        f"test ELBO        {meta['metrics']['test_elbo']:.2f} nats/image "
        f"(reconstruction {meta['metrics']['test_reconstruction']:.2f}, "
        f"KL {meta['metrics']['test_kl']:.2f})"
    )
    print(
        f"ONNX parity      max |diff| encoder {meta['parity']['encoder_max_abs_diff']:.1e}, "
        f"decoder {meta['parity']['decoder_max_abs_diff']:.1e}"
    )
    print(
        f"Sample(1) RPC    p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms "
        f"over 200 calls; {ok_samples:.0f} samples counted by /metrics"
    )
    print(f"samples          {OUTPUT / 'samples.png'}")
    print(f"interpolation    {OUTPUT / 'interpolation.png'}")
    print(
        f"server           stopped cleanly on SIGTERM; demo took {time.perf_counter() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
