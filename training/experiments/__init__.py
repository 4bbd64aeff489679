"""Reproducible studies of the VAE's knobs: each trains what it needs and writes a report folder."""
