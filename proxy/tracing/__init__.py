"""HTTP distributed tracing (Envoy's HCM `tracing`): config (config.py), the Zipkin span model
and B3 propagation (zipkin.py), the per-worker tracer the connection manager calls
(tracer.py) and the main thread's span export (exporter.py)."""
