"""Tests: unit tests and integration tests against a real loopback server."""
