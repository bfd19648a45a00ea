"""Redis transactions through the proxy (Envoy's TransactionRequest): MULTI, EXEC, DISCARD,
WATCH and UNWATCH, and the simple commands between them.

A downstream connection has one `Transaction`. MULTI starts it, answered here while no key is
known; the first command with a key fixes the transaction's key and host: a connection of its
own to that host (not the shared pipelined one) gets MULTI (its answer dropped) and then every
command of the transaction, routed by that key, whatever their own keys. EXEC or DISCARD ends
it once answered (and what was sent after them), closing that connection; with no key yet they are answered here (an empty
array, OK). WATCH outside a transaction fixes the key and goes to that connection; UNWATCH
with no key is a no-op answered here. Multi-key commands (MGET, MSET, DEL...) go whole to the
transaction's connection; other commands inside a transaction are refused with Envoy's error. While a transaction is open every command counts under `command.multi.*`, as
Envoy counts them.

Thread affinity: the session's worker. Must not: parse RESP or touch the downstream.
"""

from __future__ import annotations

from .commands import MULTI_KEY, SIMPLE, TRANSACTION
from .resp import Error, SimpleString, encode_request
from .upstream_client import FAILED

__all__ = ["TRANSACTION", "Transaction", "transaction_request"]

_OK = SimpleString(b"OK")
_QUEUED = SimpleString(b"QUEUED")
_MULTI = encode_request([b"MULTI"])


class Transaction:
    __slots__ = ("active", "key", "client", "should_close")

    def __init__(self) -> None:
        self.active = False
        self.key = b""          # the key that picked the transaction's host (b"": none yet)
        self.client = None      # its own UpstreamClient
        self.should_close = False

    def close(self, abort: bool = False) -> None:
        """Over: its connection closes once what was sent on it is answered (`abort`: now,
        its downstream is gone)."""
        self.active = False
        self.key = b""
        self.should_close = False
        client, self.client = self.client, None
        if client is not None:
            client.abort() if abort else client.close()


def _client(session, tx: Transaction):
    client = tx.client
    if client is None or client.closed:
        client = tx.client = session.ctx.dedicated_client(tx.key)
    return client


def transaction_request(session, slot, stats, value: list, name: str, failure, no_host) -> None:
    """`failure`/`no_host`: the session's "upstream failure" and "no upstream host" errors."""
    tx = session.tx
    answer = session._answer
    if name not in TRANSACTION and name not in SIMPLE and name not in MULTI_KEY:
        answer(slot, Error(b"'%s' command is not supported within transaction" % value[0]))
        return
    if name == "multi":
        if tx.active:
            answer(slot, Error(b"MULTI calls can not be nested"))
            return
        tx.active = True
        if not tx.key:
            answer(slot, _OK)
            return
    elif name == "exec" or name == "discard":
        if not tx.active:
            answer(slot, Error(b"%s without MULTI" % name.upper().encode()))
            return
        if not tx.key:
            answer(slot, [] if name == "exec" else _OK)
            tx.close()
            return
        tx.should_close = True
    if name == "watch" and not tx.active and len(value) > 1:
        tx.key = value[1]
    if not tx.key:
        if name == "unwatch":
            answer(slot, _QUEUED if tx.active else _OK)
            return
        if len(value) < 2:
            session._wrong_arity(slot, stats, value)
            return
        tx.key = value[1]
        client = _client(session, tx)
        if client is not None:
            client.request(_MULTI, None)
    else:
        client = _client(session, tx)
    def done(result) -> None:
        if result is FAILED:
            stats.error.value += 1
            result = failure
        else:
            stats.success.value += 1
        # EXEC/DISCARD answered and nothing sent after them pending: the transaction is over.
        if tx.should_close and tx.client is client and not client.pending:
            tx.close()
        answer(slot, result)

    handle = client.request(encode_request(value), done) if client is not None else None
    if name == "unwatch" and not tx.active:
        tx.key = b""
    if handle is None:
        stats.error.value += 1
        answer(slot, no_host)
    else:
        slot.handles.append(handle)
