"""HTTP filters, one module each; each registers its config parser and runtime factory
(proxy/extensions.py imports them). Filters never import each other."""
