"""When the tests may load the Lua filter (lupa) in the test process itself.

On a free-threaded build, importing lupa turns the GIL back on for the rest of the process, and
every test after it would then run with the GIL, which is not what `make test-314t` is for. So
there, the tests that would load lupa in-process skip, unless FTPROXY_LUA_IN_PROCESS=1: the
Lua filter's tests then run in their own interpreter (tests/unit/test_lua_gil.py starts one
with that variable set). On a GIL build they run in-process as the others.
"""

from __future__ import annotations

import os
import sys
import sysconfig

__all__ = ["LUA_IN_PROCESS_SKIP", "lua_in_process_skip_reason"]


def lua_in_process_skip_reason() -> str | None:
    """Why a test must not load lupa here, or None when it may."""
    try:
        import lupa  # noqa: F401  (the package: its C modules are imported only by lua_runtime)
    except ImportError:
        return "the Lua filter needs lupa: pip install 'ftproxy[lua]'"
    if (sysconfig.get_config_var("Py_GIL_DISABLED")
            and not getattr(sys, "_is_gil_enabled", lambda: True)()
            and os.environ.get("FTPROXY_LUA_IN_PROCESS") != "1"):
        return ("free-threaded build: loading lupa would turn the GIL back on for the rest of "
                "this test process (these tests run in their own interpreter: test_lua_gil.py)")
    return None


LUA_IN_PROCESS_SKIP = lua_in_process_skip_reason()
