"""Torch-free serving of exported VAEs.

Rooms by role, each importing only the rooms below it:

- `process/`: settings, the server that wires everything together, the supervisor, `vae-serve`.
- `fronts/`: what clients speak (gRPC: vae.v1, the Open Inference Protocol, health, reflection).
- `dataplane/`: validation, limits, latents and priors; one model call per request.
- `inference/`: the model store and hot reload, dynamic batching, onnxruntime sessions.

Beneath them, shared by all and importable without any serving internals (export/ and client/ use
them): `repository` (the model repository format), `codecs` (protobuf tensors, PNG), `options`
(command-line options), `errors`, `metrics`, `logging_setup` and `proto_gen` (generated stubs).
"""
