"""The model repository format: `<repo>/<name>/<version>/{encoder.onnx,decoder.onnx,model.json}`.

This module is the single definition of that layout. `export` writes it, `server` reads it; it imports
neither torch nor grpc.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_FILE = "model.json"
FORMAT_VERSION = 1

MODEL_KINDS = ("vae", "cvae", "ae")
LIKELIHOODS = ("bernoulli", "gaussian")
# Arithmetic inside the graphs; inputs and outputs are float32 either way, so the server feeds both alike.
PRECISIONS = ("fp32", "fp16")

# Names become directory names and metric labels: letters, digits, '.', '_' and '-', not starting with
# a dot, so no name can be '..', hidden, or contain a path separator.
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RepositoryError(ValueError):
    """A model repository entry is missing, malformed or unsafe."""


def validate_model_name(name: str) -> str:
    """Return `name` if it is a safe model name, else raise RepositoryError saying what is allowed."""
    if not _MODEL_NAME_RE.fullmatch(name) or ".." in name:
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, with no '..' and no path separators"
        )
    return name


@dataclass(frozen=True)
class TensorNames:
    """Input and output names of the two ONNX graphs."""

    encoder_inputs: tuple[str, ...] = ("image",)
    encoder_outputs: tuple[str, ...] = ("mean", "log_variance")
    decoder_inputs: tuple[str, ...] = ("latent",)
    decoder_outputs: tuple[str, ...] = ("image",)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a server or client needs to know about one exported model version (model.json)."""

    name: str
    version: int
    kind: str  # vae, cvae or ae
    latent_dim: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    likelihood: str  # bernoulli or gaussian
    num_classes: int = 0  # > 0 only for conditional models
    opset: int = 17
    dataset: str = ""
    tensors: TensorNames = field(default_factory=TensorNames)
    metrics: dict[str, float] = field(default_factory=dict)  # training figures, e.g. test_elbo
    parity: dict[str, float] = field(default_factory=dict)  # ONNX vs PyTorch differences
    parity_inputs: str = ""  # what the parity check fed the encoder, e.g. "mnist test set"
    precision: str = "fp32"  # fp32, or fp16 inside the graphs with float32 inputs and outputs
    checkpoint_sha256: str = ""
    exported_at: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["image_shape"] = list(self.image_shape)
        data["tensors"] = {k: list(v) for k, v in data["tensors"].items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model.json") -> ModelMetadata:
        try:
            tensors = TensorNames(**{k: tuple(v) for k, v in data.get("tensors", {}).items()})
            meta = cls(
                name=str(data["name"]),
                version=int(data["version"]),
                kind=str(data["kind"]),
                latent_dim=int(data["latent_dim"]),
                image_shape=tuple(int(x) for x in data["image_shape"]),  # type: ignore[arg-type]
                likelihood=str(data["likelihood"]),
                num_classes=int(data.get("num_classes", 0)),
                opset=int(data.get("opset", 17)),
                dataset=str(data.get("dataset", "")),
                tensors=tensors,
                metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
                parity={k: float(v) for k, v in data.get("parity", {}).items()},
                parity_inputs=str(data.get("parity_inputs", "")),
                precision=str(data.get("precision", "fp32")),
                checkpoint_sha256=str(data.get("checkpoint_sha256", "")),
                exported_at=str(data.get("exported_at", "")),
                model_config=dict(data.get("model_config", {})),
                format_version=int(data.get("format_version", FORMAT_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"{where}: missing or malformed field ({exc!r})") from exc
        meta.validate(where)
        return meta

    def validate(self, where: str = "model.json") -> None:
        problems = []
        if self.kind not in MODEL_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {MODEL_KINDS}")
        if self.likelihood not in LIKELIHOODS:
            problems.append(f"likelihood {self.likelihood!r} is not one of {LIKELIHOODS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.latent_dim <= 0:
            problems.append(f"latent_dim must be positive, got {self.latent_dim}")
        if len(self.image_shape) != 3 or any(d <= 0 for d in self.image_shape):
            problems.append(
                f"image_shape must be three positive sizes (C, H, W), got {self.image_shape}"
            )
        if self.version <= 0:
            problems.append(f"version must be a positive integer, got {self.version}")
        if (self.kind == "cvae") != (self.num_classes > 0):
            problems.append("num_classes must be positive for kind 'cvae' and 0 otherwise")
        if self.format_version > FORMAT_VERSION:
            problems.append(
                f"format_version {self.format_version} is newer than this server reads "
                f"({FORMAT_VERSION}); upgrade the server"
            )
        if problems:
            raise RepositoryError(f"{where}: " + "; ".join(problems))


@dataclass(frozen=True)
class VersionPaths:
    """The files of one model version on disk."""

    directory: Path

    @property
    def encoder(self) -> Path:
        return self.directory / ENCODER_FILE

    @property
    def decoder(self) -> Path:
        return self.directory / DECODER_FILE

    @property
    def metadata(self) -> Path:
        return self.directory / METADATA_FILE


def read_metadata(version_dir: Path) -> ModelMetadata:
    """Read and validate `model.json` of one version directory, checking it matches its location."""
    paths = VersionPaths(version_dir)
    for required in (paths.encoder, paths.decoder, paths.metadata):
        if not required.is_file():
            raise RepositoryError(f"{version_dir}: missing {required.name}")
    try:
        data = json.loads(paths.metadata.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{paths.metadata}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"{paths.metadata}: expected a JSON object")
    meta = ModelMetadata.from_dict(data, where=str(paths.metadata))
    if meta.name != version_dir.parent.name or str(meta.version) != version_dir.name:
        raise RepositoryError(
            f"{paths.metadata}: says {meta.name}/{meta.version} but lives in "
            f"{version_dir.parent.name}/{version_dir.name}"
        )
    return meta


def list_versions(model_dir: Path) -> list[int]:
    """Positive integer version directories of a model, ascending; temporary and other names skipped."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
    )


def list_models(repository: Path) -> list[str]:
    """Model directories in the repository whose names are valid, sorted."""
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a directory")
    names = []
    for p in sorted(repository.iterdir()):
        if not p.is_dir():
            continue
        try:
            names.append(validate_model_name(p.name))
        except RepositoryError:
            continue
    return names


def version_dir(repository: Path, name: str, version: int) -> Path:
    """The directory of `name`/`version`, refusing names or versions that would leave the repository."""
    validate_model_name(name)
    if version <= 0:
        raise RepositoryError(f"version must be a positive integer, got {version}")
    root = repository.resolve()
    path = (root / name / str(version)).resolve()
    if root not in path.parents:
        raise RepositoryError(f"{name}/{version} resolves outside the repository {root}")
    return path
