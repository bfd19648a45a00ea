"""UDP proxying: the `envoy.filters.udp_listener.udp_proxy` listener filter.

config.py holds the config model (no I/O), session_table.py the per-worker session bookkeeping
(no I/O, clock injected), listener.py the worker's UDP listen socket and sessions (the I/O)."""
