"""`vae-client`: call a running server from the command line, write PNG grids or .npy files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from PIL import Image

from client.api import METHODS, PRIORS, VaeClient
from server.codecs import grid_png


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
    sample.add_argument(
        "--prior",
        choices=tuple(PRIORS),
        default=os.environ.get("VAE_PRIOR", "standard-normal"),
        help="N(0, I), or the Gaussian mixture fitted to the training codes, where the model has "
        "one (`info` lists its priors) [VAE_PRIOR]",
    )
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
                args.count, args.seed, args.temperature, args.label, prior=args.prior, **ref
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
