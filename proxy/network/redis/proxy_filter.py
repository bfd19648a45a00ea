"""The Redis proxy filter's runtime: a terminal network filter on the worker (Envoy's
redis_proxy ProxyFilter and CommandSplitter).

Per downstream connection (`RedisSession`): decode pipelined commands (RESP arrays of bulk
strings or inline commands), answer each in the order it came even when hosts answer out of
order, and split them:
- PING, ECHO, TIME, QUIT, AUTH, HELLO and CLIENT SETNAME/SETINFO are answered here (AUTH and
  HELLO's: connection_commands.py; until AUTH succeeds every other command gets NOAUTH);
- a simple command goes to the host of its first key (EVAL/EVALSHA: the key after numkeys;
  OBJECT: the key after the subcommand);
- MGET, MSET and DEL/EXISTS/TOUCH/UNLINK are split into one GET/SET/<command> per key, each to
  its key's host, and the answers put together (an array, OK, or the sum) as Envoy does;
- MULTI/EXEC/DISCARD/WATCH/UNWATCH and what comes between them: transaction.py;
- KEYS, SELECT, SCRIPT, FLUSHALL, SCAN... to every host, RANDOMKEY/CLUSTER/INFO.SHARD to one:
  cluster_scope.py;
- a key picks its cluster by the longest matching `prefix_routes` prefix (or the catch-all)
  and its host by the cluster's load balancer given the key's MurmurHash2 (of its hash tag
  with `enable_hashtagging`): RING_HASH and MAGLEV keep a key on one host, other policies
  ignore the hash as in Envoy.
Error answers are Envoy 1.40's strings. Stats `redis.<stat_prefix>.*` as Envoy names them.

Thread affinity: a factory is built on main; `RedisProxyContext` (its upstream clients) and
sessions belong to one worker. Must not: parse RESP (resp.py) or own upstream sockets
(upstream_client.py).
"""

from __future__ import annotations

import time
from collections import deque

from ..connection import Connection, ConnectionCallbacks
from .commands import EVAL, KNOWN, OBJECT, SIMPLE, STAT_COMMANDS, SUM_RESULT, WITHOUT_ARGS, hash_tag, murmur_hash2
from .resp import Decoder, Error, ProtocolError, SimpleString, encode, encode_request
from .connection_commands import auth_answer, client_answer, hello_answer, uncounted
from .cluster_scope import CLUSTER_SCOPE, RANDOM_SHARD, cluster_scope_request, info_shard_request, scan_request
from .transaction import TRANSACTION, Transaction, transaction_request
from .upstream_client import FAILED, UpstreamClient

__all__ = ["RedisProxyFactory", "RedisProxyContext", "RedisSession"]

OK = SimpleString(b"OK")
PONG = SimpleString(b"PONG")
INVALID_REQUEST = Error(b"invalid request")
NO_UPSTREAM_HOST = Error(b"no upstream host")
UPSTREAM_FAILURE = Error(b"upstream failure")
UPSTREAM_PROTOCOL_ERROR = Error(b"upstream protocol error")
AUTH_REQUIRED = Error(b"NOAUTH Authentication required.")
PROTOCOL_ERROR_REPLY = b"-downstream protocol error\r\n"

_COUNTERS = ("downstream_cx_total", "downstream_cx_protocol_error", "downstream_cx_rx_bytes_total",
             "downstream_cx_tx_bytes_total", "downstream_rq_total", "downstream_cx_drain_close",
             "downstream_rq_noproto")
_GAUGES = ("downstream_cx_active", "downstream_rq_active", "downstream_cx_rx_bytes_buffered",
           "downstream_cx_tx_bytes_buffered")


class RedisProxyFactory:
    """Main thread: the parsed config; `for_worker` makes each worker's context."""

    def __init__(self, config) -> None:
        self.config = config

    def for_worker(self, worker) -> RedisProxyContext:
        return RedisProxyContext(self.config, worker)


class _CommandStats:
    __slots__ = ("total", "success", "error")

    def __init__(self, scope, name: str) -> None:
        self.total = scope.counter(f"command.{name}.total")
        self.success = scope.counter(f"command.{name}.success")
        self.error = scope.counter(f"command.{name}.error")


class RedisProxyContext:
    """Per worker: the stats, the routes and the upstream clients (one per host)."""

    def __init__(self, config, worker) -> None:
        self.config = config
        self.worker = worker
        self.scope = scope = worker.stats.scope(f"redis.{config.stat_prefix}")
        for n in _COUNTERS:
            setattr(self, n, scope.counter(n))
        for n in _GAUGES:
            setattr(self, n, scope.gauge(n))
        self.invalid_request = scope.counter("splitter.invalid_request")
        self.unsupported_command = scope.counter("splitter.unsupported_command")
        self.commands = {name: _CommandStats(scope, name) for name in sorted(STAT_COMMANDS)}
        self.clients: dict[tuple, UpstreamClient] = {}
        self.insensitive = config.case_insensitive
        self.routes = config.routes
        self.catch_all = config.catch_all_route
        self.auth_required = bool(config.downstream_auth_passwords or config.downstream_auth_username)

    def new_connection(self, transport_socket, remote, local, conn_id, buffer_limit, on_closed,
                       info=None) -> RedisSession:
        return RedisSession(self, transport_socket, conn_id, buffer_limit, on_closed)

    # -- routing -----------------------------------------------------------------------------
    def route(self, key: bytes):
        """(route, key as sent upstream) or (None, key)."""
        probe = key.lower() if self.insensitive else key
        for r in self.routes:
            if probe.startswith(r.prefix):
                return r, (key[len(r.prefix):] if r.remove_prefix else key)
        return self.catch_all, key

    def _pick(self, key: bytes):
        """(cluster, host, key as routed) for `key`, or None without a cluster or host."""
        route, key = self.route(key)
        if route is None:
            return None
        cluster = self.worker.clusters.get(route.cluster)
        if cluster is None:
            return None
        host = self.pick_host(cluster, key)
        return None if host is None else (cluster, host, key)

    def pick_host(self, cluster, key: bytes):
        """The host `cluster`'s balancer picks for `key`'s hash, or None."""
        hkey = hash_tag(key) if self.config.enable_hashtagging else key
        host = cluster.choose_host_by_hash(murmur_hash2(hkey))
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
        return host

    def dedicated_client(self, key: bytes) -> UpstreamClient | None:
        """A connection of its own to `key`'s host (a transaction's), or None."""
        picked = self._pick(key)
        if picked is None:
            return None
        cfg = self.config
        return UpstreamClient(self, picked[0], picked[1], cfg.op_timeout, cfg.max_buffer_size_before_flush,
                              cfg.buffer_flush_timeout)

    def send_to(self, cluster, host, payload: bytes, callback):
        """`payload` to `host` of `cluster` on the shared connection."""
        return self._client(cluster, host).request(payload, callback)

    def send(self, key: bytes, build, callback):
        """Route `key`, send `build(key as routed)` to its host; the request handle, or None
        when there is no cluster or host for it."""
        picked = self._pick(key)
        if picked is None:
            return None
        cluster, host, key = picked
        return self._client(cluster, host).request(build(key), callback)

    def _client(self, cluster, host) -> UpstreamClient:
        """The shared connection to `host`, made on first use. Making one also closes (once
        answered) those to hosts the cluster no longer has, as Envoy drains a removed host's."""
        client = self.clients.get((cluster.name, host.key))
        if client is None or client.closed:
            cfg = self.config
            client = UpstreamClient(self, cluster, host, cfg.op_timeout, cfg.max_buffer_size_before_flush,
                                    cfg.buffer_flush_timeout)
            current = {h.key for h in cluster.snapshot.hosts}
            for key, old in list(self.clients.items()):
                if key[0] == cluster.name and key[1] not in current:
                    del self.clients[key]
                    old.close()
            self.clients[client.key] = client
        return client

    def forget(self, client: UpstreamClient) -> None:
        if self.clients.get(client.key) is client:
            del self.clients[client.key]


class _Slot:
    """One downstream request's place in the answer order."""
    __slots__ = ("value", "done", "handles")

    def __init__(self) -> None:
        self.value = None
        self.done = False
        self.handles: list = []


class RedisSession(ConnectionCallbacks):
    def __init__(self, ctx: RedisProxyContext, transport_socket, conn_id, buffer_limit, on_closed) -> None:
        self.ctx = ctx
        self.on_closed = on_closed
        self.decoder = Decoder(self._on_request, inline=True)
        self.slots: deque[_Slot] = deque()
        self.allowed = not ctx.auth_required
        self.failure = UPSTREAM_FAILURE
        self.tx = Transaction()
        self.quitting = False       # QUIT seen: close once every answer before it is written
        self.closing = False        # closed (or closing once flushed): nothing more is read
        self.draining = False
        self.finished = False
        self.downstream = Connection(ctx.worker.dispatcher, transport_socket, self, buffer_limit=buffer_limit,
                                     conn_id=conn_id)
        ctx.downstream_cx_total.value += 1
        ctx.downstream_cx_active.value += 1
        self.downstream.start()

    # -- downstream bytes --------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self.ctx.downstream_cx_rx_bytes_total.value += len(data)
        if self.closing:
            return
        try:
            self.decoder.feed(data)
        except ProtocolError:
            self.ctx.downstream_cx_protocol_error.value += 1
            self.closing = True
            # Written but not counted in downstream_cx_tx_bytes_total, as Envoy 1.40 does
            # (its close without flush skips the count; the client still gets the bytes).
            self.downstream.write(PROTOCOL_ERROR_REPLY)
            self.downstream.close(flush=True)

    def on_eof(self) -> None:
        self.downstream.close(flush=True)

    def on_close(self, reason: str) -> None:
        if self.finished:
            return
        self.finished = True
        ctx = self.ctx
        for slot in self.slots:
            for h in slot.handles:
                h.cancel()
            ctx.downstream_rq_active.value -= 1
        self.slots.clear()
        self.tx.close(abort=True)
        ctx.downstream_cx_active.value -= 1
        self.on_closed(self)

    def on_above_write_watermark(self) -> None:
        self.downstream.read_disable(True)

    def on_below_write_watermark(self) -> None:
        self.downstream.read_disable(False)

    def start_drain(self, close_idle: bool = True) -> None:
        """Draining: as Envoy's drain decision, the connection closes after the next answer
        that leaves nothing pending (downstream_cx_drain_close); an idle one closes now only
        with `close_idle` (else at the end of the drain time, by the worker)."""
        if self.finished or self.draining:
            return
        self.draining = True
        if close_idle and not self.slots:
            self.ctx.downstream_cx_drain_close.value += 1
            self.closing = True
            self.downstream.close(flush=True)

    # -- answers, in request order -----------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self.ctx.downstream_cx_tx_bytes_total.value += len(data)
        self.downstream.write(data)

    def _answer(self, slot: _Slot, value) -> None:
        slot.value = value
        slot.done = True
        slots = self.slots
        if not slots or slots[0] is not slot or self.finished:
            return
        out: list[bytes] = []
        ctx = self.ctx
        while slots and slots[0].done:
            encode(slots.popleft().value, out)
            ctx.downstream_rq_active.value -= 1
        self._write(b"".join(out))
        if not slots and (self.quitting or self.draining):
            # As Envoy: the requests read after a QUIT, in the same read, are still answered
            # while an answer before it is pending; once none is, the connection closes.
            if self.draining and not self.quitting:
                ctx.downstream_cx_drain_close.value += 1
            self.closing = True
            self.downstream.close(flush=True)

    # -- commands ----------------------------------------------------------------------------
    def _on_request(self, value) -> None:
        if self.closing:
            return
        ctx = self.ctx
        ctx.downstream_rq_total.value += 1
        ctx.downstream_rq_active.value += 1
        slot = _Slot()
        self.slots.append(slot)
        if type(value) is not list or not value or any(type(a) is not bytes for a in value):
            ctx.invalid_request.value += 1
            self._answer(slot, INVALID_REQUEST)
            return
        name = value[0].lower().decode("latin-1")
        if name not in KNOWN:
            ctx.unsupported_command.value += 1
            self._answer(slot, Error(b"ERR unknown command '%s', with args beginning with: %s"
                                     % (value[0], value[1] if len(value) > 1 else b"")))
            return
        if name == "auth":
            self._auth(slot, value)
            return
        if name == "quit":
            self.quitting = True
            self._answer(slot, OK)
            return
        if name == "hello":   # before NOAUTH: its AUTH option may authenticate
            stats = ctx.commands[name]
            stats.total.value += 1
            answer, allowed = hello_answer(ctx.config, value[1:], self.allowed)
            if allowed is not None:
                self.allowed = allowed
            if not uncounted(answer):
                (stats.error if type(answer) is Error else stats.success).value += 1
            self._answer(slot, answer)
            return
        if not self.allowed:
            self._answer(slot, AUTH_REQUIRED)
            return
        if name == "ping":
            self._answer(slot, PONG)
            return
        if name == "echo":
            if len(value) != 2:
                ctx.invalid_request.value += 1
                self._answer(slot, INVALID_REQUEST)
            else:
                self._answer(slot, value[1])
            return
        if name == "time":
            now = time.time_ns() // 1000
            self._answer(slot, [b"%d" % (now // 1_000_000), b"%d" % now])
            return
        if len(value) < 2 and name not in WITHOUT_ARGS:
            ctx.invalid_request.value += 1
            self._answer(slot, INVALID_REQUEST)
            return
        if self.tx.active or name in TRANSACTION:
            # Inside a transaction every command counts as MULTI, as Envoy counts them.
            stats = ctx.commands["multi" if self.tx.active else name]
            stats.total.value += 1
            transaction_request(self, slot, stats, value, name, UPSTREAM_FAILURE, NO_UPSTREAM_HOST)
            return
        if name == "client":   # no stats in Envoy 1.40
            self._answer(slot, client_answer(value[1:]))
            return
        stats = ctx.commands[name]
        stats.total.value += 1
        cmd = name
        if cmd in SIMPLE:
            self._single(slot, stats, value, 1)
        elif cmd in EVAL:
            self._single(slot, stats, value, 3)
        elif cmd in OBJECT:
            self._single(slot, stats, value, 2)
        elif cmd == "mget":
            _Fragmented(self, slot, stats, value, "mget")
        elif cmd == "mset":
            _Fragmented(self, slot, stats, value, "mset")
        elif cmd in SUM_RESULT:
            _Fragmented(self, slot, stats, value, "sum")
        elif cmd == "publish":
            if len(value) < 3:   # counted a success, as Envoy 1.40 counts it
                stats.success.value += 1
                self._answer(slot, Error(b"ERR wrong number of arguments for 'publish' command"))
            else:
                self._single(slot, stats, value, 1)
        elif cmd == "scan":
            scan_request(self, slot, stats, value, NO_UPSTREAM_HOST)
        elif cmd == "info.shard":
            info_shard_request(self, slot, stats, value, NO_UPSTREAM_HOST)
        elif cmd in CLUSTER_SCOPE or cmd in RANDOM_SHARD:
            cluster_scope_request(self, slot, stats, value, cmd, NO_UPSTREAM_HOST)
        else:   # NOT_BUILT
            stats.error.value += 1
            self._answer(slot, Error(b"ERR command '%s' is not supported by ftproxy yet" % value[0]))

    def _wrong_arity(self, slot: _Slot, stats, value) -> None:
        stats.error.value += 1
        self._answer(slot, Error(b"wrong number of arguments for '%s' command" % value[0]))

    def _single(self, slot: _Slot, stats, value: list, key_at: int) -> None:
        if len(value) <= key_at:
            self._wrong_arity(slot, stats, value)
            return

        def build(key: bytes) -> bytes:
            value[key_at] = key
            return encode_request(value)

        def done(answer) -> None:
            if answer is FAILED:
                stats.error.value += 1
                self._answer(slot, UPSTREAM_FAILURE)
            else:
                stats.success.value += 1
                self._answer(slot, answer)

        handle = self.ctx.send(value[key_at], build, done)
        if handle is None:
            stats.error.value += 1
            self._answer(slot, NO_UPSTREAM_HOST)
        else:
            slot.handles.append(handle)

    def _auth(self, slot: _Slot, value: list) -> None:
        if len(value) < 2:
            self.ctx.invalid_request.value += 1
            self._answer(slot, INVALID_REQUEST)
            return
        answer, allowed = auth_answer(self.ctx.config, value[1:3] if len(value) == 3 else value[1:2])
        if allowed is not None:
            self.allowed = allowed
        self._answer(slot, answer)


class _Fragmented:
    """MGET, MSET or a summed multi-key command: one upstream request per key."""
    __slots__ = ("session", "slot", "stats", "kind", "parts", "waiting", "errors", "total")

    def __init__(self, session: RedisSession, slot: _Slot, stats, value: list, kind: str) -> None:
        self.session = session
        self.slot = slot
        self.stats = stats
        self.kind = kind
        self.errors = 0
        self.total = 0
        if kind == "mset" and (len(value) - 1) % 2:
            session._wrong_arity(slot, stats, value)
            return
        step = 2 if kind == "mset" else 1
        count = (len(value) - 1) // step
        self.parts: list = [None] * count
        self.waiting = count
        ctx = session.ctx
        for i in range(count):
            at = 1 + i * step
            if kind == "mget":
                build = lambda key: encode_request([b"get", key])
            elif kind == "mset":
                build = lambda key, v=value[at + 1]: encode_request([b"set", key, v])
            else:
                build = lambda key, c=value[0]: encode_request([c, key])
            handle = ctx.send(value[at], build, lambda answer, i=i: self._child(i, answer))
            if handle is None:
                self._child(i, NO_UPSTREAM_HOST)
            else:
                slot.handles.append(handle)

    def _child(self, i: int, answer) -> None:
        if answer is FAILED:
            answer = UPSTREAM_FAILURE
        kind = self.kind
        if kind == "mget":
            t = type(answer)
            if t is Error:
                self.errors += 1
            elif t is not bytes and answer is not None:
                self.errors += 1
                answer = UPSTREAM_PROTOCOL_ERROR
            self.parts[i] = answer
        elif kind == "mset":
            if not (type(answer) is SimpleString and answer == b"OK"):
                self.errors += 1
        elif type(answer) is int:
            self.total += answer
        else:
            self.errors += 1
        self.waiting -= 1
        if self.waiting:
            return
        stats = self.stats
        if self.errors:
            stats.error.value += 1
        else:
            stats.success.value += 1
        if kind == "mget":
            result = self.parts
        elif self.errors:
            result = Error(b"finished with %d error(s)" % self.errors)
        else:
            result = OK if kind == "mset" else self.total
        self.session._answer(self.slot, result)
