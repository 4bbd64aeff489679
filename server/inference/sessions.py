"""onnxruntime sessions for one model version: provider selection, warm-up, encode and decode calls."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.inference.batching import RunFunction, session_runner
from server.repository import (
    GaussianMixture,
    ModelMetadata,
    RepositoryError,
    VersionPaths,
    read_metadata,
    read_mixture,
)

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created: provider preference, provider options and CPU threading."""

    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0  # 0 lets onnxruntime pick (one per physical core)
    inter_op_threads: int = 0
    cuda_device_id: int = 0
    cuda_arena_extend_strategy: str = "kNextPowerOfTwo"
    # EXHAUSTIVE benchmarks cuDNN algorithms once per shape; MLP decoders have no convolutions, so it
    # only costs time for convolutional models, at their first batch of each size.
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    cuda_mem_limit_bytes: int = 0
    tensorrt: bool = False
    tensorrt_cache_dir: str = "/tmp/vae-trt-cache"
    tensorrt_fp16: bool = False

    def provider_list(self) -> list[str | tuple[str, dict[str, str]]]:
        """The providers to ask onnxruntime for, with their options, most preferred first."""
        requested = self.providers
        if self.tensorrt and "TensorrtExecutionProvider" not in requested:
            requested = ("TensorrtExecutionProvider", *requested)
        chosen: list[str | tuple[str, dict[str, str]]] = []
        for name in resolve_providers(requested):
            if name == "TensorrtExecutionProvider":
                if not self.tensorrt:
                    continue  # opt-in only: engine builds take minutes
                chosen.append(
                    (
                        name,
                        {
                            "device_id": str(self.cuda_device_id),
                            "trt_engine_cache_enable": "True",
                            "trt_engine_cache_path": self.tensorrt_cache_dir,
                            "trt_fp16_enable": str(self.tensorrt_fp16),
                        },
                    )
                )
            elif name == "CUDAExecutionProvider":
                cuda = {
                    "device_id": str(self.cuda_device_id),
                    "arena_extend_strategy": self.cuda_arena_extend_strategy,
                    "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
                }
                if self.cuda_mem_limit_bytes:
                    cuda["gpu_mem_limit"] = str(self.cuda_mem_limit_bytes)
                chosen.append((name, cuda))
            else:
                chosen.append(name)
        return chosen


@functools.lru_cache(maxsize=8)
def resolve_providers(requested: tuple[str, ...]) -> tuple[str, ...]:
    """Keep the requested providers this onnxruntime build offers, in order; CPU is always last."""
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available and p != "CPUExecutionProvider"]
    unknown = [p for p in requested if p not in available]
    if unknown:
        log.info("providers not in this onnxruntime build, skipped: %s", ", ".join(unknown))
    chosen.append("CPUExecutionProvider")
    return tuple(chosen)


def _create_session(path: Path, options: RuntimeOptions) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads spin by default; in a server many calls overlap and spinning steals the
    # cores the gRPC threads need (measured: BENCHMARKS.md, Server).
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = options.provider_list()
    try:
        return ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise RepositoryError(f"{path}: onnxruntime cannot load this graph ({exc})") from exc


class ModelSessions:
    """The encoder and decoder sessions of one model version.

    Shapes: images (N, C, H, W) float32 in [0, 1]; latents (N, latent_dim) float32;
    labels (N,) int64 for conditional models.
    """

    def __init__(self, version_dir: Path, options: RuntimeOptions | None = None) -> None:
        options = options or RuntimeOptions()
        self.metadata: ModelMetadata = read_metadata(version_dir)
        # The learned prior, read and checked once here: a corrupt prior.npz fails the load.
        self.mixture: GaussianMixture | None = read_mixture(version_dir, self.metadata)
        paths = VersionPaths(version_dir)
        self.encoder = _create_session(paths.encoder, options)
        self.decoder = _create_session(paths.decoder, options)
        self._check_signature()
        # What onnxruntime actually gave us: the first provider of the session, never the request.
        self.provider = self.decoder.get_providers()[0]
        # On a GPU, bind outputs to device memory and copy each once to the host; on CPU, plain run()
        # already avoids copies. UNTESTED ON A GPU: this machine has none (see README, Server).
        self._device_id = options.cuda_device_id
        self.io_binding = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        if self.provider != self.encoder.get_providers()[0]:
            log.warning(
                "%s: encoder runs on %s but decoder on %s",
                self.metadata.name,
                self.encoder.get_providers()[0],
                self.provider,
            )

    def _check_signature(self) -> None:
        names = self.metadata.tensors
        for label, session, inputs, outputs in (
            ("encoder", self.encoder, names.encoder_inputs, names.encoder_outputs),
            ("decoder", self.decoder, names.decoder_inputs, names.decoder_outputs),
        ):
            got_in = tuple(i.name for i in session.get_inputs())
            got_out = tuple(o.name for o in session.get_outputs())
            if got_in != inputs or got_out != outputs:
                raise RepositoryError(
                    f"{self.metadata.name}/{self.metadata.version}: {label} graph has inputs "
                    f"{got_in} and outputs {got_out}, but model.json declares {inputs} and {outputs}"
                )

    def _feeds(
        self, names: tuple[str, ...], values: np.ndarray, labels: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        feeds = {names[0]: np.ascontiguousarray(values, dtype=np.float32)}
        if self.metadata.conditional:
            if labels is None:
                raise ValueError("conditional model called without labels")
            feeds[names[1]] = np.ascontiguousarray(labels, dtype=np.int64)
        return feeds

    def _run(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return session.run(None, feeds)
        binding = session.io_binding()
        for name, value in feeds.items():
            # One host-to-device copy per input; onnxruntime would otherwise copy inside run().
            device_value = ort.OrtValue.ortvalue_from_numpy(value, "cuda", self._device_id)
            binding.bind_ortvalue_input(name, device_value)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda", self._device_id)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def run_function(self, component: str) -> RunFunction:
        """What a batcher calls for `component` ("encoder" or "decoder"): inputs in the graph's
        input order (float32 values, then int64 labels for conditional models) -> the graph's
        outputs. On CPU it is the session's own run (batching.session_runner); on a GPU, run with
        I/O binding."""
        session = self.encoder if component == "encoder" else self.decoder
        names = [i.name for i in session.get_inputs()]
        if not self.io_binding:
            return session_runner(session.run, names)

        def bound(inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
            return self._run(session, dict(zip(names, inputs, strict=True)))  # type: ignore[arg-type]

        return bound

    def encode(
        self, images: np.ndarray, labels: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, H, W) images -> mean (N, D) and log-variance (N, D), or None for autoencoders."""
        names = self.metadata.tensors
        outputs = self._run(self.encoder, self._feeds(names.encoder_inputs, images, labels))
        mean = outputs[0]
        log_variance = outputs[1] if len(outputs) > 1 else None
        return mean, log_variance

    def decode(self, latents: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """(N, D) latents -> (N, C, H, W) images in [0, 1]."""
        names = self.metadata.tensors
        (images,) = self._run(self.decoder, self._feeds(names.decoder_inputs, latents, labels))
        return images

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> float:
        """Run each graph on zeros so first requests do not pay for lazy initialisation; seconds."""
        start = time.perf_counter()
        meta = self.metadata
        for n in batch_sizes:
            labels = np.zeros(n, dtype=np.int64) if meta.conditional else None
            self.encode(np.zeros((n, *meta.image_shape), dtype=np.float32), labels)
            self.decode(np.zeros((n, meta.latent_dim), dtype=np.float32), labels)
        return time.perf_counter() - start
