"""VaeClient: the Python API for a running server (every RPC, TLS, deadlines); `vae-client` is in
client/cli.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from server.codecs import tensor_to_numpy, tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

METHODS = {
    "linear": vae_pb2.INTERPOLATION_METHOD_LINEAR,
    "spherical": vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
}
# How images travel back: float32 (N, C, H, W) in [0, 1], or uint8 0..255 (a quarter of the bytes).
IMAGE_FORMATS = {"float32": vae_pb2.IMAGE_FORMAT_TENSOR, "uint8": vae_pb2.IMAGE_FORMAT_UINT8}


DEFAULT_PORT = 50051  # vae-serve's default --port (server/settings.py; a test holds them equal)
_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def with_default_port(address: str) -> str:
    """`address` with vae-serve's port when it names none: `localhost` -> `localhost:50051`,
    `[::1]` -> `[::1]:50051`; addresses with a scheme (`unix:`, `dns:///`) are left alone. gRPC
    itself would go to 443, where no vae-serve listens."""
    if address.startswith(_SCHEMES):
        return address
    if address.startswith("["):  # [IPv6] or [IPv6]:port
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    if address.count(":") > 1:  # a bare IPv6 address holds colons but no port
        return f"[{address}]:{DEFAULT_PORT}"
    return address if ":" in address else f"{address}:{DEFAULT_PORT}"


class TlsFileError(ValueError):
    """A TLS file that cannot be used; the message names it and what it should hold."""


def read_pem(path: str, what: str, marker: str) -> bytes:
    """The bytes of a PEM file, checked before gRPC sees them (its C core only logs 'Could not load
    any root certificate' and fails the call later)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data or marker.encode() not in data:
        raise TlsFileError(f"{what} {path}: not a PEM file holding a {marker.lower()}")
    return data


def image_tensor(images: np.ndarray) -> vae_pb2.Tensor:
    """Request images as sent: uint8 arrays as DATA_TYPE_UINT8 (0..255), anything else as float32."""
    if images.dtype == np.uint8:
        pixels = np.ascontiguousarray(images)
        return vae_pb2.Tensor(
            shape=pixels.shape, data=pixels.tobytes(), dtype=vae_pb2.DATA_TYPE_UINT8
        )
    return tensor_to_proto(images)


# What `prior` may be in sample() and sample_stream(): N(0, I), or the version's learned mixture.
PRIORS = {
    "standard-normal": vae_pb2.PRIOR_STANDARD_NORMAL,
    "mixture": vae_pb2.PRIOR_MIXTURE,
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
        connections: int = 1,
    ):
        """Plaintext unless `tls_ca` (PEM roots) is set; `tls_cert`/`tls_key` add a client cert.

        An address without a port gets vae-serve's (50051). A TLS file that is missing or holds no
        PEM, a client certificate without its key (or without `tls_ca`), raise TlsFileError.
        `connections`: TCP connections the calls take in turn. One connection reaches one serving
        process of a pod (vae-serve --processes spreads connections, not calls), so a client whose
        threads call concurrently uses every process with as many connections as processes.
        """
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if connections > 1:
            # Channels to one address share one connection through gRPC's global subchannel pool;
            # a local pool per channel gives each its own.
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.address = with_default_port(address)
        if bool(tls_cert) != bool(tls_key):
            raise TlsFileError(
                "a client certificate needs its key: give both --tls-cert and --tls-key"
            )
        if tls_cert and not tls_ca:
            raise TlsFileError(
                "--tls-cert is for TLS, which --tls-ca turns on: give the CA that signed the "
                "server's certificate too"
            )
        if tls_ca:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read_pem(tls_ca, "--tls-ca", "CERTIFICATE"),
                private_key=read_pem(tls_key, "--tls-key", "PRIVATE KEY") if tls_key else None,
                certificate_chain=read_pem(tls_cert, "--tls-cert", "CERTIFICATE")
                if tls_cert
                else None,
            )
            self.channels = [
                grpc.secure_channel(self.address, credentials, options=options)
                for _ in range(connections)
            ]
        else:
            self.channels = [
                grpc.insecure_channel(self.address, options=options) for _ in range(connections)
            ]
        self.channel = self.channels[0]
        self._stubs = [vae_pb2_grpc.VaeServiceStub(channel) for channel in self.channels]
        self._turn = itertools.count()  # next() is atomic: threads may share the client
        self.timeout = timeout

    @property
    def stub(self) -> vae_pb2_grpc.VaeServiceStub:
        """The stub of the connection whose turn it is (each call takes the next one)."""
        return self._stubs[next(self._turn) % len(self._stubs)]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

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
        image_format: str = "float32",
        prior: str = "standard-normal",
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Draw `count` images from the prior (`standard-normal` or `mixture`, see PRIORS):
        (images (N, C, H, W), latents (N, D), seed used).

        `image_format="uint8"` returns the images as uint8 0..255, a quarter of the bytes on the wire.
        """
        request = vae_pb2.SampleRequest(
            model=self._ref(model, version),
            count=count,
            temperature=temperature,
            seed=seed,
            label=label,
            format=IMAGE_FORMATS[image_format],
            prior=PRIORS[prior],
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
        image_format: str = "float32",
        prior: str = "standard-normal",
    ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Stream `count` images in chunks: yields (images (n, C, H, W), latents (n, D), offset)."""
        request = vae_pb2.SampleStreamRequest(
            model=self._ref(model, version),
            count=count,
            chunk_size=chunk_size,
            temperature=temperature,
            seed=seed,
            label=label,
            format=IMAGE_FORMATS[image_format],
            prior=PRIORS[prior],
        )
        for chunk in self.stub.SampleStream(request, timeout=self.timeout):
            yield tensor_to_numpy(chunk.images), tensor_to_numpy(chunk.latents), chunk.offset

    def encode(
        self,
        images: np.ndarray,
        labels: list[int] | None = None,
        model: str = "",
        version: int = 0,
        clamp: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, H, W) images, float32 in [0, 1] or uint8 0..255 -> posterior mean and
        log-variance (None for autoencoders). `clamp` clips float values outside [0, 1] (the server
        refuses them otherwise)."""
        request = vae_pb2.EncodeRequest(
            model=self._ref(model, version),
            images=image_tensor(images),
            labels=labels or [],
            clamp=clamp,
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
        image_format: str = "float32",
    ) -> np.ndarray:
        """(N, D) latents -> (N, C, H, W) images, float32 in [0, 1] or (`image_format="uint8"`)
        uint8 0..255."""
        request = vae_pb2.DecodeRequest(
            model=self._ref(model, version),
            latents=tensor_to_proto(latents),
            labels=labels or [],
            format=IMAGE_FORMATS[image_format],
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
        image_format: str = "float32",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images along the path between two latents or two images: (images, latents)."""
        request = vae_pb2.InterpolateRequest(
            model=self._ref(model, version),
            steps=steps,
            method=METHODS[method],
            label=label,
            format=IMAGE_FORMATS[image_format],
        )
        pair = request.latents if endpoints == "latents" else request.images
        convert = tensor_to_proto if endpoints == "latents" else image_tensor
        pair.start.CopyFrom(convert(start))
        pair.end.CopyFrom(convert(end))
        response = self.stub.Interpolate(request, timeout=self.timeout)
        return tensor_to_numpy(response.images), tensor_to_numpy(response.latents)
