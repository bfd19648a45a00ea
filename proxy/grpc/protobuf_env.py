"""Import this before the first `google.protobuf` import: on a free-threaded build it selects
protobuf's pure-Python backend.

protobuf's default upb C extension is not marked free-threading safe, so importing it on 3.14t
turns the GIL back on for the whole process. PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
must be set before protobuf is first imported to avoid that; a GIL build keeps the fast upb
backend (the variable is left as the user set it either way). Envoy's v3 message classes come
from `xds-protos` (installed `--no-deps`: its metadata asks for grpcio, which ftproxy never
imports) on top of `protobuf`.

`implementation()` says which backend was loaded ("python" or "upb"). Must not: import
protobuf itself (importing this module only sets the variable). Thread affinity: import on the
main thread, at config load.
"""

from __future__ import annotations

import os
import sys

__all__ = ["FREE_THREADED", "implementation"]

FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()

if FREE_THREADED:
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")


def implementation() -> str:
    from google.protobuf.internal import api_implementation
    return api_implementation.Type()
