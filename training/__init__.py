"""Training of autoencoders and VAEs in PyTorch: data, models, losses, loop, checkpoints, CLI."""
