"""The HTTP front: the Open Inference Protocol's REST API, image routes, /openapi.json and the explorer,
served as ASGI by uvicorn on each serving process's event loop."""
