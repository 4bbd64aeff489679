"""`vae-client` and the VaeClient class: call a running server, write PNG grids or .npy files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from PIL import Image

from server.codecs import grid_png, tensor_to_numpy, tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

METHODS = {
    "linear": vae_pb2.INTERPOLATION_METHOD_LINEAR,
    "spherical": vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
}


class VaeClient:
    """A thin typed wrapper over the generated stub; arrays in, arrays out."""

    def __init__(
        self,
        address: str,
        timeout: float = 30.0,
        max_message_bytes: int = 64 << 20,
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
    ):
        """Plaintext unless `tls_ca` (PEM roots) is set; `tls_cert`/`tls_key` add a client cert."""
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_ca:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _ref(model: str, version: int) -> vae_pb2.ModelRef:
        return vae_pb2.ModelRef(name=model, version=version)

    def info(self, model: str = "", version: int = 0) -> vae_pb2.ModelInfo:
        request = vae_pb2.GetModelInfoRequest(model=self._ref(model, version))
        return self.stub.GetModelInfo(request, timeout=self.timeout)

    def list_models(self) -> list[vae_pb2.ModelInfo]:
        response = self.stub.ListModels(vae_pb2.ListModelsRequest(), timeout=self.timeout)
        return list(response.models)

    def sample(
        self,
        count: int,
        seed: int | None = None,
        temperature: float = 1.0,
        label: int | None = None,
        model: str = "",
        version: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Draw `count` images from the prior: (images (N, C, H, W), latents (N, D), seed used)."""
        request = vae_pb2.SampleRequest(
            model=self._ref(model, version),
            count=count,
            temperature=temperature,
            seed=seed,
            label=label,
        )
        response = self.stub.Sample(request, timeout=self.timeout)
        return tensor_to_numpy(response.images), tensor_to_numpy(response.latents), response.seed

    def sample_stream(
        self,
        count: int,
        chunk_size: int = 0,
        seed: int | None = None,
        temperature: float = 1.0,
        label: int | None = None,
        model: str = "",
        version: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Stream `count` images in chunks: yields (images (n, C, H, W), latents (n, D), offset)."""
        request = vae_pb2.SampleStreamRequest(
            model=self._ref(model, version),
            count=count,
            chunk_size=chunk_size,
            temperature=temperature,
            seed=seed,
            label=label,
        )
        for chunk in self.stub.SampleStream(request, timeout=self.timeout):
            yield tensor_to_numpy(chunk.images), tensor_to_numpy(chunk.latents), chunk.offset

    def encode(
        self, images: np.ndarray, labels: list[int] | None = None, model: str = "", version: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, H, W) images -> posterior mean and log-variance (None for autoencoders)."""
        request = vae_pb2.EncodeRequest(
            model=self._ref(model, version), images=tensor_to_proto(images), labels=labels or []
        )
        response = self.stub.Encode(request, timeout=self.timeout)
        log_variance = (
            tensor_to_numpy(response.log_variance) if response.HasField("log_variance") else None
        )
        return tensor_to_numpy(response.mean), log_variance

    def decode(
        self,
        latents: np.ndarray,
        labels: list[int] | None = None,
        model: str = "",
        version: int = 0,
    ) -> np.ndarray:
        request = vae_pb2.DecodeRequest(
            model=self._ref(model, version), latents=tensor_to_proto(latents), labels=labels or []
        )
        return tensor_to_numpy(self.stub.Decode(request, timeout=self.timeout).images)

    def interpolate(
        self,
        start: np.ndarray,
        end: np.ndarray,
        steps: int = 10,
        method: str = "linear",
        endpoints: str = "latents",
        label: int | None = None,
        model: str = "",
        version: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images along the path between two latents or two images: (images, latents)."""
        request = vae_pb2.InterpolateRequest(
            model=self._ref(model, version), steps=steps, method=METHODS[method], label=label
        )
        pair = request.latents if endpoints == "latents" else request.images
        pair.start.CopyFrom(tensor_to_proto(start))
        pair.end.CopyFrom(tensor_to_proto(end))
        response = self.stub.Interpolate(request, timeout=self.timeout)
        return tensor_to_numpy(response.images), tensor_to_numpy(response.latents)


# --- command line ---------------------------------------------------------------------------------


def _load_images(paths: list[Path], image_shape: tuple[int, ...]) -> np.ndarray:
    """Read .npy arrays (N, C, H, W) or image files, resized to the model's (C, H, W), as [0, 1]."""
    channels, height, width = image_shape
    batches = []
    for path in paths:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False).astype(np.float32)
            batches.append(array[None] if array.ndim == 3 else array)
            continue
        image = Image.open(path).convert("L" if channels == 1 else "RGB").resize((width, height))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        batches.append(pixels[None])
    return np.concatenate(batches)


def _write_images(
    images: np.ndarray, output: Path, out_format: str, columns: int, scale: int = 1
) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if out_format == "npy":
        np.save(output, images)
    else:
        if scale > 1:  # nearest-neighbour upscaling keeps the model's pixels visible as they are
            images = images.repeat(scale, axis=2).repeat(scale, axis=3)
        output.write_bytes(grid_png(images, columns or len(images)))
    print(f"wrote {len(images)} images to {output}")


def _endpoint(
    client: VaeClient, path: Path, image_shape: tuple[int, ...]
) -> tuple[np.ndarray, str]:
    """An interpolation end: a .npy latent vector, or an image file / .npy image."""
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False).astype(np.float32)
        if array.ndim <= 2 and array.size == array.shape[-1]:
            return array.reshape(-1), "latents"
    return _load_images([path], image_shape)[0], "images"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-client", description=__doc__)
    parser.add_argument(
        "--address",
        default=os.environ.get("VAE_ADDRESS", "localhost:50051"),
        help="server address host:port [VAE_ADDRESS]",
    )
    parser.add_argument("--model", default=os.environ.get("VAE_MODEL", ""), help="model name")
    parser.add_argument("--version", type=int, default=0, help="model version (0: latest)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    for flag, env, help_text in (
        ("--tls-ca", "VAE_TLS_CA", "PEM CA that signed the server's certificate: connect with TLS"),
        ("--tls-cert", "VAE_TLS_CLIENT_CERT", "PEM client certificate, for servers requiring mTLS"),
        ("--tls-key", "VAE_TLS_CLIENT_KEY", "PEM private key of --tls-cert"),
    ):
        parser.add_argument(flag, default=os.environ.get(env, ""), help=f"{help_text} [{env}]")
    commands = parser.add_subparsers(dest="command", required=True)

    def output_options(p: argparse.ArgumentParser, default: str, columns: int = 8) -> None:
        p.add_argument("--output", "-o", type=Path, default=Path(default))
        p.add_argument("--format", choices=("png", "npy"), default="png", dest="out_format")
        p.add_argument(
            "--columns",
            type=int,
            default=columns,
            help="PNG grid width in images (0: all in a row)",
        )
        p.add_argument("--scale", type=int, default=1, help="enlarge PNG pixels this many times")

    sample = commands.add_parser("sample", help="draw images from the prior")
    sample.add_argument("--count", type=int, default=64)
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--label", type=int, default=None, help="class, for conditional models")
    output_options(sample, "samples.png")

    encode = commands.add_parser("encode", help="images (.png/.jpg or .npy) to latent means (.npy)")
    encode.add_argument("inputs", type=Path, nargs="+")
    encode.add_argument("--labels", type=int, nargs="*", default=None)
    encode.add_argument("--output", "-o", type=Path, default=Path("latents.npy"))

    decode = commands.add_parser("decode", help="latents (.npy, (N, D)) to images")
    decode.add_argument("input", type=Path)
    decode.add_argument("--labels", type=int, nargs="*", default=None)
    output_options(decode, "decoded.png")

    interpolate = commands.add_parser("interpolate", help="images along a latent path")
    interpolate.add_argument("--start", type=Path, help="image file, .npy image or .npy latent")
    interpolate.add_argument("--end", type=Path)
    interpolate.add_argument("--seed", type=int, default=0, help="prior draws when no ends given")
    interpolate.add_argument("--steps", type=int, default=10)
    interpolate.add_argument("--method", choices=tuple(METHODS), default="linear")
    interpolate.add_argument("--label", type=int, default=None)
    output_options(interpolate, "interpolation.png", columns=0)

    commands.add_parser("info", help="describe the model (or list every model without --model)")
    return parser


def run(args: argparse.Namespace) -> int:
    with VaeClient(
        args.address,
        timeout=args.timeout,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    ) as client:
        if args.command == "info":
            infos = [client.info(args.model, args.version)] if args.model else client.list_models()
            as_dicts = [
                json_format.MessageToDict(i, preserving_proto_field_name=True) for i in infos
            ]
            print(json.dumps(as_dicts[0] if args.model else as_dicts, indent=2))
            return 0
        ref = {"model": args.model, "version": args.version}
        if args.command == "sample":
            images, _, seed = client.sample(
                args.count, args.seed, args.temperature, args.label, **ref
            )
            print(f"seed {seed}")
            _write_images(images, args.output, args.out_format, args.columns, args.scale)
            return 0
        info = client.info(**ref)
        image_shape = tuple(info.image_shape)
        if args.command == "encode":
            mean, _ = client.encode(_load_images(args.inputs, image_shape), args.labels, **ref)
            np.save(args.output, mean)
            print(f"wrote latents {list(mean.shape)} to {args.output}")
        elif args.command == "decode":
            latents = np.load(args.input, allow_pickle=False).astype(np.float32)
            images = client.decode(latents, args.labels, **ref)
            _write_images(images, args.output, args.out_format, args.columns, args.scale)
        elif args.command == "interpolate":
            if (args.start is None) != (args.end is None):
                raise SystemExit("vae-client interpolate: give both --start and --end, or neither")
            if args.start is None:
                rng = np.random.default_rng(args.seed)
                ends = rng.standard_normal((2, info.latent_dim)).astype(np.float32)
                start, end, kind = ends[0], ends[1], "latents"
            else:
                start, kind = _endpoint(client, args.start, image_shape)
                end, kind_end = _endpoint(client, args.end, image_shape)
                if kind != kind_end:
                    raise SystemExit(
                        "vae-client interpolate: --start and --end must be the same kind"
                    )
            images, _ = client.interpolate(
                start, end, args.steps, args.method, kind, args.label, **ref
            )
            _write_images(images, args.output, args.out_format, args.columns, args.scale)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as exc:
        print(f"vae-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
