"""Hot-restart parent shell: epoch N listens for epoch N+1 on its main-thread Dispatcher.

Thread affinity: main thread only (the Dispatcher runs callbacks there). The logic that
answers each request is messages.ParentLogic; this file only moves frames and fds.
"""

from __future__ import annotations

import logging
import socket

from ..threads.dispatcher import READ
from . import channel
from .messages import FrameDecoder, ParentLogic, ProtocolError

__all__ = ["HotRestartParent"]

log = logging.getLogger("ftproxy.hotrestart")


class HotRestartParent:
    def __init__(self, server, address: str | bytes) -> None:
        self.server = server
        self.address = address
        self.dispatcher = server.main
        self.logic = ParentLogic(server)
        self.listener = channel.listen(address)
        self.dispatcher.register(self.listener, READ, self._on_accept)
        self.child: socket.socket | None = None
        self.decoder = FrameDecoder()
        self.drain_requested = False

    def _on_accept(self, _mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.child is not None:
            log.warning("hot restart: a second child connected; refusing it")
            sock.close()
            return
        sock.setblocking(True)
        sock.settimeout(5.0)
        self.child = sock
        self.decoder = FrameDecoder()
        self.logic = ParentLogic(self.server)
        self.dispatcher.register(sock, READ, self._on_readable)
        log.info("hot restart: child epoch connected")

    def _on_readable(self, _mask: int) -> None:
        sock = self.child
        try:
            data = sock.recv(65536)
            msgs = self.decoder.feed(data) if data else None
        except (OSError, ProtocolError) as e:
            log.warning("hot restart channel error: %s", e)
            msgs = None
        if msgs is None:
            self._child_gone()
            return
        for msg in msgs:
            reply = self.logic.reply(msg)
            if reply.action == "shutdown_admin":
                # Before answering: the child binds the admin port as soon as it reads the reply.
                self.server.stop_admin()
            elif reply.action == "drain":
                # Before answering too: once the child reads it, we no longer accept.
                self.drain_requested = True
                self.server.start_parent_drain()
            try:
                channel.send(sock, reply.message, reply.fds)
            except (OSError, ProtocolError) as e:  # ProtocolError: a reply too large to frame
                log.warning("hot restart: reply failed: %s", e)
                self._child_gone()
                return

    def _child_gone(self) -> None:
        sock, self.child = self.child, None
        if sock is not None:
            self.dispatcher.unregister(sock)
            sock.close()
        if not self.drain_requested:
            # The child died before taking over: we keep serving, and want our admin back.
            log.warning("hot restart: child went away before taking over; still serving")
            self.server.restart_admin()

    def send_final_stats(self) -> None:
        """Just before exit: hand the child our last counters (best effort)."""
        if self.child is None:
            return
        counters, gauges = self.server.stats_counters()
        try:
            channel.send(self.child, {"type": "final_stats", "counters": counters, "gauges": gauges})
        except OSError:
            pass

    def close(self) -> None:
        self.dispatcher.unregister(self.listener)
        self.listener.close()
        if isinstance(self.address, str):
            import os
            try:
                os.unlink(self.address)
            except OSError:
                pass
        if self.child is not None:
            self.dispatcher.unregister(self.child)
            self.child.close()
            self.child = None
