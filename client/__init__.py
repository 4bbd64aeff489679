"""Clients of vae-serve: the VaeClient API, the vae-client command line, the vae-bench load generator and a no-op server for transport ceilings."""
