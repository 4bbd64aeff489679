"""Clients of vae-serve: the VaeClient API, the vae-client command line, the vae-bench load generator and a no-op server for transport ceilings."""

import os

# gRPC's C core logs TLS handshake failures at INFO on stderr ("ssl_transport_security.cc ...
# Handshake failed ... WRONG_VERSION_NUMBER") before the call fails with its own status, which
# vae-client turns into one line (client/errors.py). It reads the level once, when grpc loads, and
# every client module imports grpc after this package: ERROR keeps real errors and drops the noise.
# A GRPC_VERBOSITY the user set wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
