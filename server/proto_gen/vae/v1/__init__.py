"""Generated gRPC stubs; regenerate with proto/generate.sh."""
