"""The gRPC front: vae.v1, the Open Inference Protocol (KServe v2), grpc.health.v1 and reflection."""
