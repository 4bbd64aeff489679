"""Checkpoint -> ONNX encoder and decoder, checked against PyTorch, written into a model repository."""
