"""ftproxy: an Envoy-style L4/L7 proxy for free-threaded CPython."""

__version__ = "0.1.0"
