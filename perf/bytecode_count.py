"""Count the bytecode instructions the worker thread executes, per function.

Job: a noise-free measure of the proxy's Python cost per request for perf/bytecode_count.sh.
Wall-clock and CPU figures on the shared 2-vCPU VM move by +-20 % between runs; the number
of bytecodes a request executes does not, so a hot-path change can be judged before a
full benchmark run. Timing under this hook means nothing (every instruction calls back).
Bytecodes are a proxy for cost, not a measure of it: replacing a short loop by a chain of
C iterators (map/zip/compress over 1-10 headers) cut bytecodes by 25 % here and made the
same functions 1.5-3x slower in timeit. Confirm any change with timeit or perf/run.sh.

How: `sys.monitoring` INSTRUCTION events, counted only for the thread named `worker_0`;
SIGUSR2 switches counting on (after a warm-up), a second SIGUSR2 off again (so that the drain
and exit are not counted), each time writing "on"/"off" to $FTPROXY_BYTECODE_OUT.state for the
caller to wait on; the counts are written as JSON to $FTPROXY_BYTECODE_OUT when the worker
stops (SIGTERM -> drain -> exit).
Must not: be imported by the proxy; it is a benchmark tool only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter

OUT = os.environ.get("FTPROXY_BYTECODE_OUT", "/tmp/ftproxy-bytecodes.json")
TOOL = sys.monitoring.PROFILER_ID
_counts: Counter = Counter()
_worker = {"ident": None}
_orig_run = threading.Thread.run


def _on_instruction(code, _offset: int) -> None:
    if threading.get_ident() == _worker["ident"]:
        _counts[(code.co_filename, code.co_firstlineno, code.co_qualname)] += 1


def _run(self: threading.Thread) -> None:
    if self.name != "worker_0":
        return _orig_run(self)
    _worker["ident"] = threading.get_ident()
    try:
        return _orig_run(self)
    finally:
        sys.monitoring.set_events(TOOL, 0)
        with open(OUT, "w") as f:
            json.dump([[*key, n] for key, n in _counts.items()], f)


def _toggle(*_) -> None:
    on = sys.monitoring.get_events(TOOL) == 0
    sys.monitoring.set_events(TOOL, sys.monitoring.events.INSTRUCTION if on else 0)
    with open(OUT + ".state", "w") as f:
        f.write("on" if on else "off")


def main() -> None:
    sys.monitoring.use_tool_id(TOOL, "bytecode_count")
    sys.monitoring.register_callback(TOOL, sys.monitoring.events.INSTRUCTION, _on_instruction)
    signal.signal(signal.SIGUSR2, _toggle)
    threading.Thread.run = _run  # type: ignore[method-assign]
    from proxy.server.main import main as epoch_main
    sys.exit(epoch_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
