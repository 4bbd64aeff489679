"""The model repository format: `<repo>/<name>/<version>/{encoder.onnx,decoder.onnx,model.json}`,
plus optional learned priors: `prior.npz` (a Gaussian mixture over the latent space),
`class_prior.npz` (a conditional model's mixture per class) and `prior_decoder.onnx` (the decoder of
a two-stage prior, noise -> latent).

This module is the single definition of that layout. `export` writes it, `server` reads it; it imports
neither torch nor grpc.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.preprocessing import Preprocessing

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_FILE = "model.json"
# The learned prior: plain float64 arrays in an .npz read with allow_pickle=False, never a pickle.
MIXTURE_FILE = "prior.npz"
MIXTURE_ARRAYS = ("weights", "means", "scale_tril")
# A conditional model's mixture per class: the same three arrays with a leading class axis, weights
# (L, K), means (L, K, D), scale_tril (L, K, D, D); PRIOR_MIXTURE with label c draws from mixture c.
# A version may carry it beside prior.npz (the pooled mixture, which servers that predate this file
# keep serving).
CLASS_MIXTURE_FILE = "class_prior.npz"
# The two-stage prior (Dai & Wipf 2019): a graph noise (N, noise_dim) float32 -> latent (N, D)
# float32, deterministic. A Sample at temperature T draws noise ~ N(0, T^2 I) exactly as it draws
# N(0, I) latents (seed scheme 2: numpy Generator(Philox(key=seed)).standard_normal((N, noise_dim),
# dtype=float32), then multiplied in place by float32(T) when T != 1), runs this graph, then
# decoder.onnx on its output.
PRIOR_DECODER_FILE = "prior_decoder.onnx"
# The largest |ONNX - PyTorch| a prior decoder may have been exported with (float32, always).
PRIOR_DECODER_TOLERANCE = 1e-4
# 1 still: every learned prior is optional and additive. An older server reads the fields it knows
# (from_dict ignores the rest: two_stage, recommended_prior, recommended_temperature) and never opens
# prior_decoder.onnx, so it serves N(0, I) and the mixture of a new version correctly.
FORMAT_VERSION = 1

MODEL_KINDS = ("vae", "cvae", "ae")
LIKELIHOODS = ("bernoulli", "gaussian")
# Arithmetic inside the graphs; inputs and outputs are float32 either way, so the server feeds both alike.
PRECISIONS = ("fp32", "fp16")
# The priors a Sample request may draw from: N(0, I), which every version has; the mixture, which a
# version has when model.json declares one and prior.npz holds it; the two-stage prior, when
# model.json declares one (two_stage) and prior_decoder.onnx holds it.
PRIOR_STANDARD_NORMAL = "standard_normal"
PRIOR_MIXTURE = "mixture"
PRIOR_TWO_STAGE = "two_stage"
PRIORS = (PRIOR_STANDARD_NORMAL, PRIOR_MIXTURE, PRIOR_TWO_STAGE)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

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
    # The learned prior in prior.npz, described: components, covariance_type, sha256 (of the file),
    # fit_images, heldout_log_likelihood; empty when the version has none.
    mixture: dict[str, Any] = field(default_factory=dict)
    # The two-stage prior in prior_decoder.onnx, described: sha256 (of the file), input and output
    # (tensor names), noise_dim, latent_dim, parity (max_abs_diff, max_rel_diff, batch, tolerance)
    # and the second stage's training figures; empty when the version has none. Checked by
    # read_prior_decoder, not by validate(): a bad prior is refused alone, the version still serves.
    two_stage: dict[str, Any] = field(default_factory=dict)
    # A conditional model's mixtures per class in class_prior.npz, described: classes (L),
    # components (K), sha256 (of the file), covariance_type, fit_to; checked by
    # read_class_mixtures. When present, PRIOR_MIXTURE draws from the requested label's mixture.
    class_mixture: dict[str, Any] = field(default_factory=dict)
    # The prior (and its temperature) that sample quality recommends: the lowest Fréchet distance
    # among the priors whose recall is at least 0.8 x that of N(0, I) (training/recommend.py);
    # "" when not measured, and then N(0, I) at temperature 1 is the default.
    recommended_prior: str = ""
    recommended_temperature: float = 1.0
    # How an image file becomes the encoder's input, as training prepared its images (centre crop,
    # resize filter); absent in older files, which means resize straight to (H, W).
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    format_version: int = FORMAT_VERSION

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def priors(self) -> tuple[str, ...]:
        """The priors this version declares, in PRIORS order. A server lists those that loaded:
        a bad prior file is refused alone (read_mixture, read_prior_decoder)."""
        declared = {PRIOR_STANDARD_NORMAL, *(p for p, d in self._learned().items() if d)}
        return tuple(p for p in PRIORS if p in declared)

    def _learned(self) -> dict[str, dict[str, Any]]:
        return {PRIOR_MIXTURE: self.mixture or self.class_mixture, PRIOR_TWO_STAGE: self.two_stage}

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
                mixture=dict(data.get("mixture", {})),
                two_stage=dict(data.get("two_stage", {})),
                class_mixture=dict(data.get("class_mixture", {})),
                recommended_prior=str(data.get("recommended_prior", "")),
                recommended_temperature=float(data.get("recommended_temperature", 1.0)),
                preprocessing=Preprocessing.from_dict(data.get("preprocessing"), "preprocessing"),
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
        if self.mixture:
            sha = self.mixture.get("sha256")
            components = self.mixture.get("components")
            if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
                problems.append(f"mixture.sha256 must be the 64 hex digits of {MIXTURE_FILE}")
            if not isinstance(components, int) or components <= 0:
                problems.append(
                    f"mixture.components must be a positive integer, got {components!r}"
                )
        if self.recommended_prior and self.recommended_prior not in self.priors:
            problems.append(
                f"recommended_prior {self.recommended_prior!r} is not a prior this version has "
                f"({', '.join(self.priors)}); export the version again"
            )
        if not (0 < self.recommended_temperature < float("inf")):
            problems.append(
                f"recommended_temperature must be a positive number, got "
                f"{self.recommended_temperature}"
            )
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

    @property
    def mixture(self) -> Path:
        return self.directory / MIXTURE_FILE

    @property
    def prior_decoder(self) -> Path:
        return self.directory / PRIOR_DECODER_FILE

    @property
    def class_mixture(self) -> Path:
        return self.directory / CLASS_MIXTURE_FILE


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


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A Gaussian mixture over the latent space, the learned prior of a version (prior.npz).

    K components in D dimensions: `weights` (K,) non-negative, summing to 1; `means` (K, D);
    `scale_tril` (K, D, D), the lower-triangular Cholesky factor of each component's covariance
    (positive diagonal), so a draw of component k is means[k] + scale_tril[k] @ eps, eps ~ N(0, I).
    Every array is float64.
    """

    weights: np.ndarray
    means: np.ndarray
    scale_tril: np.ndarray

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], latent_dim: int, where: str = MIXTURE_FILE
    ) -> GaussianMixture:
        """Check shapes, finiteness, weights and triangularity; RepositoryError says what is wrong."""
        missing = [name for name in MIXTURE_ARRAYS if name not in arrays]
        if missing:
            raise RepositoryError(f"{where}: missing arrays {missing}; expected {MIXTURE_ARRAYS}")
        weights, means, scale_tril = (np.asarray(arrays[n]) for n in MIXTURE_ARRAYS)
        for name, array in zip(MIXTURE_ARRAYS, (weights, means, scale_tril), strict=True):
            if array.dtype.kind not in "fiu":
                raise RepositoryError(f"{where}: {name} has dtype {array.dtype}, expected float")
        weights, means, scale_tril = (a.astype(np.float64) for a in (weights, means, scale_tril))
        k = weights.shape[0] if weights.ndim == 1 else 0
        problems = []
        if k == 0:
            problems.append(f"weights must be a non-empty vector (K,), got shape {weights.shape}")
        if means.shape != (k, latent_dim):
            problems.append(f"means must be (K={k}, D={latent_dim}), got {means.shape}")
        if scale_tril.shape != (k, latent_dim, latent_dim):
            problems.append(
                f"scale_tril must be (K={k}, D={latent_dim}, D={latent_dim}), got {scale_tril.shape}"
            )
        if problems:
            raise RepositoryError(f"{where}: " + "; ".join(problems))
        for name, array in zip(MIXTURE_ARRAYS, (weights, means, scale_tril), strict=True):
            if not np.all(np.isfinite(array)):
                problems.append(f"{name} holds NaN or infinite values")
        if np.any(weights < 0) or abs(float(weights.sum()) - 1.0) > 1e-6:
            problems.append(f"weights must be non-negative and sum to 1, got sum {weights.sum()}")
        if np.any(np.triu(scale_tril, k=1) != 0):
            problems.append("scale_tril must be lower-triangular")
        if np.any(np.diagonal(scale_tril, axis1=1, axis2=2) <= 0):
            problems.append("scale_tril must have a positive diagonal")
        if problems:
            raise RepositoryError(f"{where}: " + "; ".join(problems))
        return cls(weights, means, scale_tril)  # as stored: a round trip keeps every bit

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, means=self.means, scale_tril=self.scale_tril)
        return buffer.getvalue()


def write_mixture(directory: Path, mixture: GaussianMixture) -> str:
    """Write prior.npz into a version directory being built; returns its sha256 for model.json."""
    data = mixture.to_npz_bytes()
    (directory / MIXTURE_FILE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_mixture(version_dir: Path, meta: ModelMetadata) -> GaussianMixture | None:
    """The version's mixture prior, None when model.json declares none; RepositoryError if the file
    is missing, differs from the sha256 model.json records, or does not hold a valid mixture. The
    server then serves the version without it (a prior is refused alone)."""
    if not meta.mixture:
        return None
    path = VersionPaths(version_dir).mixture
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RepositoryError(
            f"{path}: missing, but model.json declares a mixture prior; export the version again "
            "(vae-export --force)"
        ) from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read the mixture prior ({exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.mixture["sha256"]:
        raise RepositoryError(
            f"{path}: sha256 {digest[:12]}... differs from the {meta.mixture['sha256'][:12]}... "
            "that model.json records: the mixture file is corrupt or was replaced; export the "
            "version again (vae-export --force)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile, ValueError for pickled objects, truncated members ...
        raise RepositoryError(
            f"{path}: not a readable .npz of plain arrays ({type(exc).__name__}: {exc})"
        ) from exc
    mixture = GaussianMixture.from_arrays(arrays, meta.latent_dim, where=str(path))
    if mixture.components != meta.mixture["components"]:
        raise RepositoryError(
            f"{path}: holds {mixture.components} components, model.json says "
            f"{meta.mixture['components']}"
        )
    return mixture


@dataclass(frozen=True)
class PriorDecoder:
    """The two-stage prior's graph as checked bytes, for an onnxruntime session, and how to feed it:
    `input` takes (N, noise_dim) float32 noise, `output` gives (N, latent_dim) float32 latents."""

    model_bytes: bytes
    input: str
    output: str
    noise_dim: int
    latent_dim: int


def two_stage_problems(meta: ModelMetadata) -> list[str]:
    """What is wrong with model.json's two_stage block (empty: nothing, or no block)."""
    block = meta.two_stage
    if not block:
        return []
    problems = []
    sha = block.get("sha256")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        problems.append(f"two_stage.sha256 must be the 64 hex digits of {PRIOR_DECODER_FILE}")
    for key in ("input", "output"):
        if not isinstance(block.get(key), str) or not block[key]:
            problems.append(f"two_stage.{key} must name the graph's {key} tensor")
    noise_dim, latent_dim = block.get("noise_dim"), block.get("latent_dim")
    if not isinstance(noise_dim, int) or isinstance(noise_dim, bool) or noise_dim <= 0:
        problems.append(f"two_stage.noise_dim must be a positive integer, got {noise_dim!r}")
    if latent_dim != meta.latent_dim:
        problems.append(
            f"two_stage.latent_dim must equal the model's latent_dim {meta.latent_dim}, got "
            f"{latent_dim!r}"
        )
    parity = block.get("parity")
    worst = parity.get("max_abs_diff") if isinstance(parity, dict) else None
    if not isinstance(worst, int | float) or not 0 <= worst <= PRIOR_DECODER_TOLERANCE:
        problems.append(
            f"two_stage.parity.max_abs_diff must be a number in [0, {PRIOR_DECODER_TOLERANCE:g}] "
            f"(the export's ONNX-vs-PyTorch check), got {worst!r}"
        )
    return problems


def read_prior_decoder(version_dir: Path, meta: ModelMetadata) -> PriorDecoder | None:
    """The version's two-stage prior decoder, None when model.json declares none; RepositoryError
    (one line: what is wrong, how to fix it) when the block is malformed, the file is missing or
    differs from the sha256 model.json records. The server then serves the version without it."""
    if not meta.two_stage:
        return None
    path = VersionPaths(version_dir).prior_decoder
    problems = two_stage_problems(meta)
    if problems:
        raise RepositoryError(
            f"{version_dir / METADATA_FILE}: " + "; ".join(problems) + "; export the version again"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RepositoryError(
            f"{path}: missing, but model.json declares a two-stage prior; export the version "
            "again (vae-export --force)"
        ) from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read the two-stage prior ({exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.two_stage["sha256"]:
        raise RepositoryError(
            f"{path}: sha256 {digest[:12]}... differs from the {meta.two_stage['sha256'][:12]}... "
            "that model.json records: the prior decoder is corrupt or was replaced; export the "
            "version again (vae-export --force)"
        )
    block = meta.two_stage
    return PriorDecoder(data, block["input"], block["output"], block["noise_dim"], meta.latent_dim)


def write_class_mixtures(directory: Path, mixtures: list[GaussianMixture]) -> str:
    """Write class_prior.npz (one mixture per class, all with K components) into a version
    directory being built; returns its sha256 for model.json."""
    if not mixtures or len({m.components for m in mixtures}) != 1:
        raise RepositoryError("per-class mixtures must be one or more, with one component count")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        weights=np.stack([m.weights for m in mixtures]),
        means=np.stack([m.means for m in mixtures]),
        scale_tril=np.stack([m.scale_tril for m in mixtures]),
    )
    data = buffer.getvalue()
    (directory / CLASS_MIXTURE_FILE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_class_mixtures(
    version_dir: Path, meta: ModelMetadata
) -> tuple[GaussianMixture, ...] | None:
    """The version's mixture per class (index = label), None when model.json declares none;
    RepositoryError (one line) when the block or the file is wrong: the server then serves the
    version without it (the pooled prior.npz, if any, still answers PRIOR_MIXTURE)."""
    block = meta.class_mixture
    if not block:
        return None
    path = VersionPaths(version_dir).class_mixture
    sha, classes = block.get("sha256"), block.get("classes")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise RepositoryError(
            f"{version_dir / METADATA_FILE}: class_mixture.sha256 must be the 64 hex digits of "
            f"{CLASS_MIXTURE_FILE}; export the version again"
        )
    if classes != meta.num_classes or not meta.conditional:
        raise RepositoryError(
            f"{version_dir / METADATA_FILE}: class_mixture.classes must equal num_classes "
            f"{meta.num_classes} of a conditional model, got {classes!r}; export the version again"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RepositoryError(
            f"{path}: cannot read the per-class mixture prior ({exc}); export the version again"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha:
        raise RepositoryError(
            f"{path}: sha256 {digest[:12]}... differs from the {sha[:12]}... that model.json "
            "records: the file is corrupt or was replaced; export the version again"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile, ValueError for pickled objects, truncated members ...
        raise RepositoryError(
            f"{path}: not a readable .npz of plain arrays ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [name for name in MIXTURE_ARRAYS if name not in arrays]
    if missing or len(arrays.get("weights", ())) != classes:
        raise RepositoryError(
            f"{path}: expected {MIXTURE_ARRAYS} with a leading axis of {classes} classes"
        )
    return tuple(
        GaussianMixture.from_arrays(
            {name: arrays[name][label] for name in MIXTURE_ARRAYS},
            meta.latent_dim,
            where=f"{path} (class {label})",
        )
        for label in range(classes)
    )


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
