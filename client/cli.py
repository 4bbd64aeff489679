"""`vae-client`: call a running server from the command line, write PNG grids or .npy files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from PIL import Image

from client.api import IMAGE_FORMATS, METHODS, PRIORS, VaeClient
from server import options as opt
from server.codecs import grid_png
from server.options import StrictParser


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
        np.save(output, images)  # as received: float32 in [0, 1], or uint8 with --wire uint8
    else:
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
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


def build_parser() -> StrictParser:
    parser = StrictParser(
        prog="vae-client",
        description=__doc__ + " Options in brackets also read that VAE_* variable.",
    )
    parser.option(
        "--address",
        opt.nonempty,
        "localhost:50051",
        "server address host:port",
        env="VAE_ADDRESS",
    )
    parser.option(
        "--model", opt.text, "", "model name (empty: the only one loaded)", env="VAE_MODEL"
    )
    parser.option("--version", opt.integer(0), 0, "model version (0: latest)")
    parser.option("--timeout", opt.number(above=0), 30.0, "deadline per call, seconds")
    for flag, env, help_text in (
        ("--tls-ca", "VAE_TLS_CA", "PEM CA that signed the server's certificate: connect with TLS"),
        ("--tls-cert", "VAE_TLS_CLIENT_CERT", "PEM client certificate, for servers requiring mTLS"),
        ("--tls-key", "VAE_TLS_CLIENT_KEY", "PEM private key of --tls-cert"),
    ):
        parser.option(flag, opt.text, "", help_text, env=env)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def output_options(p: StrictParser, default: str, columns: int = 8) -> None:
        p.option("--output", opt.path, Path(default), "file to write", aliases=("-o",))
        p.option("--format", opt.choice("png", "npy"), "png", "png grid or npy", dest="out_format")
        p.option("--columns", opt.integer(0), columns, "PNG grid width in images (0: all in a row)")
        p.option("--scale", opt.integer(1, 64), 1, "enlarge PNG pixels this many times")
        p.option(
            "--wire",
            opt.choice(*IMAGE_FORMATS),
            "float32",
            "how images travel from the server: float32, or uint8 (a quarter of the bytes; "
            "--format npy then writes uint8 0..255)",
        )

    seed = opt.optional(opt.integer(0, 2**64 - 1))
    label = opt.optional(opt.integer(0))
    sample = commands.add_parser("sample", help="draw images from the prior")
    sample.option("--count", opt.integer(1), 64, "images to draw")
    sample.option("--seed", seed, None, "same seed, same images (none: a fresh seed)")
    sample.option("--temperature", opt.number(0), 1.0, "scale of the prior's std (0 means 1)")
    sample.option("--label", label, None, "class, for conditional models")
    sample.option(
        "--prior",
        opt.choice(*PRIORS),
        "standard-normal",
        "N(0, I), or a learned prior where the model has one: the Gaussian mixture fitted to "
        "the training codes, or the two-stage prior (`info` lists its priors and the "
        "recommended one)",
        env="VAE_PRIOR",
    )
    output_options(sample, "samples.png")

    encode = commands.add_parser("encode", help="images (.png/.jpg or .npy) to latent means (.npy)")
    encode.add_argument("inputs", type=Path, nargs="+")
    encode.add_argument("--labels", type=int, nargs="*", default=None)
    encode.option("--output", opt.path, Path("latents.npy"), "file to write", aliases=("-o",))

    decode = commands.add_parser("decode", help="latents (.npy, (N, D)) to images")
    decode.add_argument("input", type=Path)
    decode.add_argument("--labels", type=int, nargs="*", default=None)
    output_options(decode, "decoded.png")

    interpolate = commands.add_parser("interpolate", help="images along a latent path")
    interpolate.option(
        "--start", opt.optional(opt.path), None, "image file, .npy image or .npy latent"
    )
    interpolate.option("--end", opt.optional(opt.path), None, "the other end, of the same kind")
    interpolate.option("--seed", opt.integer(0), 0, "prior draws when no ends are given")
    interpolate.option("--steps", opt.integer(2), 10, "points on the path, both ends included")
    interpolate.option("--method", opt.choice(*METHODS), "linear", "linear or spherical")
    interpolate.option("--label", label, None, "class, for conditional models")
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
                args.count,
                args.seed,
                args.temperature,
                args.label,
                **ref,
                image_format=args.wire,
                prior=args.prior,
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
            images = client.decode(latents, args.labels, **ref, image_format=args.wire)
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
                start, end, args.steps, args.method, kind, args.label, **ref, image_format=args.wire
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
