"""TLS (`envoy.transport_sockets.tls`): config (config.py), contexts and peer verification
(context.py), the memory-BIO transport socket and its factories (transport_socket.py), and
what a handshake established (info.py). Importing `proxy.tls.transport_socket` registers
the extension (proxy/extensions.py does)."""
