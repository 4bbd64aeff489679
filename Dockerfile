# syntax=docker/dockerfile:1.7
# Images of the VAE service, built with BuildKit from the locked dependencies in uv.lock.
#
#   docker build -t vae-serve:0.1.0 .                             serve: GPU server (the default, last stage)
#   docker build --target serve-cpu -t vae-serve:0.1.0-cpu .      the same server on plain onnxruntime
#   docker build --target train -t vae-train:0.1.0 .              vae-train and vae-export, with torch
#
# Each image installs exactly one onnxruntime distribution: the `gpu` extra (onnxruntime-gpu) in
# serve, the `cpu` extra (onnxruntime) in serve-cpu and train; pyproject.toml declares the two extras
# conflicting, and the build fails if both distributions got in anyway.
#
# The serving images hold the `server` and `client` packages and their dependencies only: onnxruntime, grpcio, numpy,
# protobuf, prometheus-client, pillow, uvicorn, httptools, orjson; no torch. Every vae-serve option is also a VAE_* variable, so
# they are configured by environment; the model repository is expected at /models (VAE_REPOSITORY).
# Ports: 50051 gRPC, 8080 HTTP (v2 REST, image routes, the explorer), 9090 /metrics, 50052 the plaintext health listener (on by default when TLS is,
# VAE_HEALTH_PORT), which the HEALTHCHECK asks when it is on.
# Processes: no VAE_PROCESSES here on purpose. vae-serve then runs one server process per core the
# container may run on (its CPU affinity: `docker run --cpuset-cpus`); a CPU quota (`--cpus 2`) does
# not narrow the affinity, so with a quota set VAE_PROCESSES to it. The Kubernetes manifests set it
# from the pod's CPU request.
#
# CUDA and cuDNN. uv.lock pins onnxruntime-gpu 1.31.1, which is built for CUDA 13 and cuDNN 9: the
# wheel's onnxruntime/capi/build_and_package_info.py says cuda_version = '13.0', its
# libonnxruntime_providers_cuda.so links libcudart.so.13 and libcublas.so.13, and its `cudnn` extra
# asks for nvidia-cudnn-cu13~=9.0; without them it logs "Failed to create CUDAExecutionProvider.
# Require cuDNN 9.* and CUDA 13.*". ONNX Runtime's "CUDA Execution Provider" requirements page adds that
# a build for CUDA 13.x runs on any 13.x (minor version compatibility) and that cuDNN 8 and 9 are
# not interchangeable. Hence CUDA 13 + cuDNN 9 below, which needs an NVIDIA driver >= 580 on the node.
# ONNXRUNTIME_GPU_VERSION records what this was checked against; a test fails when uv.lock moves on.

ARG UV_VERSION=0.13.9
ARG PYTHON_VERSION=3.11
ARG UBUNTU_IMAGE=ubuntu:24.04
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------------------
# build: a managed CPython in /opt/python, copied as it is into every final image (same path, so the
# environments' interpreter links keep working), plus uv to resolve the lockfile.
FROM ${UBUNTU_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    NO_TORCH="import importlib.util, sys; sys.exit('torch in a serving image' if importlib.util.find_spec('torch') else 0)" \
    ONE_ONNXRUNTIME="import importlib.metadata as m, re, sys; names = {re.sub('[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}; found = sorted(names & {'onnxruntime', 'onnxruntime-gpu'}); sys.exit(0 if len(found) == 1 else f'onnxruntime distributions installed: {found}; expected exactly one')"
ARG PYTHON_VERSION
RUN uv python install "${PYTHON_VERSION}"
WORKDIR /src

# serve-env: the server's environment for the GPU image: the `gpu` extra, onnxruntime-gpu only. Only
# server/ and client/ are copied in, so the installed project holds no training or export code.
# The build fails if torch got in anyway, if both onnxruntime distributions did, or if the vae-serve
# entry point does not import.
FROM build AS serve-env
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-editable --no-install-project --extra gpu
COPY pyproject.toml uv.lock README.md ./
COPY server ./server
COPY client ./client
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-editable --extra gpu \
    && rm /opt/venv/bin/vae-train /opt/venv/bin/vae-export \
    && /opt/venv/bin/python -c "$NO_TORCH" \
    && /opt/venv/bin/python -c "$ONE_ONNXRUNTIME" \
    && /opt/venv/bin/vae-serve --help >/dev/null

# serve-cpu-env: the server with the `cpu` extra (plain onnxruntime), for nodes without a GPU.
FROM build AS serve-cpu-env
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-editable --no-install-project --extra cpu
COPY pyproject.toml uv.lock README.md ./
COPY server ./server
COPY client ./client
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-editable --extra cpu \
    && rm /opt/venv/bin/vae-train /opt/venv/bin/vae-export \
    && /opt/venv/bin/python -c "$NO_TORCH" \
    && /opt/venv/bin/python -c "$ONE_ONNXRUNTIME" \
    && /opt/venv/bin/vae-serve --help >/dev/null

# train-env: everything, torch included, for training and batch export (whose parity check runs the
# graphs on CPU onnxruntime, the `cpu` extra).
FROM build AS train-env
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-editable --no-install-project --extra train --extra cpu
COPY pyproject.toml uv.lock README.md ./
COPY server ./server
COPY client ./client
COPY training ./training
COPY export ./export
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-editable --extra train --extra cpu \
    && /opt/venv/bin/python -c "$ONE_ONNXRUNTIME"

# ---------------------------------------------------------------------------------------------------
# train: `vae-train` and `vae-export` with torch. torch's wheels bring their own CUDA libraries, so
# this image trains on a GPU node too. No entrypoint: a Job names the command (see k8s/jobs/).
FROM ${UBUNTU_IMAGE} AS train
LABEL org.opencontainers.image.title="vae-train" \
      org.opencontainers.image.description="VAE training and ONNX export (vae-train, vae-export), with PyTorch" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 vae \
    && useradd --system --no-log-init --uid 10001 --gid vae --home-dir /tmp --shell /usr/sbin/nologin vae
COPY --from=build /opt/python /opt/python
COPY --from=train-env /opt/venv /opt/venv
# HOME and the caches point at /tmp so the image runs with a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    VAE_REPOSITORY=/models
WORKDIR /tmp
USER 10001:10001
CMD ["vae-train", "--help"]

# serve-cpu: vae-serve on plain onnxruntime (CPUExecutionProvider). HOME=/tmp as in `serve` below.
FROM ${UBUNTU_IMAGE} AS serve-cpu
LABEL org.opencontainers.image.title="vae-serve" \
      org.opencontainers.image.description="VAE gRPC server on onnxruntime (CPU), no torch" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 vae \
    && useradd --system --no-log-init --uid 10001 --gid vae --home-dir /tmp --shell /usr/sbin/nologin vae
COPY --from=build /opt/python /opt/python
COPY --from=serve-cpu-env /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/vae/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    VAE_REPOSITORY=/models \
    VAE_PROVIDERS=CPUExecutionProvider
WORKDIR /tmp
EXPOSE 50051 8080 9090 50052
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/vae/healthcheck.py"]
ENTRYPOINT ["vae-serve"]

# serve (default): vae-serve on onnxruntime-gpu over the CUDA 13 + cuDNN 9 runtime; it falls back to
# the CPU provider when no GPU is visible, unless VAE_REQUIRE_GPU=true.
FROM ${CUDA_IMAGE} AS serve
ARG ONNXRUNTIME_GPU_VERSION
LABEL org.opencontainers.image.title="vae-serve" \
      org.opencontainers.image.description="VAE gRPC server on onnxruntime-gpu (CUDA 13, cuDNN 9), no torch" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.github.vae-service.onnxruntime-gpu="${ONNXRUNTIME_GPU_VERSION}"
RUN groupadd --system --gid 10001 vae \
    && useradd --system --no-log-init --uid 10001 --gid vae --home-dir /tmp --shell /usr/sbin/nologin vae
COPY --from=build /opt/python /opt/python
COPY --from=serve-env /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/vae/healthcheck.py
# /tmp is the only writable place (an emptyDir in Kubernetes, --tmpfs /tmp in docker run): HOME points
# there because onnxruntime writes a device id under $HOME/.cache, and so does the CUDA JIT cache.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    VAE_REPOSITORY=/models \
    VAE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
WORKDIR /tmp
EXPOSE 50051 8080 9090 50052
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/vae/healthcheck.py"]
ENTRYPOINT ["vae-serve"]
