"""Torch-free serving of exported VAEs: model repository, onnxruntime runtime, gRPC service, client."""
