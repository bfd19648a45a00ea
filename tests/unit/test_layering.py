"""Import rules from DESIGN.md §7 / STYLE.md, checked on the source (AST, no imports run):
protocol code does no I/O, and nothing in proxy/ imports the CLI or its libraries."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"socket", "selectors", "select", "threading", "time", "os", "subprocess"}
# Sans-I/O packages and modules: codecs, route matching, LB math, config validation, the
# hot-restart message logic.
PURE = ["proxy/http/codec", "proxy/router", "proxy/upstream/load_balancer.py",
        "proxy/upstream/cluster_config.py", "proxy/config/reader.py", "proxy/config/registry.py",
        "proxy/hotrestart/messages.py", "proxy/http/headers.py"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def files(spec: str) -> list[Path]:
    p = ROOT / spec
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


def test_protocol_code_does_no_io():
    offenders = {str(f.relative_to(ROOT)): sorted(imported_modules(f) & IO_MODULES)
                 for spec in PURE for f in files(spec) if imported_modules(f) & IO_MODULES}
    assert offenders == {}


def test_proxy_never_imports_the_cli_or_its_libraries():
    offenders = {str(f.relative_to(ROOT)): sorted(imported_modules(f) & {"cli", "click", "rich"})
                 for f in (ROOT / "proxy").rglob("*.py") if imported_modules(f) & {"cli", "click", "rich"}}
    assert offenders == {}
