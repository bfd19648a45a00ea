"""The commands about the client's own connection that the proxy answers itself, as Envoy 1.40
does: AUTH (against `downstream_auth_password(s)` / `downstream_auth_username`), HELLO (RESP2
only: a fixed description of the proxy; its AUTH option authenticates as AUTH does, SETNAME is
accepted and ignored) and CLIENT SETNAME / SETINFO (accepted, ignored; other CLIENT subcommands
refused). Pure functions: the request's arguments in, the answer (and whether the connection
is now authenticated) out.
"""

from __future__ import annotations

from .resp import Error, SimpleString

__all__ = ["auth_answer", "hello_answer", "client_answer", "uncounted", "HELLO_REPLY"]

OK = SimpleString(b"OK")
HELLO_REPLY = [b"server", b"envoy-redis-proxy", b"version", b"6.0.0", b"proto", 2, b"id", 0,
               b"mode", b"standalone", b"role", b"master", b"modules", []]
NOPROTO = Error(b"NOPROTO unsupported protocol version")


def auth_answer(config, args: list[bytes]) -> tuple[object, bool | None]:
    """AUTH <password> or AUTH <username> <password> (`args` after the command name): the answer
    and the connection's new authenticated state (None: unchanged)."""
    passwords = config.downstream_auth_passwords
    user = config.downstream_auth_username
    if len(args) == 2:
        username, password = args
        if user is None and not passwords:
            return Error(b"ERR Client sent AUTH, but no username-password pair is set"), None
        if password in passwords and (username == user or (user is None and username == b"default")):
            return OK, True
        return Error(b"WRONGPASS invalid username-password pair"), False
    if not passwords:
        return Error(b"ERR Client sent AUTH, but no password is set"), None
    if args[0] in passwords:
        return OK, True
    return Error(b"ERR invalid password"), False


def hello_answer(config, args: list[bytes], allowed: bool) -> tuple[object, bool | None]:
    """HELLO [protover [AUTH username password] [SETNAME name]]. (Envoy 1.40 counts the
    answer in command.hello.success/error but for an AUTH option refused because no
    credentials are configured: `uncounted`.)"""
    if args and args[0] != b"2":
        return NOPROTO, None
    auth = None
    i = 1
    while i < len(args):
        option = args[i].lower()
        if option == b"auth":
            if i + 2 >= len(args):
                return Error(b"ERR Syntax error: HELLO AUTH requires <username> <password>"), None
            auth = [args[i + 1], args[i + 2]]
            i += 3
        elif option == b"setname" and i + 1 < len(args):
            i += 2
        else:
            return Error(b"ERR Syntax error: unknown HELLO option '%s'" % args[i]), None
    state = None
    if auth is not None:
        answer, state = auth_answer(config, auth)
        if answer is not OK:
            return answer, state
        allowed = True
    if not allowed:
        return Error(b"NOAUTH Authentication required."), state
    return HELLO_REPLY, state


def uncounted(answer: object) -> bool:
    """A HELLO answer Envoy counts neither as success nor error (see hello_answer)."""
    return type(answer) is Error and answer.startswith(b"ERR Client sent AUTH")


def client_answer(args: list[bytes]) -> object:
    """CLIENT <subcommand> ... (at least the subcommand)."""
    sub = args[0].lower()
    if sub == b"setname":
        return OK if len(args) == 2 else Error(b"ERR wrong number of arguments for 'client|setname' command")
    if sub == b"setinfo":
        return OK if len(args) == 3 else Error(b"ERR wrong number of arguments for 'client|setinfo' command")
    return Error(b"ERR CLIENT subcommand '%s' is not supported by the proxy" % args[0])
