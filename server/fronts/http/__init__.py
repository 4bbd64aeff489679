"""The HTTP front: the Open Inference Protocol's REST API, image routes, /openapi.json and the explorer."""
