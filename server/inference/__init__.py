"""Inference: the model store and hot reload, onnxruntime sessions, dynamic batching."""
