"""Listener filters: inspect an accepted socket before its filter chain is chosen (Envoy's
`Network::ListenerFilter`).

The listener runs them in order on each accepted socket (proxy/network/active_socket.py,
Envoy's ActiveTcpSocket + ListenerFilterBuffer). Contract of a filter (per connection,
made by its extension's runtime: `factory(config, name).for_worker(worker).create(callbacks)`):
- `max_read_bytes`: how many bytes it wants to see (0: it reads none). May grow while it
  inspects (proxy_protocol, once it knows its header's length; tls_inspector doubling its
  buffer up to its maximum).
- `on_accept(callbacks) -> int`: CONTINUE (done: the next filter runs) or STOP_ITERATION
  (it wants bytes: the listener peeks at the socket, MSG_PEEK, up to `max_read_bytes`, and
  calls `on_data` each time more arrived).
- `on_data(data: bytes) -> int`: `data` is everything peeked so far, from the first unread
  byte; CONTINUE when it has what it needs, STOP_ITERATION to wait for more. To refuse the
  connection it calls `callbacks.close()` and returns STOP_ITERATION.
- `on_close()`: the peer went away (or the peek failed) while it waited.
What a filter learns goes on its `callbacks` (`set_requested_server_name`,
`set_application_protocols`, `set_transport_protocol`, `set_remote_address`,
`restore_local_address`); a filter that consumes bytes (proxy_protocol's header) calls
`callbacks.drain(n)`. Filters do no other I/O; their parsing lives in pure modules
(client_hello.py, proxy_protocol_header.py, http_inspector.py's `inspect_http`).
Thread affinity: a filter belongs to the worker of its connection; factories are built on
the main thread and immutable.
"""

from __future__ import annotations

__all__ = ["ListenerFilterStatus"]


class ListenerFilterStatus:
    CONTINUE = 0
    STOP_ITERATION = 1
