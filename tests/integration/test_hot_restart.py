"""Hot restart between two epochs in one process (two Servers, real sockets, real fd passing)."""

import os
import socket
import threading
import urllib.request

import yaml

from proxy.config.load import parse_bootstrap
from proxy.server.instance import Server, ServerOptions
from tests.ports import free_port


def config(port: int, admin_port: int, body: str) -> dict:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "ingress",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router"}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": [{
                "name": "l0", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}]}}


def start(cfg: dict, epoch: int, base_id: int) -> tuple[Server, threading.Thread]:
    b = parse_bootstrap(yaml.safe_load(yaml.safe_dump(cfg)))
    s = Server(b, ServerOptions("<test>", 2, drain_time_s=1.0, hot_restart_epoch=epoch, base_id=base_id,
                                parent_shutdown_time_s=3.0))
    t = threading.Thread(target=s.run, kwargs={"install_signals": False}, daemon=True)
    t.start()
    assert s.wait_ready(10)
    return s, t


def get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def test_child_epoch_takes_listen_sockets_stats_and_admin_then_parent_exits():
    port, admin = free_port(), free_port()
    base_id = 1000 + os.getpid() % 50000
    parent, pt = start(config(port, admin, "A"), 0, base_id)
    parent_fds = {lc: [s.fileno() for s in socks] for lc, socks in parent.listen_sockets.items()}
    try:
        for _ in range(5):
            assert get(port) == "A"
        child, ct = start(config(port, admin, "B"), 1, base_id)
        try:
            # The child serves on the same port with the inherited sockets; by the time it is
            # ready the parent has stopped accepting, so the new config answers at once.
            assert len(child.listen_sockets["l0"]) == len(parent_fds["l0"])
            assert get(port) == "B"
            # The parent drains and exits on its own; then only the child answers.
            pt.join(10)
            assert not pt.is_alive()
            assert get(port) == "B"
            stats = get(admin, "/stats?filter=downstream_rq_total|hot_restart_epoch")
            lines = dict(l.split(": ") for l in stats.strip().splitlines())
            assert int(lines["http.ingress.downstream_rq_total"]) == 7  # 5 on the parent + 2 since, none twice
            assert lines["server.hot_restart_epoch"] == "1"
            assert child.original_start_time == parent.original_start_time
        finally:
            child.request_shutdown()
            ct.join(10)
    finally:
        parent.request_shutdown()
        pt.join(10)


def test_parent_keeps_serving_and_gets_its_admin_back_when_child_fails():
    port, admin = free_port(), free_port()
    base_id = 2000 + os.getpid() % 50000
    parent, pt = start(config(port, admin, "A"), 0, base_id)
    try:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        # The new config moves the admin to a port that is taken: the child takes the listen
        # sockets and makes the parent shut its admin, then fails to bind its own admin.
        b = parse_bootstrap(yaml.safe_load(yaml.safe_dump(config(port, blocker.getsockname()[1], "B"))))
        child = Server(b, ServerOptions("<test>", 1, hot_restart_epoch=1, base_id=base_id))
        try:
            child.run(install_signals=False)
            raise AssertionError("child should have failed")
        except OSError:
            pass
        blocker.close()
        assert get(port) == "A"
        assert parent.state == "LIVE"

        def admin_back():
            try:
                return "LIVE" in get(admin, "/ready")
            except OSError:
                return False
        import time
        deadline = time.monotonic() + 5
        while not admin_back() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admin_back()
    finally:
        parent.request_shutdown()
        pt.join(10)


def two_listener_config(ports: dict[str, int], admin_port: int) -> dict:
    cfg = config(0, admin_port, "x")
    template = cfg["static_resources"]["listeners"][0]
    listeners = []
    for name, port in ports.items():
        hcm = dict(template["filter_chains"][0]["filters"][0]["typed_config"])
        hcm["route_config"] = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": name}}}]}]}
        listeners.append({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                          "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                          "typed_config": hcm}]}]})
    cfg["static_resources"]["listeners"] = listeners
    return cfg


def start_with_path(cfg: dict, epoch: int, path: str) -> tuple[Server, threading.Thread]:
    b = parse_bootstrap(yaml.safe_load(yaml.safe_dump(cfg)))
    s = Server(b, ServerOptions("<test>", 1, drain_time_s=1.0, hot_restart_epoch=epoch,
                                hot_restart_socket_path=path, parent_shutdown_time_s=3.0))
    t = threading.Thread(target=s.run, kwargs={"install_signals": False}, daemon=True)
    t.start()
    assert s.wait_ready(10)
    return s, t


def test_filesystem_socket_path_new_listener_bound_fresh_and_removed_one_closed(tmp_path):
    a, b, c, admin = free_port(), free_port(), free_port(), free_port()
    path = str(tmp_path / "hr")
    parent, pt = start_with_path(two_listener_config({"a": a, "b": b}, admin), 0, path)
    try:
        assert os.path.exists(path + ".0")  # the parent listens on a filesystem socket
        assert get(a) == "a" and get(b) == "b"
        child, ct = start_with_path(two_listener_config({"a": a, "c": c}, admin), 1, path)
        try:
            pt.join(10)
            assert not pt.is_alive()
            assert not os.path.exists(path + ".0")  # removed with the parent
            assert get(a) == "a"       # inherited listen socket
            assert get(c) == "c"       # new in the child: bound fresh
            try:                        # gone from the child's config: closed with the parent
                get(b)
                refused = False
            except OSError:
                refused = True
            assert refused
        finally:
            child.request_shutdown()
            ct.join(10)
    finally:
        parent.request_shutdown()
        pt.join(10)


def test_admin_reports_the_hot_restart_version_the_cli_prints():
    import subprocess
    import sys
    port, admin = free_port(), free_port()
    s, t = start(config(port, admin, "A"), 0, 3000 + os.getpid() % 50000)
    try:
        cli = subprocess.run([sys.executable, "-m", "proxy.server.main", "--hot-restart-version"],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0
        assert get(admin, "/hot_restart_version").strip() == cli.stdout.strip() != ""
    finally:
        s.request_shutdown()
        t.join(10)


def test_parent_connections_count_in_the_childs_gauges_until_the_parent_exits():
    """Envoy's hot restart: the parent's connection gauges (ImportMode Accumulate) add to the
    child's while the parent drains, with server.parent_connections; they leave with it."""
    from tests.integration.clients import RawUpstream, read_request_head

    release = threading.Event()

    def held(sock) -> None:  # answers only when the test says so
        read_request_head(sock)
        release.wait(20)
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")

    up = RawUpstream(held)
    port, admin = free_port(), free_port()
    base_id = 4000 + os.getpid() % 50000
    cfg = config(port, admin, "unused")
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    cfg["static_resources"]["clusters"] = [{
        "name": "up", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": up.port}}}}]}]}}]
    parent, pt = start(cfg, 0, base_id)
    answers: list[str] = []
    client = threading.Thread(target=lambda: answers.append(get(port)), daemon=True)
    client.start()

    def gauges(path_filter: str) -> dict[str, int]:
        text = get(admin, f"/stats?filter={path_filter}")
        return {k: int(v) for k, v in (line.split(": ") for line in text.strip().splitlines())}

    def wait_for(pred) -> bool:
        import time
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return False

    try:
        assert wait_for(lambda: gauges("http.ingress.downstream_rq_active")
                        .get("http.ingress.downstream_rq_active") == 1)  # in flight, on the parent
        child, ct = start(cfg, 1, base_id)
        try:
            # The child serves nothing yet: what its admin shows is the parent's request.
            g = gauges("http.ingress.downstream_(cx|rq)_active|server.parent_connections|"
                       "upstream_rq_active")
            assert g["http.ingress.downstream_rq_active"] == 1, g
            assert g["http.ingress.downstream_cx_active"] == 1, g
            assert g["cluster.up.upstream_rq_active"] == 1, g
            assert g["server.parent_connections"] >= 1, g
            release.set()
            client.join(10)
            assert answers == ["held"]
            pt.join(10)
            assert not pt.is_alive()
            assert wait_for(lambda: gauges("http.ingress.downstream_rq_active|server.parent_connections")
                            == {"http.ingress.downstream_rq_active": 0, "server.parent_connections": 0})
        finally:
            child.request_shutdown()
            ct.join(10)
    finally:
        release.set()
        parent.request_shutdown()
        pt.join(10)
        up.close()


def test_lds_listener_socket_passes_to_the_next_epoch(tmp_path):
    """An LDS listener's sockets go to the next epoch as a static one's do (by address); the
    child's LDS file names the same address and serves on the inherited sockets."""
    port, admin = free_port(), free_port()
    base_id = 1000 + (os.getpid() + 7) % 50000
    lis = config(port, admin, "A")["static_resources"]["listeners"][0]
    lis["enable_reuse_port"] = False  # one shared socket: a fresh bind beside it would fail

    def lds_config(body: str, name: str) -> dict:
        lis["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
            "routes"][0]["direct_response"]["body"]["inline_string"] = body
        lds = tmp_path / f"{name}.yaml"
        lds.write_text(yaml.safe_dump({"resources": [
            {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **lis}]}))
        return {"node": {"id": "n", "cluster": "c"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
                "dynamic_resources": {"lds_config": {"path": str(lds)}}}

    parent, pt = start(lds_config("A", "lds-a"), 0, base_id)
    try:
        assert get(port) == "A"
        child, ct = start(lds_config("B", "lds-b"), 1, base_id)
        try:
            assert child.main_store.counter("listener_manager.lds.update_success").value == 1
            assert len(child.listen_sockets["l0"]) == 1
            assert get(port) == "B"
        finally:
            child.request_shutdown()
            ct.join(10)
    finally:
        parent.request_shutdown()
        pt.join(10)


def test_each_epoch_opens_its_own_ads_stream_and_the_child_takes_the_listener():
    """Hot restart with LDS over ADS: the new epoch starts its own stream, gets its listeners
    (node "epoch1" is served body B, the parent's node "epoch0" body A), takes the parent's
    listen socket by address, and serves; the parent's stream keeps working until it exits."""
    from tests.integration.xds_control_plane import LISTENER, ControlPlane
    cp = ControlPlane()
    port, admin = free_port(), free_port()
    base_id = 1000 + (os.getpid() + 11) % 50000
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}

    def boot(node: str) -> dict:
        return {"node": {"id": node, "cluster": "c"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                    "lds_config": {"ads": {}}},
                "static_resources": {"clusters": [{
                    "name": "xds", "type": "STATIC", "connect_timeout": "1s",
                    "typed_extension_protocol_options": h2,
                    "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": cp.port}}}}]}]}}]}}

    for node, body in (("epoch0", "A"), ("epoch1", "B")):
        lis = config(port, admin, body)["static_resources"]["listeners"][0]
        lis["enable_reuse_port"] = False
        cp.set(LISTENER, "1", [{"@type": LISTENER, **lis}], node=node)
    parent, pt = start(boot("epoch0"), 0, base_id)
    try:
        assert get(port) == "A"
        child, ct = start(boot("epoch1"), 1, base_id)
        try:
            assert child.main_store.counter("listener_manager.lds.update_success").value == 1
            assert child.main_store.gauge("control_plane.connected_state").value == 1
            assert len(child.listen_sockets["l0"]) == 1
            assert get(port) == "B"
            assert cp.streams_opened == 2      # one stream per epoch
        finally:
            child.request_shutdown()
            ct.join(10)
    finally:
        parent.request_shutdown()
        pt.join(10)
        cp.close()
