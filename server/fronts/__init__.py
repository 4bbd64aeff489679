"""The fronts clients speak to (gRPC today: vae.v1, the Open Inference Protocol, health, reflection), over one data plane."""
