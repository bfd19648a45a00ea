"""Listener access logs (`Listener.access_log`): one entry per accepted connection.

As Envoy 1.40's ActiveStreamListenerBase::emitLogs, a listener's loggers run:
- when a connection that had a filter chain closes (ActiveTcpConnection's destructor): the
  connection's facts — its addresses, the chain's name (%FILTER_CHAIN_NAME%, unset for a
  chain without a name), the bytes it read and wrote, its duration, the codec's protocol for
  an HTTP connection ("HTTP/1.1", "HTTP/2"), and for a tcp_proxy connection what tcp_proxy
  found upstream (Envoy's tcp_proxy fills the connection's own StreamInfo: upstream host,
  cluster, flags such as UF,URX). No request headers, no response code (0);
- when no filter chain matched: flag NR, details `filter_chain_not_found`, nothing read;
- when the listener filters closed the socket (their timeout without
  continue_on_listener_filters_timeout, the peer's close, a filter's refusal): the addresses
  and what the filters found (SNI), no flags.
A connection refused by a connection limit before it was accepted into the listener is not
logged (Envoy closes it in its socket listener too).

Thread affinity: the worker that accepted the connection; every function here runs there.
Must not: do I/O beyond the loggers' own `log` (a gRPC logger buffers, a file logger's sink
is thread-safe), or keep state between connections.
"""

from __future__ import annotations

import time

from ..access_log.stream_info import StreamInfo
from .address import format_address

__all__ = ["accepted", "note_listener_filters", "log_unmatched", "log_rejected", "log_closed"]


def accepted(remote: tuple[str, int] | None, local: tuple[str, int] | None) -> StreamInfo:
    """The StreamInfo of a connection just accepted: its start, its socket's addresses."""
    info = StreamInfo(time.time(), time.monotonic())
    if remote is not None:
        info.downstream_remote_address = info.downstream_direct_remote_address = format_address(remote)
    if local is not None:
        info.downstream_local_address = format_address(local)
    return info


def note_listener_filters(info: StreamInfo, pending) -> None:
    """What the listener filters found (a PROXY protocol header's addresses, the SNI)."""
    info.downstream_remote_address = format_address(pending.remote)
    info.downstream_local_address = format_address(pending.local)
    info.downstream_direct_remote_address = format_address(pending.direct_remote)
    info.requested_server_name = pending.requested_server_name or None


# Envoy's AccessLogType of a listener's log: NotSet (emitLogs passes none).
ACCESS_LOG_TYPE_NOT_SET = 0


def _emit(loggers, info: StreamInfo) -> None:
    info.access_log_type = ACCESS_LOG_TYPE_NOT_SET
    if info.end_monotonic is None:
        info.end_monotonic = time.monotonic()
    try:
        for logger in loggers:
            logger.log(info)
    finally:
        info.access_log_type = None    # tcp_proxy's own loggers log the same StreamInfo next


def log_unmatched(loggers, info: StreamInfo) -> None:
    """No filter chain matched: NR, filter_chain_not_found (the socket is closed unread)."""
    info.set_response_flag("NR")
    info.response_code_details = "filter_chain_not_found"
    _emit(loggers, info)


def log_rejected(loggers, pending) -> None:
    """The listener filters closed the socket before a filter chain was chosen."""
    info = pending.log_info
    note_listener_filters(info, pending)
    _emit(loggers, info)


def log_closed(loggers, info: StreamInfo, conn, chain_name: str, conn_id: int) -> None:
    """A connection that had a filter chain closed: `conn` is what the chain's terminal (or
    its network filters' PendingConnection) returned, None if making it failed."""
    info.filter_chain_name = chain_name or None
    info.connection_id = conn_id
    terminal = getattr(conn, "terminal", conn)          # a network filter chain's PendingConnection
    session_info = getattr(terminal, "info", None)
    if isinstance(session_info, StreamInfo):
        # tcp_proxy: Envoy's tcp_proxy writes the connection's own StreamInfo; ours keeps it on
        # the session, already finished (bytes, upstream, flags, end time). Log that one, from
        # the listener's start (tcp_proxy's own loggers, after these, see the same).
        session_info.start_time = info.start_time
        session_info.start_monotonic = info.start_monotonic
        session_info.filter_chain_name = info.filter_chain_name
        d = getattr(terminal, "downstream", None)
        if session_info.downstream_ssl is None and d is not None:
            session_info.downstream_ssl = d.transport_socket.ssl()
        _emit(loggers, session_info)
        return
    c = getattr(terminal, "connection", None) if terminal is not None else None
    if c is not None:
        info.bytes_received = c.bytes_received
        info.bytes_sent = c.bytes_sent
        transport = c.transport_socket
        info.downstream_ssl = transport.ssl()
        info.downstream_transport_failure_reason = transport.failure_reason or None
    codec = getattr(terminal, "codec", None)
    if codec is not None:
        info.protocol = codec.protocol
    _emit(loggers, info)
