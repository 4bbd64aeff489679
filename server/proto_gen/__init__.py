"""Generated protobuf and gRPC stubs for vae.v1 (see proto/generate.sh)."""
