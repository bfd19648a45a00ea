"""A bug hit while serving one connection costs only that connection: the worker logs and
counts it (`server.worker_<i>.unhandled_exceptions`) and keeps serving everyone else.

The fault is injected by wrapping the route table of the running proxy so that one path
raises, as a bug in routing code would; everything else is real (sockets, upstream, client).
"""

import http.client

from .clients import echo
from .harness import front_proxy_config, static_cluster


def test_exception_in_one_request_closes_only_that_connection(upstream, proxy_factory):
    cfg = front_proxy_config([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                             [static_cluster("backend", upstream.port)])
    p = proxy_factory(cfg, concurrency=1)
    # Swap the worker's route table (its HcmContext holds a reference) for one that fails on /boom.
    ctx = p.server.workers[0].listeners[0].ctx
    real_table = ctx.route_table

    class FaultyTable:
        def route(self, req):
            if req.path_str == "/boom":
                raise RuntimeError("injected bug")
            return real_table.route(req)

    # Posted to the worker: its objects are only touched on its own thread.
    p.server.workers[0].post(lambda: setattr(ctx, "route_table", FaultyTable()))
    assert p.wait_for(lambda: isinstance(ctx.route_table, FaultyTable))
    try:
        # A keep-alive client on another connection, before and after the fault.
        other = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
        other.request("GET", "/before")
        r = other.getresponse()
        assert r.status == 200 and b"/before" in r.read()

        boom = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
        boom.request("GET", "/boom")
        try:
            boom.getresponse()
            raised = False
        except (http.client.RemoteDisconnected, ConnectionResetError):
            raised = True
        assert raised, "the faulty request's connection should be closed"

        other.request("GET", "/after")
        r = other.getresponse()
        assert r.status == 200 and b"/after" in r.read()
        assert echo(p.port, "/fresh")["path"] == "/fresh"
        assert p.wait_for(lambda: p.counters().get("server.worker_0.unhandled_exceptions", 0) == 1)
    finally:
        p.server.workers[0].post(lambda: setattr(ctx, "route_table", real_table))
