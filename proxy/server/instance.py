"""The server: composition root. Builds everything from a Bootstrap and runs the main thread.

Main thread owns: the bootstrap, the cluster manager (DNS), stats merging, signals and the
lifecycle; the admin server answers on its own thread ("admin") and only reads immutable
snapshots or merged stats. Workers get listen sockets and cluster snapshots via `post()`.
xDS (files and gRPC streams, proxy/xds/): CDS and EDS feed the cluster manager, LDS goes
through dynamic_listeners.py, RDS tables are posted to the workers' HCM contexts; file
subscriptions are polled on the main thread's one-second tick, gRPC streams run on the main
loop, and start-up waits for their first answers (XdsManager.wait_initial).

Lifecycle: INITIALIZING -> LIVE -> DRAINING (SIGTERM/SIGINT or /quitquitquit: stop accepting,
finish in-flight requests, bounded by drain_time) -> exit 0.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable

from .. import __version__
from ..access_log.grpc_log import GrpcAccessLogService
from ..access_log.sinks import DEFAULT_SINKS
from ..admin.server import AdminServer
from ..http.hcm_config import HcmConfig
from ..http.hcm_factory import HcmFactory
from ..network.address import node_address
from ..stats.server_stats import ServerStats
from ..stats.sink import SAMPLE_SINKS, SinkContext
from ..network.filter_chain_match import FilterChainMatcher
from ..network.listener import ListenerFactory, bind_listen_sockets
from ..network.udp.listener import bind_udp_sockets
from ..threads.shared_count import SharedCount
from ..network.filter_chain import NetworkFilterChainFactory
from ..network.tcp_proxy import TcpProxyFactory
from ..network.tcp_proxy_config import TcpProxyConfig
from ..stats.store import StatsRegistry
from ..threads.dispatcher import Dispatcher
from ..threads.worker import Worker
from ..tls.watcher import SecretWatcher
from ..threads.server_health import ServerHealth
from ..tracing.exporter import Exporters, LocalInfo
from ..tracing.tracer import HcmTracing
from ..upstream.cluster_manager import ClusterManager
from ..xds.cds import CdsApplier
from ..xds.lds import LdsApplier
from ..xds.rds import RouteConfigProvider
from ..router.table import RouteTable
from ..xds.subscription import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from .dynamic_listeners import DynamicListeners, listener_transports
from ..xds.sds import XdsSecretProvider
from ..xds.xds_manager import XdsManager
from .admin_context import ServerAdminContext

__all__ = ["Server", "ServerOptions", "gil_enabled"]

log = logging.getLogger("ftproxy.server")


def gil_enabled() -> bool:
    f = getattr(sys, "_is_gil_enabled", None)
    return True if f is None else bool(f())


class ServerOptions:
    def __init__(self, config_path: str = "", concurrency: int | None = None, drain_time_s: float = 600.0,
                 codec: str = "fast", log_level: str = "info", hot_restart_epoch: int = 0,
                 base_id: int = 0, hot_restart_socket_path: str | None = None,
                 parent_shutdown_time_s: float = 900.0, disable_hot_restart: bool = False,
                 on_ready: Callable[[dict], None] | None = None, drain_strategy: str = "gradual") -> None:
        self.config_path = config_path
        self.concurrency = max(1, concurrency if concurrency is not None else (os.cpu_count() or 1))
        self.drain_time_s = drain_time_s
        self.codec = codec
        self.log_level = log_level
        self.hot_restart_epoch = hot_restart_epoch
        self.base_id = base_id
        self.hot_restart_socket_path = hot_restart_socket_path
        self.parent_shutdown_time_s = parent_shutdown_time_s
        self.disable_hot_restart = disable_hot_restart
        self.drain_strategy = drain_strategy   # LDS listener drains: "gradual" or "immediate"
        self.on_ready = on_ready  # called on main with {"listeners": {...}, "admin": "ip:port"}


def _stats_registry(bootstrap) -> StatsRegistry:
    """The registry as the bootstrap's stats_config asks: its tag extraction (for Prometheus and
    dog_statsd), its stats_matcher (rejected stats are never reported) and histogram buckets."""
    sc = bootstrap.stats_config if hasattr(bootstrap, "stats_config") else None
    # A statsd sink sends every histogram sample: only then do histograms keep them.
    keep = any(ext.name in SAMPLE_SINKS for ext, _ in getattr(bootstrap, "stats_sinks", ()))
    if sc is None:
        return StatsRegistry(keep_samples=keep)
    matcher = sc.stats_matcher
    return StatsRegistry(tag_producer=sc.tag_producer(),
                         rejects=matcher.rejects if matcher is not None else None,
                         buckets_for=sc.buckets_for if sc.histogram_bucket_settings else None,
                         keep_samples=keep)


class Server:
    def __init__(self, bootstrap, options: ServerOptions) -> None:
        self.bootstrap = bootstrap
        self.options = options
        self.state = "INITIALIZING"
        self.start_time = time.time()
        self.start_monotonic = time.monotonic()   # server.initialization_time_ms runs from here
        self.original_start_time = self.start_time  # first epoch's start (server.uptime)
        self.epoch = options.hot_restart_epoch
        self.hr_parent = None   # HotRestartParent: we listen for the next epoch
        self.hr_child = None    # HotRestartChild: link to the previous epoch
        self.main = Dispatcher("main")
        self.stats = _stats_registry(bootstrap)
        self.main_store = self.stats.new_store("main")
        self.server_stats = ServerStats(self.main_store)
        self.workers: list[Worker] = []
        self.listen_sockets: dict[str, list] = {}
        self.listener_addresses: dict[str, tuple[str, int]] = {}
        self.admin: AdminServer | None = None
        # /healthcheck/fail state, shared with the workers (threads/server_health.py).
        self.health = ServerHealth(getattr(getattr(bootstrap, "node", None), "cluster", "") or "")
        self.cluster_manager: ClusterManager | None = None
        self.secret_watcher: SecretWatcher | None = None
        self._cds_secrets_timer = None   # while CDS clusters wait for their xDS secrets
        self.xds = XdsManager(self.main_store)   # xDS subscriptions (main thread)
        self.load_reporter = None                # cluster_manager.load_stats_config (main thread)
        self.cds = None                          # the CDS subscription's handle, if any
        self.lds = None                          # the LDS subscription's handle, if any
        self.lds_listeners: dict = {}            # LDS listeners in force, by name (main thread)
        self.lds_warming: dict = {}              # LDS listeners waiting for their routes, by name
        self.rds_providers: dict = {}            # RDS route tables, by (source, name)
        self.stats_sinks: list = []
        self.span_exporters: Exporters | None = None  # HTTP tracing's span export (main)
        self.grpc_access_logs: GrpcAccessLogService | None = None  # gRPC access loggers (main)
        self._flush_timer = None
        self._tick_timer = None
        self._exit_code = 0
        self._ready = threading.Event()
        self._drain_started = False
        self._stopped_listeners: frozenset[str] = frozenset()  # by /drain_listeners
        # Counter values at the last admin /reset_counters (admin_context.py), or empty.
        self.counter_baseline: dict[str, int] = {}
        self._global_limit = None
        self._listener_limits: dict = {}  # name -> (SharedCount, limit) or None (main thread)

    @property
    def healthcheck_failed(self) -> bool:
        return self.health.failed

    @healthcheck_failed.setter
    def healthcheck_failed(self, failed: bool) -> None:
        self.health.failed = failed

    # -- public ------------------------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        """Start everything and run the main loop on the calling thread until shut down."""
        try:
            self.start()
        except BaseException:
            self._teardown()
            raise
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.main.post(self.shutdown))
            # Envoy: SIGUSR1 reopens the access logs (log rotation), like admin /reopen_logs.
            signal.signal(signal.SIGUSR1, lambda *_: self.main.post(self.reopen_logs))
        try:
            self.main.run()
        finally:
            self._teardown()
        return self._exit_code

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def shutdown(self) -> None:
        """Drain and exit (main thread; others call `request_shutdown`)."""
        self._begin_drain(close_idle=True, limit=self.options.drain_time_s)

    def _begin_drain(self, close_idle: bool, limit: float) -> None:
        if self._drain_started:
            return
        self._drain_started = True
        self.main_store.gauge("server.state").set(1)  # Envoy: 0 LIVE, 1 DRAINING
        self.state = "DRAINING"
        log.info("draining %d worker(s) for at most %.0fs", len(self.workers), limit)
        remaining = [len(self.workers)]

        def worker_idle() -> None:  # called on each worker thread, hops back to main
            self.main.post(one_done)

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self.main.exit()

        for w in self.workers:
            w.post(lambda w=w: w.start_drain(worker_idle, close_idle))
        if not self.workers:
            self.main.exit()
        self.main.call_later(limit, self.main.exit)

    def drain_listeners(self, inbound_only: bool, graceful: bool, skip_exit: bool) -> None:
        """Admin /drain_listeners (main thread), as Envoy 1.40 does it: the listeners (only
        those not OUTBOUND with `inbound_only`) drain their connections; without `graceful`
        they stop accepting now, with it they keep accepting (draining what they accept) for
        the drain time and stop then, unless `skip_exit`. The process stays up and LIVE."""
        static = {lc.name: lc for lc in self.bootstrap.listeners}
        names = frozenset(
            name for name in self.listener_addresses
            if not (inbound_only and getattr(static.get(name) or getattr(
                self.lds_listeners.get(name), "config", None), "traffic_direction", "") == "OUTBOUND"))
        self._drain_listeners_on_workers(names, stop=not graceful)
        if graceful and not skip_exit:
            self.main.call_later(self.options.drain_time_s,
                                 lambda: self._drain_listeners_on_workers(names, stop=True))

    def _drain_listeners_on_workers(self, names: frozenset, stop: bool) -> None:
        if stop:
            names = frozenset(n for n in names if n not in self._stopped_listeners)
            self._stopped_listeners |= names
            self.main_store.counter("listener_manager.listener_stopped").inc(len(names))
        remaining = [len(self.workers)]

        def all_done() -> None:  # main thread: the workers let go; close what main holds
            for name in names:
                for sock in self.listen_sockets.pop(name, ()):
                    sock.close()

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and stop:
                all_done()

        for w in self.workers:
            w.post(lambda w=w: w.drain_listeners(names, stop, lambda: self.main.post(one_done)))
        if not self.workers and stop:
            all_done()

    def request_shutdown(self) -> None:
        self.main.post(self.shutdown)

    @staticmethod
    def reopen_logs() -> None:
        """Reopen every access log file (after log rotation): SIGUSR1 and admin /reopen_logs.
        Lines written before are flushed to the old file first. Any thread: the sinks lock."""
        log.info("reopening access logs")
        DEFAULT_SINKS.reopen_all()

    # -- start-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        opts = self.options
        log.info("ftproxy %s starting: python %s (%s), GIL %s, concurrency %d, config %s", __version__,
                 platform.python_version(), sys.implementation.name,
                 "enabled" if gil_enabled() else "disabled", opts.concurrency, opts.config_path or "-")
        if sysconfig.get_config_var("Py_GIL_DISABLED") and gil_enabled():
            # A free-threaded build running with the GIL: an extension module without
            # Py_mod_gil support re-enabled it at import (DESIGN.md §2), or PYTHON_GIL=1.
            log.warning("free-threaded CPython build, but the GIL is enabled: an imported extension "
                        "re-enabled it (or PYTHON_GIL=1); workers will not run in parallel")
        st = self.main_store
        st.gauge("server.concurrency").set(opts.concurrency)
        st.gauge("server.hot_restart_epoch").set(opts.hot_restart_epoch)
        st.gauge("server.live").set(0)
        self.span_exporters = Exporters(self.main, self.main_store, self._local_info())
        self.grpc_access_logs = GrpcAccessLogService(self.main, self.main_store, self.bootstrap.node,
                                                     self._cluster_hosts, self._cluster_config)
        factories = self._build_filter_factories()
        limit = self.bootstrap.global_downstream_max_connections
        global_limit = (SharedCount(), limit) if limit is not None else None
        # Our own hot-restart socket first (as Envoy): a base-id clash fails before anything serves.
        if not opts.disable_hot_restart:
            from ..hotrestart.messages import socket_address
            from ..hotrestart.parent import HotRestartParent
            address = socket_address(opts.base_id, self.epoch, opts.hot_restart_socket_path)
            try:
                self.hr_parent = HotRestartParent(self, address)
            except OSError as e:
                raise OSError(e.errno, f"unable to bind the hot restart socket {address!r} (base id "
                                       f"{opts.base_id}, epoch {self.epoch}): {e.strerror}; another "
                                       f"ftproxy uses this base id? pass --base-id") from None
        self._connect_to_parent()
        for lc in self.bootstrap.listeners:
            socks = self._take_or_bind(lc)
            self.listen_sockets[lc.name] = socks
            self.listener_addresses[lc.name] = socks[0].getsockname()[:2]
        if self.hr_child is not None:
            self.hr_child.fetch_stats()
            self._on_parent_stats(self.hr_child.parent_counters, self.hr_child.parent_gauges)
            self.original_start_time = self.hr_child.original_start_time or self.start_time
        self.workers = [Worker(i, self.stats.new_store(f"worker_{i}"), opts.codec)
                        for i in range(opts.concurrency)]
        for w in self.workers:
            w.server_health = self.health   # read by the health_check HTTP filter
        self.cluster_manager = ClusterManager(self.bootstrap.clusters, self._publish_clusters,
                                              stats=self.main_store, dispatcher=self.main,
                                              eds_subscribe=self.xds.subscribe_eds)
        self.cluster_manager.initialize()
        self.span_exporters.start(self.cluster_manager.snapshots)
        dynamic = self.bootstrap.dynamic_resources
        self.xds.configure(self.main, self.bootstrap.node, dynamic.ads_config, self._cluster_hosts,
                           self.cluster_manager.batch, self._cluster_config)
        # Secrets (static, file and xDS SDS) of the bootstrap's listeners and clusters; xDS ones
        # are subscribed now and waited for below, as Envoy's init manager holds start-up.
        self.secret_watcher = SecretWatcher(
            [ts for lc in self.bootstrap.listeners for ts in listener_transports(lc)]
            + [c.transport_socket for c in self.bootstrap.clusters], self.main_store,
            xds=lambda source: XdsSecretProvider(source, self.xds.subscribe))
        self.cluster_manager.on_transport = self._on_cluster_transport
        self.xds.wait_initial()
        if dynamic.cds_config is not None:  # CDS first, as Envoy: listeners may route to them
            self.cds = self.xds.subscribe(dynamic.cds_config, CLUSTER_TYPE,
                                          CdsApplier(self.cluster_manager), "cluster_manager.cds", "cds")
            self.xds.wait_initial()   # a gRPC CDS (and its EDS) warms before LDS, as Envoy
        self._global_limit = global_limit
        for lc in self.bootstrap.listeners:
            self._post_listener(lc, self.listen_sockets[lc.name], factories[lc.name])
        if dynamic.lds_config is not None:  # after CDS (and static listeners), as Envoy
            self.lds = self.xds.subscribe(dynamic.lds_config, LISTENER_TYPE,
                                          LdsApplier(DynamicListeners(self)), "listener_manager.lds", "lds")
            self.xds.wait_initial()   # a gRPC LDS (and its RDS) before the workers start
            if self.lds_warming:      # their routes came: activated on the next 10 ms check
                self.main.run_until(lambda: not self.lds_warming, 1.0)
        if self.hr_child is not None:
            self.hr_child.shutdown_parent_admin()
        # The admin binds before any worker accepts: if it fails, no connection is lost with us.
        self.restart_admin()
        self._warm_clusters()
        for w in self.workers:
            w.start()
        # Ready means every worker has run what was posted to it so far (listeners registered,
        # clusters installed): one event per worker, posted last.
        started = [threading.Event() for _ in self.workers]
        for w, ev in zip(self.workers, started):
            w.post(ev.set)
        for ev in started:
            if not ev.wait(10.0):
                raise RuntimeError("a worker did not start within 10 s")
        st.gauge("listener_manager.workers_started").set(1)  # Envoy: a gauge, 1 once started
        # Envoy's listener gauges from the start (LDS keeps total_listeners_active current).
        st.gauge("listener_manager.total_listeners_active").set(
            len(self.bootstrap.listeners) + len(self.lds_listeners))
        for idle in ("total_listeners_warming", "total_listeners_draining", "total_filter_chains_draining"):
            st.gauge(f"listener_manager.{idle}").set(0)
        if self.hr_child is not None:
            self.hr_child.drain_parent(self.main, self._on_parent_stats)
        for name, (host, port) in self.listener_addresses.items():
            log.info("listener %s on %s:%d", name, host, port)
        b = self.bootstrap
        self._tick_timer = self.main.create_timer(self._tick)
        self._tick_timer.enable(1.0)
        # Stats sinks, flushed on the main thread every stats_flush_interval (as Envoy).
        self.stats_sinks = [ext.factory(config, ext.name) for ext, config in b.stats_sinks]
        sink_context = SinkContext(self.main, self.main_store, b.node, self._cluster_hosts,
                                   self._cluster_config, time.time)
        for sink in self.stats_sinks:
            start = getattr(sink, "start", None)   # a ConnectedSink (proxy/stats/sink.py)
            if start is not None:
                start(sink_context)
        if self.stats_sinks:
            self._flush_timer = self.main.create_timer(self._flush_sinks)
            self._flush_timer.enable(b.stats_flush_interval)
        self._start_load_reporter()
        self.state = "LIVE"
        st.gauge("server.live").set(1)
        st.gauge("server.state").set(0)
        self.server_stats.initialized(time.monotonic() - self.start_monotonic)
        self._update_uptime()
        # Config, route tables and modules live for the whole process: move them out of the
        # cyclic GC's generations so collections only scan what requests allocate.
        gc.collect()
        gc.freeze()
        self._ready.set()
        if opts.on_ready is not None:
            opts.on_ready(self.ready_info())

    def ready_info(self) -> dict:
        return {"epoch": self.epoch, "pid": os.getpid(),
                "listeners": {n: f"{h}:{p}" for n, (h, p) in self.listener_addresses.items()},
                "admin": f"{self.admin.host}:{self.admin.port}" if self.admin is not None else None}

    # -- hot restart ---------------------------------------------------------------------------------
    def _connect_to_parent(self) -> None:
        opts = self.options
        if self.epoch == 0 or opts.disable_hot_restart:
            return
        from ..hotrestart.child import HotRestartChild
        from ..hotrestart.messages import socket_address
        address = socket_address(opts.base_id, self.epoch - 1, opts.hot_restart_socket_path)
        try:
            self.hr_child = HotRestartChild(address, self.epoch)
        except (FileNotFoundError, ConnectionRefusedError):
            log.warning("hot restart: no parent epoch %d is listening; starting fresh", self.epoch - 1)
            return
        log.info("hot restart: connected to parent epoch %s", self.hr_child.parent_epoch)

    def _take_or_bind(self, lc, listen: bool = True) -> list:
        """The parent's listen sockets for this address if it has them, else fresh ones
        (`listen=False`: fresh ones are bound only, see bind_listen_sockets)."""
        opts = self.options
        socks = []
        # A UDP listener binds its own SO_REUSEPORT sockets beside the parent's (not handed over).
        if self.hr_child is not None and lc.port != 0 and lc.protocol == "TCP":
            socks = self.hr_child.listen_sockets(f"{lc.address}:{lc.port}")
            if socks:
                log.info("hot restart: took %d listen socket(s) for %s:%d", len(socks), lc.address, lc.port)
        if not socks and lc.protocol == "UDP":
            return bind_udp_sockets(lc.address, lc.port, opts.concurrency, lc.enable_reuse_port,
                                    name=lc.name)
        if not socks:
            return bind_listen_sockets(lc.address, lc.port, opts.concurrency, lc.enable_reuse_port,
                                       lc.tcp_backlog_size, name=lc.name, listen=listen)
        if lc.enable_reuse_port and len(socks) < opts.concurrency:
            port = socks[0].getsockname()[1]
            socks += bind_listen_sockets(lc.address, port, opts.concurrency - len(socks), True,
                                         lc.tcp_backlog_size, name=lc.name, listen=listen)
        return socks

    def _on_parent_stats(self, counters: dict, gauges: dict) -> None:
        """The parent's latest stats: its counters continue in ours; its connection gauges
        count toward ours while it lives (empty `gauges` once it exited)."""
        from ..hotrestart.child import parent_gauge_carryover
        self.stats.set_carryover(counters, parent_gauge_carryover(gauges))

    # ParentSide (messages.ParentLogic), main thread:
    def listen_fds(self, address: str) -> list[int]:
        for lc in [*self.bootstrap.listeners, *(e.config for e in self.lds_listeners.values())]:
            # Only TCP listen sockets are handed over (a UDP listener of the next epoch binds
            # its own beside ours: _take_or_bind).
            if lc.protocol == "TCP" and f"{lc.address}:{lc.port}" == address and lc.name in self.listen_sockets:
                return [s.fileno() for s in self.listen_sockets[lc.name] if s.fileno() >= 0]
        return []

    def stats_counters(self) -> tuple[dict, dict]:
        snap = self.stats.snapshot()
        return dict(snap.counters), dict(snap.gauges)

    def stop_admin(self) -> None:
        if self.admin is not None:
            self.admin.stop()
            self.admin = None

    def restart_admin(self) -> None:
        if self.admin is None and self.bootstrap.admin is not None and not self._drain_started:
            a = self.bootstrap.admin
            self.admin = AdminServer(ServerAdminContext(self), a.address, a.port)
            self.admin.start()

    def start_parent_drain(self) -> None:
        """The next epoch took over: stop accepting, finish in-flight requests (keep-alive
        clients get `connection: close`), close idle connections after drain_time, and exit
        when idle or at parent_shutdown_time."""
        opts = self.options
        self._begin_drain(close_idle=False, limit=opts.parent_shutdown_time_s)
        # Return only once every worker has stopped accepting (each ran start_drain, posted
        # before this marker): the child reports "ready" after our answer, and from then on
        # only it accepts, so a reload's new config is in force when `proxyctl reload` returns.
        stopped = [threading.Event() for _ in self.workers]
        for w, ev in zip(self.workers, stopped):
            w.post(ev.set)
        for ev in stopped:
            ev.wait(5.0)

    def _build_filter_factories(self) -> dict[str, ListenerFactory]:
        """Per listener (main thread, once): its listener filters' factories, each filter
        chain's factory (the default chain last) and the immutable match tree over them."""
        return {lc.name: self.listener_factory(lc) for lc in self.bootstrap.listeners}

    def listener_factory(self, lc) -> ListenerFactory:
        """One listener's ListenerFactory (main thread; also for LDS listeners); a UDP
        listener's: its udp_proxy filter's factory (network/udp/listener.py)."""
        if lc.protocol == "UDP":
            lf = lc.listener_filters[0]
            return lf.extension.factory(lf.config, lf.name)
        chains = list(lc.filter_chains)
        matcher = FilterChainMatcher([c.filter_chain_match for c in chains],
                                     lc.default_filter_chain is not None)
        if lc.default_filter_chain is not None:
            chains.append(lc.default_filter_chain)
        return ListenerFactory(
            tuple(lf.extension.factory(lf.config, lf.name) for lf in lc.listener_filters),
            matcher, tuple((self._chain_factory(lc, chain), chain) for chain in chains),
            tuple(a.create(grpc_logs=self.grpc_access_logs) for a in lc.access_logs))

    def _post_listener(self, lc, socks: list, factory: ListenerFactory) -> None:
        """Hand a listener's sockets to the workers (main thread; static and LDS listeners)."""
        if lc.protocol == "UDP":
            # One socket per worker (reuse_port: the kernel keeps a source on one socket), or
            # the one socket on the first worker: its sessions must not split over two workers.
            for i, sock in enumerate(socks):
                w = self.workers[i % len(self.workers)]
                w.post(lambda w=w, sock=sock: w.add_udp_listener(lc, sock, factory))
            return
        for w, sock, shared in self.listener_placement(lc, socks):
            w.post(lambda w=w, sock=sock, shared=shared: w.add_listener(
                lc, sock, factory, shared, self._global_limit, self._listener_limit(lc.name)))

    def listener_placement(self, lc, socks: list) -> list:
        """(worker, socket, shared) for each ActiveListener a listener gets: without
        reuse_port one shared socket registered in every worker; with it one socket per
        worker (sockets inherited beyond that are spread over the workers too, so no accept
        queue is left unserved)."""
        if not lc.enable_reuse_port:
            return [(w, socks[0], True) for w in self.workers]
        return [(self.workers[i % len(self.workers)], sock, False) for i, sock in enumerate(socks)]

    def _listener_limit(self, name: str):
        limits = self._listener_limits
        if name not in limits:
            own = self.bootstrap.listener_connection_limits.get(name)
            limits[name] = (SharedCount(), own) if own is not None else None
        return limits[name]

    def _chain_factory(self, lc, chain):
        terminal = chain.filters[-1].config
        if isinstance(terminal, HcmConfig):
            tracing = None
            if terminal.tracing is not None:
                router = terminal.http_filters[-1].config  # the router is always last
                tracing = HcmTracing(terminal.tracing,
                                     self.span_exporters.exporter_for(terminal.tracing.provider),
                                     lc.traffic_direction == "OUTBOUND", router.start_child_span)
            rds = self._rds_provider(terminal) if terminal.rds is not None else None
            factory = HcmFactory(terminal, self.options.codec, lc.stat_prefix, self.bootstrap.node,
                                 tracing, rds, self.grpc_access_logs)
        elif isinstance(terminal, TcpProxyConfig):
            factory = TcpProxyFactory(terminal, grpc_logs=self.grpc_access_logs)
        elif chain.filters[-1].extension is not None and chain.filters[-1].extension.factory is not None:
            # Another terminal filter (redis_proxy): its extension's factory makes its runtime.
            factory = chain.filters[-1].extension.factory(terminal, chain.filters[-1].name)
        else:  # config parsing only admits the terminal filters above
            raise RuntimeError(f"listener {lc.name}: unsupported terminal filter {chain.filters[-1].name}")
        before = chain.filters[:-1]
        if before:  # filters before the terminal run when a connection is accepted
            factory = NetworkFilterChainFactory(
                tuple(nf.extension.factory(nf.config, nf.name) for nf in before), factory)
        return factory

    def _rds_provider(self, hcm: HcmConfig) -> RouteConfigProvider:
        """The route table provider of an HCM with `rds`, shared by the HCMs naming the same
        source, route configuration and stat prefix; subscribed (the file read) when made."""
        rds = hcm.rds
        key = (rds.config_source, rds.route_config_name, hcm.stat_prefix)
        provider = self.rds_providers.get(key)
        if provider is None:
            prefix = f"http.{hcm.stat_prefix}.rds.{rds.route_config_name}"
            provider = RouteConfigProvider(key, rds.route_config_name, RouteTable(hcm.route_config),
                                           self.main_store, prefix, self._publish_route_table)
            self.rds_providers[key] = provider
            provider.subscription = self.xds.subscribe(rds.config_source, ROUTE_TYPE, provider, prefix,
                                                       f"rds {rds.route_config_name}",
                                                       names=(rds.route_config_name,))
        return provider

    def _publish_route_table(self, key: tuple, table) -> None:
        for w in self.workers:
            w.post(lambda w=w: w.set_route_table(key, table))

    def _on_cluster_transport(self, added, removed) -> None:
        """A CDS cluster's transport socket factory came or went: its secrets are tracked; the
        xDS ones the new factory still waits for are returned (the cluster warms on them)."""
        if self.secret_watcher is None:
            return ()
        if removed is not None:
            self.secret_watcher.untrack((removed,))
        if added is None:
            return ()
        self.secret_watcher.track((added,))
        cold = self.secret_watcher.cold((added,))
        if cold:
            if self._cds_secrets_timer is None:
                self._cds_secrets_timer = self.main.create_timer(self._check_cds_secrets)
            self._cds_secrets_timer.enable(0.01)
        return cold

    def _check_cds_secrets(self) -> None:
        if self.cluster_manager is not None and self.cluster_manager.check_secrets():
            self._cds_secrets_timer.enable(0.01)

    def _cluster_hosts(self, name: str) -> list[tuple[str, int]]:
        """The (address, port) of a cluster's hosts (a gRPC xDS source's control plane)."""
        snap = self.cluster_manager.snapshots().get(name) if self.cluster_manager else None
        return [(h.address, h.port) for h in snap.hosts] if snap is not None else []

    def _cluster_config(self, name: str):
        """A cluster's config (a gRPC xDS source's connection: timeouts, HTTP/2), or None."""
        state = self.cluster_manager.states().get(name) if self.cluster_manager else None
        return state.config if state is not None else None

    def _local_info(self) -> LocalInfo:
        """What tracing reports of this process, as Envoy's local_info: the node and this
        host's address."""
        node = self.bootstrap.node
        return LocalInfo(node.id, node.cluster, node.zone, node_address())

    def _warm_clusters(self) -> None:
        """As Envoy, workers take traffic only once every health-checked host has a first
        result (its first check passed, failed or timed out): run the main loop until then."""
        cm = self.cluster_manager
        if cm is None or cm.warm:
            return
        log.info("waiting for the first health checks of the clusters")
        if not self.main.run_until(lambda: cm.warm, cm.warm_timeout() + 1.0):
            log.warning("clusters still warming after their health checks' timeout; starting")

    def _start_load_reporter(self) -> None:
        """cluster_manager.load_stats_config: the LRS stream (main thread), as Envoy's
        LoadStatsReporter."""
        api = self.bootstrap.cluster_manager.load_stats_config
        if api is None:
            return
        from .load_stats_reporter import LoadStatsReporter, sample_cluster
        cm = self.cluster_manager

        def sample(name: str):
            snap = cm.snapshots().get(name)
            return sample_cluster(snap, self.workers) if snap is not None else None

        self.load_reporter = LoadStatsReporter(self.main, api.cluster_name, self.bootstrap.node,
                                               self.main_store, self._cluster_hosts,
                                               self._cluster_config, sample,
                                               lambda: list(cm.snapshots()))
        self.load_reporter.start()

    def _publish_clusters(self, snapshots) -> None:
        # Thread-local slot: one immutable mapping, swapped on each worker's own thread.
        for w in self.workers:
            w.post(lambda w=w: w.set_clusters(snapshots))

    def _tick(self) -> None:
        try:
            if self.cluster_manager is not None:
                self.cluster_manager.tick()
            if self.hr_child is not None and self.hr_child.connected:
                self.hr_child.poll_stats()
            if self.secret_watcher is not None:
                self.secret_watcher.poll()
            if self.xds is not None:
                self.xds.poll()
            self._update_uptime()
        finally:
            self._tick_timer.enable(1.0)

    def _flush_sinks(self) -> None:
        try:
            snapshot = self.stats.snapshot(take_samples=self.stats.keep_samples)
            for sink in self.stats_sinks:
                try:
                    sink.flush(snapshot)
                except Exception:
                    log.exception("stats sink %r failed to flush", sink)
        finally:
            self._flush_timer.enable(self.bootstrap.stats_flush_interval)

    def _update_uptime(self) -> None:
        self.main_store.gauge("server.uptime").set(int(time.time() - self.original_start_time))
        try:
            self.server_stats.refresh(ServerAdminContext(self).certificates())
        except Exception:
            log.exception("refreshing the server stats failed")

    def _teardown(self) -> None:
        self.stop_admin()
        for sink in self.stats_sinks:
            try:
                sink.close()
            except Exception:
                log.exception("stats sink %r failed to close", sink)
        if self.load_reporter is not None:
            self.load_reporter.stop()
        if self.xds is not None:
            self.xds.stop()
        if self.span_exporters is not None:
            self.span_exporters.close()
        if self.grpc_access_logs is not None:
            self.grpc_access_logs.close()
        if self.cluster_manager is not None:
            self.cluster_manager.stop_health_checks()
        if self.hr_parent is not None:
            self.hr_parent.send_final_stats()
            self.hr_parent.close()
        if self.hr_child is not None:
            self.hr_child.close()
        for w in self.workers:
            w.post(w.stop_listeners)
            w.stop()
        for w in self.workers:
            w.join(5.0)
        for socks in self.listen_sockets.values():
            for s in socks:
                s.close()
        self.main.close()
        log.info("ftproxy exited")

    # -- helpers for admin and tests -----------------------------------------------------------------
    def listener_port(self, name: str | None = None) -> int:
        if name is None:
            name = next(iter(self.listener_addresses))
        return self.listener_addresses[name][1]
