"""Secrets by name: `static_resources.secrets`, and file-based SDS rotated under load with no
reload and no failed request (Envoy's `sds_config: {path_config_source: {path}}`)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import yaml

from proxy.config.load import parse_bootstrap
from proxy.config.reader import ConfigError
from tests.tls_certs import CertAuthority

from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster
from .tls_config import DOWNSTREAM_URL, TLS, certificate

SECRET_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ROUTE_ALL = [{"match": {"prefix": "/"}, "route": {"cluster": "c1"}}]


def _sds_listener(config: dict, common: dict) -> dict:
    fc = config["static_resources"]["listeners"][0]["filter_chains"][0]
    fc["transport_socket"] = {"name": TLS, "typed_config": {"@type": DOWNSTREAM_URL, "common_tls_context": common}}
    return config


def _served_cert(port: int, cafile: Path, name: str = "localhost") -> int:
    """The serial number of the certificate the proxy presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return int(t.getpeercert()["serialNumber"], 16)


def _serial(cert_path: Path) -> int:
    from cryptography import x509
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


def _write_secret_file(path: Path, name: str, cert: Path, key: Path) -> None:
    """Write the SDS file next to `path` and rename it onto `path` (how Envoy wants a file
    source updated: a move, never an in-place write)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"resources": [{"@type": SECRET_URL, "name": name,
                                                  "tls_certificate": certificate(cert, key)}]}))
    os.rename(tmp, path)


def test_static_secrets_are_resolved_by_name_for_certificates_and_validation(upstream, tmp_path):
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "server", ["localhost"])
    client = ca.issue_files(tmp_path, "client", [], cn="c", client=True)
    cafile = ca.pem_file(tmp_path)
    cfg = front_proxy_config(ROUTE_ALL, [static_cluster("c1", upstream.port)])
    cfg["static_resources"]["secrets"] = [
        {"name": "server_cert", "tls_certificate": certificate(cert, key)},
        {"name": "client_ca", "validation_context": {"trusted_ca": {"filename": str(cafile)}}},
    ]
    _sds_listener(cfg, {"tls_certificate_sds_secret_configs": [{"name": "server_cert"}],
                        "validation_context_sds_secret_config": {"name": "client_ca"}})
    fc = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    fc["transport_socket"]["typed_config"]["require_client_certificate"] = True
    p = ProxyUnderTest(cfg)
    try:
        ctx = ssl.create_default_context(cafile=str(cafile))
        ctx.load_cert_chain(str(client[0]), str(client[1]))
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"GET /static HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                data = b""
                while chunk := t.recv(65536):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b'"/static"' in data
    finally:
        p.stop()


def test_an_unknown_or_invalid_static_secret_is_a_config_error(tmp_path):
    cfg = _sds_listener(front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)]),
                        {"tls_certificate_sds_secret_configs": [{"name": "nope"}]})
    with pytest.raises(ConfigError, match=r"tls_certificate_sds_secret_configs\[0\]\.name: Unknown static secret: nope"):
        parse_bootstrap(cfg)
    bad = tmp_path / "bad.pem"
    bad.write_text("junk")
    cfg = front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)])
    cfg["static_resources"]["secrets"] = [{"name": "unused", "tls_certificate": certificate(bad, bad)}]
    with pytest.raises(ConfigError, match=r"static_resources\.secrets\[0\]\.tls_certificate\.certificate_chain: "
                                          r"not a PEM certificate"):
        parse_bootstrap(cfg)


def test_a_file_sds_source_needs_the_node_id_and_cluster_as_in_envoy(tmp_path):
    ca = CertAuthority()
    cert, key = ca.issue_files(tmp_path, "server", ["localhost"])
    sds = tmp_path / "sds.yaml"
    _write_secret_file(sds, "server_cert", cert, key)
    cfg = _sds_listener(front_proxy_config(ROUTE_ALL, [static_cluster("c1", 1)]), {
        "tls_certificate_sds_secret_configs": [{"name": "server_cert", "sds_config": {
            "path_config_source": {"path": str(sds)}, "resource_api_version": "V3"}}]})
    with pytest.raises(ConfigError, match="needs node.id and node.cluster"):
        parse_bootstrap(cfg)
    cfg["node"] = {"id": "n1", "cluster": "c"}
    parse_bootstrap(cfg)


def test_rotating_a_file_sds_certificate_under_load_loses_no_request(upstream, tmp_path):
    ca = CertAuthority()
    cafile = ca.pem_file(tmp_path)
    first = ca.issue_files(tmp_path, "first", ["localhost"])
    second = ca.issue_files(tmp_path, "second", ["localhost"])
    broken_key = tmp_path / "broken.key"
    broken_key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    sds = tmp_path / "sds.yaml"
    _write_secret_file(sds, "server_cert", *first)
    cfg = _sds_listener(front_proxy_config(ROUTE_ALL, [static_cluster("c1", upstream.port)]), {
        "tls_certificate_sds_secret_configs": [{"name": "server_cert", "sds_config": {
            "path_config_source": {"path": str(sds)}, "resource_api_version": "V3"}}]})
    cfg["node"] = {"id": "n1", "cluster": "c"}
    p = ProxyUnderTest(cfg, concurrency=2)
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:  # new TLS connections, one request each, until told to stop
        ctx = ssl.create_default_context(cafile=str(cafile))
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
                    with ctx.wrap_socket(s, server_hostname="localhost") as t:
                        t.sendall(b"GET /load HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                        data = b""
                        while chunk := t.recv(65536):
                            data += chunk
                results.append("ok" if data.startswith(b"HTTP/1.1 200") else f"bad: {data[:40]!r}")
            except OSError as e:
                results.append(f"error: {e}")
    try:
        assert _served_cert(p.port, cafile) == _serial(first[0])
        # A keep-alive connection made with the first certificate outlives the rotation.
        ctx = ssl.create_default_context(cafile=str(cafile))
        keep = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port), timeout=5), server_hostname="localhost")
        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        _write_secret_file(sds, "server_cert", *second)
        assert p.wait_for(lambda: _served_cert(p.port, cafile) == _serial(second[0]), timeout=10)
        # A bad version is refused and logged; the second certificate stays.
        _write_secret_file(sds, "server_cert", second[0], broken_key)
        assert p.wait_for(lambda: p.counters().get("sds.server_cert.update_rejected") == 1, timeout=10)
        assert _served_cert(p.port, cafile) == _serial(second[0])
        # An in-place write is not a replacement (Envoy watches for moves): ignored.
        sds.write_text(sds.read_text().replace(str(broken_key), str(first[1])).replace(
            str(second[0]), str(first[0])))
        time.sleep(2.5)
        assert _served_cert(p.port, cafile) == _serial(second[0])
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        keep.sendall(b"GET /kept HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert keep.recv(65536).startswith(b"HTTP/1.1 200")
        keep.close()
        assert len(results) > 20 and set(results) == {"ok"}, [r for r in results if r != "ok"][:3]
        c = p.counters()
        assert (c["sds.server_cert.update_success"], c["sds.server_cert.update_rejected"]) == (2, 1)
    finally:
        stop.set()
        p.stop()


def test_a_kubernetes_style_symlink_swap_rotates_the_certificate(upstream, tmp_path):
    """A Secret volume: the files are links through `..data`, a link to a timestamped
    directory that is swapped atomically; the SDS file names the certificate files."""
    ca = CertAuthority()
    cafile = ca.pem_file(tmp_path)
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: str, names: list[str]) -> Path:
        d = mount / f"..{version}"
        d.mkdir()
        cert, key = ca.issue_files(d, "tls", names)
        os.rename(cert, d / "tls.crt")
        os.rename(key, d / "tls.key")
        link = mount / "..data_tmp"
        os.symlink(d.name, link)
        os.rename(link, mount / "..data")  # atomic swap
        return d / "tls.crt"

    first = publish("2026_01", ["localhost"])
    for f in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{f}", mount / f)
    sds = tmp_path / "sds.yaml"
    _write_secret_file(sds, "server_cert", mount / "tls.crt", mount / "tls.key")
    cfg = _sds_listener(front_proxy_config(ROUTE_ALL, [static_cluster("c1", upstream.port)]), {
        "tls_certificate_sds_secret_configs": [{"name": "server_cert", "sds_config": {
            "path_config_source": {"path": str(sds)}}}]})
    cfg["node"] = {"id": "n1", "cluster": "c"}
    p = ProxyUnderTest(cfg)
    try:
        assert _served_cert(p.port, cafile) == _serial(first)
        second = publish("2026_02", ["localhost"])
        assert p.wait_for(lambda: _served_cert(p.port, cafile) == _serial(second), timeout=10)
        assert p.wait_for(lambda: p.counters().get("sds.server_cert.update_success") == 2)
    finally:
        p.stop()
