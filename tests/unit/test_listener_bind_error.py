"""A listener that cannot bind says which listener and which address (not only the errno)."""

from __future__ import annotations

import errno
import socket

import pytest

from proxy.network.listener import bind_listen_sockets


@pytest.mark.parametrize("reuse_port", [True, False])
def test_bind_error_names_the_listener_and_its_address(reuse_port):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as e:
            bind_listen_sockets("127.0.0.1", port, 2, reuse_port, name="ingress")
        assert e.value.errno == errno.EADDRINUSE
        assert str(e.value) == f'[Errno {errno.EADDRINUSE}] unable to bind listener "ingress" on 127.0.0.1:{port}: ' \
                               "Address already in use"
        with pytest.raises(OSError, match=rf"unable to bind listener on 127\.0\.0\.1:{port}: "):
            bind_listen_sockets("127.0.0.1", port, 1, reuse_port)
    finally:
        holder.close()


def test_ipv6_address_is_bracketed():
    holder = socket.socket(socket.AF_INET6)
    try:
        holder.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=rf'listener "v6" on \[::1\]:{port}: '):
            bind_listen_sockets("::1", port, 1, True, name="v6")
    finally:
        holder.close()
