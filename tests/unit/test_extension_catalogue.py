"""proxy.extensions' catalogue is the truth about the built-in extensions: every row names
the module whose import registers that category's proto (and per-route proto), every
registered extension has its row, and a proxy imports only the extension modules its config
names (the rest load on first use)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from proxy.config import registry
from proxy.extensions import BUILT_IN


def test_every_row_names_the_module_that_registers_it_and_nothing_else_registers():
    registry.load_all()
    for module, category, proto, per_route in BUILT_IN:
        assert registry.registered_by(category, proto) == module, (category, proto)
        ext = registry._BY_PROTO[(category, proto)]
        assert ext.per_route_proto == per_route, (category, proto)
    rows = {(c, p) for _, c, p, _ in BUILT_IN}
    assert set(registry._BY_PROTO) - rows == set(), "registered without a catalogue row"


def test_a_config_imports_only_the_extensions_it_names():
    """In a fresh interpreter: a bootstrap with the router only imports no other HTTP filter;
    naming the fault filter imports it then."""
    code = textwrap.dedent('''
        import sys
        from proxy.config.load import load_bootstrap
        HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        def boot(filters):
            return {"static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 0}}, "filter_chains": [{"filters": [{
                "name": "hcm", "typed_config": {"@type": HCM, "stat_prefix": "s",
                "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": filters}}]}]}]}}
        ROUTER = {"name": "r", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        FAULT = {"name": "f", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}
        import json, tempfile
        def load(filters):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(boot(filters), f)
            load_bootstrap(f.name)
        load([ROUTER])
        print(sorted(m for m in sys.modules if m.startswith("proxy.http.filters.") and m.split(".")[-1]
                     in ("fault", "jwt_authn", "lua", "rbac", "ext_authz", "grpc_json_transcoder")))
        load([FAULT, ROUTER])
        print("proxy.http.filters.fault" in sys.modules)
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout
