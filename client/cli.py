"""`vae-client`: call a running server from the command line, write PNG grids or .npy files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from PIL import Image, UnidentifiedImageError

from client.api import (
    DEFAULT_PORT,
    IMAGE_FORMATS,
    METHODS,
    PRIORS,
    TlsFileError,
    VaeClient,
    with_default_port,
)
from client.errors import Connection, explain
from server import options as opt
from server.codecs import grid_png
from server.options import StrictParser
from server.preprocessing import Preprocessing, prepare_image
from server.proto_gen.vae.v1 import vae_pb2


class InputError(ValueError):
    """An input file vae-client cannot use; the message names it and says why."""


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # a directory, a pickle, a truncated or foreign file
        raise InputError(f"{path}: not a .npy array file ({exc})") from None


def _read_image(path: Path, preprocessing: Preprocessing, image_shape: tuple[int, ...]):
    """An image file as the model's input (C, H, W), prepared as training prepared its images."""
    try:
        with Image.open(path) as image:
            return prepare_image(image, preprocessing, image_shape)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a directory, not an image file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file Pillow can read (PNG, JPEG, ...)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None


def _load_images(paths: list[Path], info: vae_pb2.ModelInfo) -> np.ndarray:
    """Read .npy arrays (N, C, H, W) or image files as the model's input (N, C, H, W) in [0, 1];
    image files go through the preprocessing the model was trained with (GetModelInfo)."""
    image_shape = tuple(info.image_shape)
    preprocessing = preprocessing_of(info)
    batches = []
    for path in paths:
        if path.suffix == ".npy":
            array = _read_npy(path).astype(np.float32)
            batches.append(array[None] if array.ndim == 3 else array)
            continue
        batches.append(_read_image(path, preprocessing, image_shape)[None])
    return np.concatenate(batches)


def preprocessing_of(info: vae_pb2.ModelInfo) -> Preprocessing:
    """The model's preprocessing; a server or model.json from before it existed: resize only."""
    if not info.HasField("preprocessing"):
        return Preprocessing()
    return Preprocessing.from_dict(
        {"center_crop": info.preprocessing.center_crop, "resample": info.preprocessing.resample}
    )


def plain(message: Message) -> dict[str, Any]:
    """A message as JSON-ready values, every field shown; numbers stay numbers (json_format writes
    64-bit integers as strings, for JavaScript's sake)."""
    as_dict = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for field in message.DESCRIPTOR.fields:
        if field.name not in as_dict:
            continue
        value, held = as_dict[field.name], getattr(message, field.name)
        if isinstance(held, Message):  # a message field: its own integers too
            as_dict[field.name] = plain(held)
        elif field.cpp_type in _INTEGER_TYPES:
            as_dict[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return as_dict


_INTEGER_TYPES = {
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT64,
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_UINT32,
}


def _labels(given: tuple[int, ...] | None, rows: int) -> list[int] | None:
    """--label: one class for every row, or one per row."""
    if given is None:
        return None
    if len(given) == 1:
        return list(given) * rows
    if len(given) != rows:
        raise InputError(f"--label: {len(given)} labels for {rows} rows; give one, or one per row")
    return list(given)


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


def _endpoint(path: Path, info: vae_pb2.ModelInfo) -> tuple[np.ndarray, str]:
    """An interpolation end: a .npy latent vector, or an image file / .npy image."""
    if path.suffix == ".npy":
        array = _read_npy(path).astype(np.float32)
        if array.ndim <= 2 and array.size == array.shape[-1]:
            return array.reshape(-1), "latents"
    return _load_images([path], info)[0], "images"


def build_parser() -> StrictParser:
    parser = StrictParser(
        prog="vae-client",
        description=__doc__ + " Options in brackets also read that VAE_* variable.",
    )
    parser.option(
        "--address",
        opt.nonempty,
        "localhost:50051",
        f"server address host:port; without a port, vae-serve's {DEFAULT_PORT}",
        env="VAE_ADDRESS",
    )
    parser.option(
        "--model", opt.text, "", "model name (empty: the only one loaded)", env="VAE_MODEL"
    )
    parser.option("--version", opt.integer(0), 0, "model version (0: latest)")
    parser.option("--timeout", opt.number(above=0), 30.0, "deadline per call, seconds")
    parser.option(
        "--connections",
        opt.integer(1),
        1,
        "TCP connections the client's calls take in turn (a connection reaches one server process)",
        env="VAE_CONNECTIONS",
    )
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
    label_help = "class to draw, for conditional (cvae) models; `info` shows num_classes"
    labels = opt.optional(opt.integers(0))
    labels_help = (
        "class of each row, for conditional (cvae) models: one for every row, or one per row in "
        "order; `info` shows num_classes"
    )
    sample = commands.add_parser("sample", help="draw images from the prior")
    sample.option("--count", opt.integer(1), 64, "images to draw")
    sample.option("--seed", seed, None, "same seed, same images (none: a fresh seed)")
    sample.option("--temperature", opt.number(0), 1.0, "scale of the prior's std (0 means 1)")
    sample.option("--label", label, None, label_help, env="VAE_LABEL")
    sample.option(
        "--prior",
        opt.choice(*PRIORS),
        "standard-normal",
        "N(0, I), or the Gaussian mixture fitted to the training codes, where the model has one "
        "(`info` lists its priors)",
        env="VAE_PRIOR",
    )
    output_options(sample, "samples.png")

    encode = commands.add_parser("encode", help="images (.png/.jpg or .npy) to latent means (.npy)")
    encode.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        help="image files (prepared as the model's training images were: `info` shows how) or "
        ".npy arrays (N, C, H, W) in [0, 1]",
    )
    encode.option(
        "--label", labels, None, labels_help, env="VAE_LABEL", nargs="+", aliases=("--labels",)
    )
    encode.option("--output", opt.path, Path("latents.npy"), "file to write", aliases=("-o",))

    decode = commands.add_parser("decode", help="latents (.npy, (N, D)) to images")
    decode.add_argument("input", type=Path, help=".npy array of latents (N, D)")
    decode.option(
        "--label", labels, None, labels_help, env="VAE_LABEL", nargs="+", aliases=("--labels",)
    )
    output_options(decode, "decoded.png")

    interpolate = commands.add_parser("interpolate", help="images along a latent path")
    interpolate.option(
        "--start", opt.optional(opt.path), None, "image file, .npy image or .npy latent"
    )
    interpolate.option("--end", opt.optional(opt.path), None, "the other end, of the same kind")
    interpolate.option("--seed", opt.integer(0), 0, "prior draws when no ends are given")
    interpolate.option("--steps", opt.integer(2), 10, "points on the path, both ends included")
    interpolate.option("--method", opt.choice(*METHODS), "linear", "linear or spherical")
    interpolate.option("--label", label, None, label_help, env="VAE_LABEL")
    output_options(interpolate, "interpolation.png", columns=0)

    commands.add_parser("info", help="describe the model (or list every model without --model)")
    return parser


def _input_files(args: argparse.Namespace) -> list[Path]:
    if args.command == "encode":
        return list(args.inputs)
    if args.command == "decode":
        return [args.input]
    return [p for p in (getattr(args, "start", None), getattr(args, "end", None)) if p is not None]


def run(args: argparse.Namespace, client: VaeClient) -> int:
    if args.command == "info":
        infos = [client.info(args.model, args.version)] if args.model else client.list_models()
        as_dicts = [plain(i) for i in infos]
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
    for path in _input_files(args):  # a missing file is named before the server is asked anything
        if not path.is_file():
            raise InputError(f"{path}: " + ("a directory" if path.is_dir() else "no such file"))
    info = client.info(**ref)
    if args.command == "encode":
        images = _load_images(args.inputs, info)
        mean, _ = client.encode(images, _labels(args.label, len(images)), **ref)
        np.save(args.output, mean)
        print(f"wrote latents {list(mean.shape)} to {args.output}")
    elif args.command == "decode":
        latents = _read_npy(args.input).astype(np.float32)
        labels = _labels(args.label, len(latents))
        images = client.decode(latents, labels, **ref, image_format=args.wire)
        _write_images(images, args.output, args.out_format, args.columns, args.scale)
    elif args.command == "interpolate":
        if (args.start is None) != (args.end is None):
            raise InputError("give both --start and --end, or neither")
        if args.start is None:
            rng = np.random.default_rng(args.seed)
            ends = rng.standard_normal((2, info.latent_dim)).astype(np.float32)
            start, end, kind = ends[0], ends[1], "latents"
        else:
            start, kind = _endpoint(args.start, info)
            end, kind_end = _endpoint(args.end, info)
            if kind != kind_end:
                raise InputError("--start and --end must be the same kind (images or latents)")
        images, _ = client.interpolate(
            start, end, args.steps, args.method, kind, args.label, **ref, image_format=args.wire
        )
        _write_images(images, args.output, args.out_format, args.columns, args.scale)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    where = f"vae-client {args.command}"
    connection = Connection(
        with_default_port(args.address), args.tls_ca, args.tls_cert, args.timeout
    )
    try:
        client = VaeClient(
            args.address,
            timeout=args.timeout,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            connections=args.connections,
        )
    except TlsFileError as exc:
        print(f"vae-client: {exc}", file=sys.stderr)
        return 2
    try:
        with client:
            return run(args, client)
    except InputError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"{where}: {explain(exc, connection)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
