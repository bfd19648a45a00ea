"""Network filters that run before a listener's terminal filter, one module each; each
registers its config parser and runtime factory (proxy/extensions.py imports them)."""
