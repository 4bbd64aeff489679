"""The data plane: request validation, limits, latent draws and priors, one model call per request."""
