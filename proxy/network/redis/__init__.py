"""Redis proxy (`envoy.filters.network.redis_proxy`): the RESP codec (resp.py), Envoy's command
tables and key hashing (commands.py), the filter's config (config.py) and its runtime on the
workers (proxy_filter.py: downstream sessions, command splitting; upstream_client.py: one
pipelined connection per upstream host per worker).
"""
