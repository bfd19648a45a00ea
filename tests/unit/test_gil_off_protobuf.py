"""On a free-threaded build, Envoy's protobuf classes keep the GIL off: loading them
(proxy/grpc/protobuf_env.py selects the pure-Python backend first; ext_authz_proto.py, the
reference of ext_authz's wire writer, as xDS's proto.py) and reading a message the wire writer
wrote. In a fresh interpreter, as test_gil_off.py (which imports every module, but not
protobuf: nothing on ext_authz's request path uses it)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

_CHILD = r"""
import sys
assert not sys._is_gil_enabled()
from proxy.http.filters import ext_authz_proto as ref
from proxy.http.filters import ext_authz_wire as g
from proxy.http.headers import Headers, RequestHead
ref.load_protos()
class Info:
    downstream_direct_remote_address = "127.0.0.1:5000"
    downstream_local_address = "127.0.0.1:10000"
    start_time = 1.5
    bytes_received = 0
head = RequestHead(b"GET", b"/x", b"a", b"http", Headers([(b"authorization", b"Bearer t")]))
data = g.check_request(head, Info(), 7, (), b"body", False, False, {"k": "v"})
msg = ref._pb.CheckRequest.FromString(data)
assert msg.attributes.request.http.body == "body", msg
from proxy.grpc.protobuf_env import implementation
print(implementation(), sys._is_gil_enabled())
"""


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="GIL build: nothing to check")
def test_ext_authz_grpc_protobuf_leaves_the_gil_off():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON_GIL", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         timeout=120, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["python", "False"]
