#!/usr/bin/env bash
# Regenerates the committed Python stubs in server/proto_gen from the .proto files here:
# vae/v1/vae.proto (package vae.v1) and inference/grpc_service.proto (package inference, the Open
# Inference Protocol). Run from anywhere with the dev extra installed: `uv run bash proto/generate.sh`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/server/proto_gen"
rm -rf "$out/vae" "$out/inference"
mkdir -p "$out/vae/v1" "$out/inference"
python -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out="$out" \
  "$root/proto/vae/v1/vae.proto" \
  "$root/proto/inference/grpc_service.proto"
# protoc writes absolute imports (`from vae.v1 import ...`); the stubs live inside the server package.
sed -i 's/^from vae\.v1 import/from server.proto_gen.vae.v1 import/' "$out/vae/v1/"*.py "$out/vae/v1/"*.pyi
sed -i 's/^from inference import/from server.proto_gen.inference import/' \
  "$out/inference/"*.py "$out/inference/"*.pyi
for pkg in "$out/vae" "$out/vae/v1"; do
  echo '"""Generated gRPC stubs; regenerate with proto/generate.sh."""' > "$pkg/__init__.py"
done
# The inference.* messages go into a descriptor pool of their own instead of protobuf's default pool:
# tritonclient and other clients built from the published proto register the same names in the
# default pool, and a pool refuses a second definition of a name, so a process that imports both (the
# tests; an application embedding the server) could not start. Reflection reads this pool too
# (server/fronts/grpc/reflection_v1.py, merged_pool).
cat > "$out/inference/__init__.py" <<'PY'
"""Generated gRPC stubs; regenerate with proto/generate.sh. POOL holds the inference.* descriptors."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
PY
sed -i -e 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/DESCRIPTOR = _POOL.AddSerializedFile(/' \
  -e 's/^# @@protoc_insertion_point(imports)$/from server.proto_gen.inference import POOL as _POOL\n&/' \
  "$out/inference/grpc_service_pb2.py"
grep -q '^DESCRIPTOR = _POOL.AddSerializedFile(' "$out/inference/grpc_service_pb2.py" || {
  echo "generate.sh: protoc's output changed; the inference stubs no longer use their own pool" >&2
  exit 1
}
echo "stubs written to $out/vae/v1 and $out/inference"
