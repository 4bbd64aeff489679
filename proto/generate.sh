#!/usr/bin/env bash
# Regenerates the committed Python stubs in server/proto_gen from proto/vae/v1/vae.proto.
# Run from anywhere with the dev extra installed: `uv run bash proto/generate.sh`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/server/proto_gen"
rm -rf "$out/vae"
mkdir -p "$out/vae/v1"
python -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out="$out" \
  "$root/proto/vae/v1/vae.proto"
# protoc writes absolute imports (`from vae.v1 import ...`); the stubs live inside the server package.
sed -i 's/^from vae\.v1 import/from server.proto_gen.vae.v1 import/' "$out/vae/v1/"*.py "$out/vae/v1/"*.pyi
for pkg in "$out/vae" "$out/vae/v1"; do
  echo '"""Generated gRPC stubs; regenerate with proto/generate.sh."""' > "$pkg/__init__.py"
done
echo "stubs written to $out/vae/v1"
