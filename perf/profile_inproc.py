"""Run `proxyctl` with every worker thread under cProfile (deterministic, file:line attribution).

Job: profiling aid for perf/profile.sh (PROFILER=cprofile). It patches `threading.Thread.run`
so the worker thread (name prefix $FTPROXY_PROFILE_THREAD, default `worker`) runs inside a
`cProfile.Profile`, then runs the
epoch entry `proxy.server.main` in this process. When a thread's run() returns (SIGTERM -> drain -> workers exit) its stats are
written to $FTPROXY_PROFILE_DIR/thread-<name>.prof. cProfile inflates the cost of Python
calls (it hooks each one), so read the tables for *where* time goes, not absolute µs; `perf`
(profile.sh default) gives the unbiased Python/kernel split.
Must not: be imported by the proxy; it is a benchmark tool only.
"""

from __future__ import annotations

import cProfile
import os
import sys
import threading

OUT = os.environ.get("FTPROXY_PROFILE_DIR", "/tmp/ftproxy-prof")
_orig_run = threading.Thread.run
PREFIX = os.environ.get("FTPROXY_PROFILE_THREAD", "worker")


def _profiled_run(self: threading.Thread) -> None:
    # cProfile on 3.12+ sits on sys.monitoring, which allows one active profiler per process:
    # profile the first worker thread only (run with --concurrency 1).
    if not self.name.startswith(PREFIX):
        return _orig_run(self)
    prof = cProfile.Profile()
    try:
        prof.runcall(_orig_run, self)
    finally:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)
        prof.dump_stats(os.path.join(OUT, f"thread-{name}.prof"))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    # The epoch process that `proxyctl start` supervises (same hot path, no child process, so
    # the profiler sees the worker): python perf/profile_inproc.py -c FILE --concurrency 1 ...
    from proxy.server.main import main as epoch_main
    sys.exit(epoch_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
