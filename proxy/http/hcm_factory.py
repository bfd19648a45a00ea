"""Builds HTTP connection managers for a listener's filter chain.

`HcmFactory` is made once per HCM config on the main thread (route table compiled, access
loggers opened; all immutable or internally locked) and shared by every worker.
`HcmContext` is the per-worker part: stat handles, the worker (clusters, dispatcher, rng).
Must not: hold per-connection state.
"""

from __future__ import annotations

import os

from ..network.address import node_address
from ..router.table import RouteTable
from .codec import make_server_codec
from .codec.http1_server import Http1ServerCodec
from .codec.http2_server import (PREFACE, Http2CodecStats, Http2Options, Http2ServerCodec,
                                 ENGINES)
from .conn_manager import ConnectionManager
from .filter_chain_plan import ChainPlans
from .h2_keepalive import Keepalive
from .headers import HOP_BY_HOP
from .request_headers import HOP_BY_HOP_UPGRADE, address_rules, request_fields_removed
from .http_stats import HcmStats
from .path_normalize import compile_normalization

__all__ = ["HcmFactory", "HcmContext", "server_codec_factory"]


def default_engine() -> str:
    """The HTTP/2 server engine FTPROXY_H2_CODEC names ("fast", ours, unless it says "h2",
    the reference); read when an HCM's codec factory is built (main thread)."""
    engine = os.environ.get("FTPROXY_H2_CODEC", "fast") or "fast"
    if engine not in ENGINES:
        raise ValueError(f"FTPROXY_H2_CODEC={engine!r}: expected one of {', '.join(ENGINES)}")
    return engine


def server_codec_factory(config, codec_impl: str, response_fields, http2_stats=None):
    """The ServerCodecFactory (codec/protocol.py) for an HCM: the codec a connection speaks,
    chosen from its first bytes as Envoy's codec_type says: HTTP2 always HTTP/2 (h2c, prior
    knowledge); AUTO HTTP/2 when TLS negotiated ALPN "h2" or the bytes begin the client
    connection preface, else HTTP/1.1;
    HTTP1 always HTTP/1.1 (a preface there is an unsupported version: 426).
    HTTP/2's engine: ours, or h2's (the reference) when FTPROXY_H2_CODEC=h2."""
    max_kb = config.max_request_headers_kb
    max_count = config.max_headers_count
    codec_type = config.codec_type
    h2 = config.http2_protocol_options
    h2_options = Http2Options(h2.max_concurrent_streams, h2.initial_stream_window_size,
                              h2.initial_connection_window_size, max_kb * 1024, h2.hpack_table_size,
                              h2.max_outbound_frames, h2.max_outbound_control_frames,
                              h2.max_consecutive_inbound_frames_with_empty_payload,
                              h2.max_inbound_priority_frames_per_stream,
                              h2.max_inbound_window_update_frames_per_data_frame_sent,
                              h2.allow_connect)

    engine = default_engine()
    trailers = config.http_protocol_options.enable_trailers
    keepalive = h2.connection_keepalive if h2.connection_keepalive is not None and \
        h2.connection_keepalive.interval else None

    def make(first_bytes: bytes, transport, callbacks):
        if codec_type == "HTTP2" or (codec_type == "AUTO" and (
                (len(first_bytes) >= 3 and PREFACE.startswith(first_bytes[:len(PREFACE)]))
                or transport.transport_socket.protocol() == "h2")):
            codec = Http2ServerCodec(transport, callbacks, h2_options, response_fields, http2_stats,
                                     engine)
            if keepalive is not None:
                codec.keepalive = Keepalive(keepalive, transport.dispatcher, codec.send_ping,
                                            codec.on_keepalive_timeout, lambda: not transport.closed)
            return codec
        parser = make_server_codec(codec_impl, max_request_headers_kb=max_kb,
                                   max_headers_count=max_count, response_fields=response_fields)
        return Http1ServerCodec(parser, transport, callbacks, trailers)
    return make


class HcmFactory:
    def __init__(self, config, codec_impl: str = "fast", listener_stat_prefix: str | None = None,
                 node=None, tracing=None, rds=None, grpc_logs=None) -> None:
        """`rds`: the RDS provider (proxy/xds/rds.py) of an HCM with `rds`: its current table
        now, newer ones posted to each worker's contexts (Worker.set_route_table).
        `grpc_logs`: the server's gRPC access-log service (proxy/access_log/grpc_log.py)."""
        self.config = config
        self.tracing = tracing  # proxy.tracing.tracer.HcmTracing when the HCM traces
        # add_user_agent: the node's cluster (user-agent when the request has none, and
        # x-envoy-downstream-service-cluster) and its id (x-envoy-downstream-service-node).
        self.user_agent = None
        if config.add_user_agent:
            self.user_agent = ((getattr(node, "cluster", "") or "").encode(),
                               (getattr(node, "id", "") or "").encode())
        self.codec_impl = codec_impl
        self.listener_stat_prefix = listener_stat_prefix  # for listener.<prefix>.http.<hcm>.*
        self.route_table = rds.table if rds is not None else RouteTable(config.route_config)
        self.rds_key = rds.key if rds is not None else None
        self.access_loggers = tuple(a.create(grpc_logs=grpc_logs) for a in config.access_logs)
        # The HTTP filter chain: each filter's extension makes its runtime factory. With RDS
        # any filter may be switched by a later route table: each is looked up per route.
        switchable = config.route_config.filters_switched_per_route
        self.filter_factories = tuple(
            (f.extension.factory(f.config, f.name), f.disabled,
             f.disabled or f.name in switchable or rds is not None)
            for f in config.http_filters)
        self.upgrades = frozenset(u.upgrade_type for u in config.upgrade_configs if u.enabled)
        self.server_name = config.server_name.encode()
        # What x-forwarded-for gets for a loopback peer (use_remote_address): this host's
        # address, as Envoy appends its local_info address there.
        appends = (config.use_remote_address and not config.skip_xff_append
                   or bool(config.original_ip_detection))  # (an xff extension may append)
        self.local_address = node_address().encode() if appends else b""
        self.via = config.via.encode() if config.via else b""
        # What a request loses before routing (request_headers.py): for an upgrade request
        # the hop-by-hop fields but Connection and Upgrade.
        internal_only = config.route_config.internal_only_headers
        xfcc = config.forward_client_cert_details
        self.request_headers_removed = request_fields_removed(
            HOP_BY_HOP, config.use_remote_address, internal_only, xfcc)
        self.upgrade_request_headers_removed = request_fields_removed(
            HOP_BY_HOP_UPGRADE, config.use_remote_address, internal_only, xfcc)
        # Who the client is behind other proxies, and what an internal request keeps.
        self.address_rules = address_rules(config, xfcc)
        # Fields the codec writes on every response in place of the head's own: Envoy's
        # server_header_transformation OVERWRITE (the default) sets `server` so.
        self.response_fields = (((b"server", self.server_name),)
                                if config.server_header_transformation == "OVERWRITE" else ())
        # A new stream's first deadline, from its start: the earlier of stream_idle_timeout
        # and request_timeout (those set), or 0 when neither is.
        self.first_stream_timeout = min([t for t in (config.stream_idle_timeout,
                                                     config.request_timeout) if t], default=0)
        # Path and host normalisation (path_normalize.py), None when no option asks for any.
        self.head_normalization = compile_normalization(config)
    def codec_factory_for(self, worker):
        return server_codec_factory(self.config, self.codec_impl, self.response_fields,
                                    http2_stats=Http2CodecStats(worker.stats.scope("http2")))

    def for_worker(self, worker) -> HcmContext:
        return HcmContext(self, worker)


class HcmContext:
    __slots__ = ("config", "codec_impl", "route_table", "access_loggers", "filter_factories", "upgrades",
                 "server_name", "local_address", "via", "request_headers_removed", "address_rules",
                 "upgrade_request_headers_removed", "first_stream_timeout", "user_agent",
                 "response_fields", "codec_factory", "worker", "stats", "tracer", "filter_chain_plans",
                 "head_normalization", "__weakref__")

    def __init__(self, factory: HcmFactory, worker) -> None:
        self.config = factory.config
        self.codec_impl = factory.codec_impl
        self.route_table = factory.route_table
        self.access_loggers = tuple(a.for_worker(worker) for a in factory.access_loggers)
        self.upgrades = factory.upgrades
        self.server_name = factory.server_name
        self.local_address = factory.local_address
        self.via = factory.via
        self.request_headers_removed = factory.request_headers_removed
        self.upgrade_request_headers_removed = factory.upgrade_request_headers_removed
        self.address_rules = factory.address_rules
        self.first_stream_timeout = factory.first_stream_timeout
        self.head_normalization = factory.head_normalization
        self.user_agent = factory.user_agent
        self.response_fields = factory.response_fields
        # Per worker: the HTTP/2 codec counts Envoy's http2.* stats in this worker's store.
        self.codec_factory = factory.codec_factory_for(worker)
        self.worker = worker
        self.stats = HcmStats(worker.stats, factory.config.stat_prefix, factory.listener_stat_prefix)
        # The worker's tracer (proxy/tracing/tracer.py), None when the HCM does not trace.
        self.tracer = (factory.tracing.for_worker(worker, factory.config.stat_prefix)
                       if factory.tracing is not None else None)
        # (per-worker factory, disabled by default, may a route switch it on or off)
        self.filter_factories = tuple((f.for_worker(self), disabled, switchable)
                                      for f, disabled, switchable in factory.filter_factories)
        # The chains' shapes, learnt per worker (filter_chain_plan.py).
        self.filter_chain_plans = ChainPlans(self.filter_factories)
        if factory.rds_key is not None:  # RDS: this worker swaps route_table on updates
            worker.register_rds_context(factory.rds_key, self)

    def route_upgrade_allowed(self, action, upgrade: bytes) -> bool:
        """Envoy: a route's upgrade_configs override the HCM's; an upgrade neither enables
        is answered 403."""
        kind = upgrade.decode("latin-1").lower()
        if action is not None:  # (None: no route, or one without a route action)
            for name, enabled in action.upgrade_configs:
                if name == kind:
                    return enabled
        return kind in self.upgrades

    def new_connection(self, sock, remote, local, conn_id, buffer_limit, on_closed,
                       info=None) -> ConnectionManager:
        return ConnectionManager(self, sock, remote, local, conn_id, buffer_limit, on_closed, info)
