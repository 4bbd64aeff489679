"""Bounded soak: mixed valid and invalid calls against a loopback server, watching errors and RSS.

Usage: python benchmarks/soak.py --repository <repo> --model tiny-vae [--duration 60] [--threads 8]
Every call kind has one expected status code; anything else counts as unexpected. At the end the
server must report no call in flight, and its resident memory must be flat after warm-up.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.codecs import tensor_to_proto  # noqa: E402
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import process_tree  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (vae-serve runs one serving process
    per core under a supervisor)."""
    total = 0.0
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024.0
    return total


def scrape_value(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))  # noqa: E741


def calls(model: str, latent_dim: int):
    """(kind, expected code, stub method name, request) for each kind of call in the mix."""
    ref = vae_pb2.ModelRef(name=model)
    z = tensor_to_proto(np.zeros((4, latent_dim), dtype=np.float32))
    bad_z = tensor_to_proto(np.zeros((4, latent_dim + 1), dtype=np.float32))
    return [
        ("sample", "OK", "Sample", lambda: vae_pb2.SampleRequest(model=ref, count=random.randint(1, 16))),
        ("sample_png", "OK", "Sample", lambda: vae_pb2.SampleRequest(model=ref, count=2, format=2)),
        ("decode", "OK", "Decode", lambda: vae_pb2.DecodeRequest(model=ref, latents=z)),
        ("info", "OK", "GetModelInfo", lambda: vae_pb2.GetModelInfoRequest(model=ref)),
        ("zero_count", "INVALID_ARGUMENT", "Sample", lambda: vae_pb2.SampleRequest(model=ref, count=0)),
        ("over_limit", "RESOURCE_EXHAUSTED", "Sample", lambda: vae_pb2.SampleRequest(model=ref, count=10**6)),
        ("unknown_model", "NOT_FOUND", "Sample", lambda: vae_pb2.SampleRequest(model=vae_pb2.ModelRef(name="nope"), count=1)),
        ("bad_shape", "INVALID_ARGUMENT", "Decode", lambda: vae_pb2.DecodeRequest(model=ref, latents=bad_z)),
        ("nan_temperature", "INVALID_ARGUMENT", "Sample", lambda: vae_pb2.SampleRequest(model=ref, count=1, temperature=float("nan"))),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", default="tiny-vae")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--metrics-port", type=int, default=19391)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    command = [sys.executable, "-m", "server.process.cli", f"--repository={args.repository}",
               "--host=127.0.0.1", "--port=0", "--http-port=0", "--metrics-host=127.0.0.1",
               f"--metrics-port={args.metrics_port}", "--providers=CPUExecutionProvider",
               "--reload-interval-seconds=0", "--log-level=WARNING", "--max-samples=64"]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    line = server.stdout.readline() if server.stdout else ""
    port = int(line.rsplit(":", 1)[1])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = vae_pb2_grpc.VaeServiceStub(channel)
    info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=vae_pb2.ModelRef(name=args.model)))
    mix = calls(args.model, info.latent_dim)
    outcomes: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    cancelled = Counter[str]()
    lock = threading.Lock()
    stop_at = time.monotonic() + args.duration

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            kind, expected, method, make = rng.choice(mix)
            if rng.random() < 0.05:  # a caller that gives up: cancelled mid-call
                future = getattr(stub, method).future(make(), timeout=10)
                future.cancel()
                with lock:
                    cancelled[kind] += 1
                continue
            try:
                getattr(stub, method)(make(), timeout=10)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                outcomes[f"{kind}:{code}"] += 1
                if code != expected:
                    unexpected[f"{kind}:{code}"] += 1

    rss: list[tuple[float, float]] = []
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.threads)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((round(time.monotonic() - start, 1), round(rss_mb(server.pid), 1)))
        time.sleep(5)
    for t in threads:
        t.join()
    in_flight = scrape_value(args.metrics_port, "vae_in_flight_requests ")
    queued = scrape_value(args.metrics_port, "vae_queue_rows{")
    rss.append((round(time.monotonic() - start, 1), round(rss_mb(server.pid), 1)))
    channel.close()
    server.send_signal(signal.SIGTERM)
    exit_code = server.wait(60)
    after_warmup = [m for t, m in rss if t >= 10]
    growth = (after_warmup[-1] - after_warmup[0]) if len(after_warmup) > 1 else 0.0
    result = {
        "duration_s": args.duration,
        "threads": args.threads,
        "calls": sum(outcomes.values()),
        "cancelled_by_client": sum(cancelled.values()),
        "outcomes": dict(sorted(outcomes.items())),
        "unexpected": dict(unexpected),
        "in_flight_at_end": in_flight,
        "queued_rows_at_end": queued,
        "rss_mb": rss,
        "rss_growth_after_10s_mb": round(growth, 1),
        "server_exit_code": exit_code,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = not unexpected and in_flight == 0 and queued == 0 and exit_code == 0 and growth < 20
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
