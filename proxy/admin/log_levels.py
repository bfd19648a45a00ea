"""The admin's `/logging`: ftproxy's loggers (Python's `ftproxy.*` loggers, named here without
the prefix; `ftproxy` itself is `main`) and their levels, read and changed as Envoy's
`/logging` does: POST alone lists them, `?level=L` sets every one, `?<name>=L` one,
`?paths=a:L,b:L` several; levels trace debug info warning error critical off. The loggers are
ftproxy's own, not Envoy's list (a name of Envoy's that ftproxy has not is "unknown").

Thread affinity: the admin thread. Logging levels are the process's (Python's logging module
guards them with its own lock), not state the main thread owns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

__all__ = ["LEVELS", "handle_logging"]

TRACE = 5
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}
_NAMES = {v: k for k, v in LEVELS.items()}
_USAGE = ("usage: /logging?<name>=<level> (change single level)\n"
          "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
          "usage: /logging?level=<level> (change all levels)\n"
          "levels: " + " ".join(LEVELS) + " \n")


def _loggers() -> dict[str, logging.Logger]:
    out = {"main": logging.getLogger("ftproxy")}
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("ftproxy."):
            out[name[len("ftproxy."):]] = logging.getLogger(name)
    return out


def _level_name(logger: logging.Logger) -> str:
    level = logger.getEffectiveLevel()
    return _NAMES.get(level) or min(_NAMES.items(), key=lambda kv: abs(kv[0] - level))[1]


def listing() -> str:
    return "active loggers:\n" + "".join(f"  {name}: {_level_name(lg)}\n"
                                         for name, lg in sorted(_loggers().items()))


def handle_logging(params: Mapping[str, Sequence[str]]) -> tuple[int, str]:
    """(status, text) for POST /logging with `params`."""
    if not params:
        return 200, listing()
    if len(params) > 1 or any(len(v) != 1 for v in params.values()):
        return 400, "error: invalid number of parameters\n\n" + _USAGE + listing()
    (key, (value,)), = params.items()
    loggers = _loggers()
    changes: list[tuple[logging.Logger, int]] = []
    if key == "level":
        if value not in LEVELS:
            return 400, "error: unknown logger level\n\n" + _USAGE + listing()
        changes = [(lg, LEVELS[value]) for lg in loggers.values()]
    else:
        pairs = [p.split(":", 1) for p in value.split(",")] if key == "paths" else [[key, value]]
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in loggers:
                return 400, "error: unknown logger name\n\n" + _USAGE + listing()
            if pair[1] not in LEVELS:
                return 400, "error: unknown logger level\n\n" + _USAGE + listing()
            changes.append((loggers[pair[0]], LEVELS[pair[1]]))
    for lg, level in changes:
        lg.setLevel(level)
    return 200, listing()
