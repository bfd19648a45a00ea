"""ftproxy benchmark scenarios that peers.sh lacks, and the combined report.

Job: start an nginx upstream (CPU 1) and, per case, a fresh server under test pinned to CPU 0
(ftproxy one worker, HAProxy, nginx-as-proxy) exactly like ../shared/tools/peers.sh, drive
it with wrk / curl / small Python clients on CPU 1, and record RPS, p50/p99, the server's CPU
µs per request (CPU ticks of its process group / requests), its peak RSS (VmHWM) and, for the
memory cases, VmRSS samples. Then merge peers.sh's JSON (the main HTTP keep-alive comparison)
and write perf/results.json and perf/RESULTS.md.

Scenarios: newconn (wrk, `Connection: close`), 1 MiB responses, 1,000 keep-alive connections,
TCP bulk (tcp_proxy), concurrency sweep, 10,000 idle keep-alive connections (RSS per
connection), 1 GiB through a slow reader over HTTP/1.1 and over HTTP/2 (h2c) (RSS growth vs
the buffer limit).
Everything listens on / connects to 127.0.0.1 only. It kills only the process groups it
started. Benchmark tool, not imported by the proxy; no timed assertions anywhere.

    .venv/bin/python perf/bench.py [--only newconn,mib,c1000,tcp,sweep,idle,slow,slow-h2] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_configs import ADMIN, FT, HAP, HAP_TCP, NGX, RELAY, UP, render_config, write_configs  # perf/ is the script dir
from bench_memory import idle_connections, raise_nofile, slow_reader, slow_reader_h2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = ROOT / ".venv" / "bin" / "python"
PROXY_CPU, CLIENT_CPU = os.environ.get("PROXY_CPU", "0"), os.environ.get("CLIENT_CPU", "1")
CLK = os.sysconf("SC_CLK_TCK")
ENV = os.environ
DURATION = ENV.get("DURATION", "5s")
RUNS = int(ENV.get("RUNS", "1"))
SWEEP = [int(x) for x in ENV.get("SWEEP", "1 2").split()]
SWEEP_CPUS = ENV.get("SWEEP_CPUS", PROXY_CPU)      # e.g. 0-15 on a big free-threaded host
IDLE_CONNS = int(ENV.get("IDLE_CONNS", "10000"))
SLOW_MB = int(ENV.get("SLOW_MB", "1024"))
SLOW_RATE_MBPS = float(ENV.get("SLOW_RATE_MBPS", "200"))
SLOW_RUNS = int(ENV.get("SLOW_RUNS", "3"))
BULK_MB, BULK_REPS = int(ENV.get("BULK_MB", "100")), int(ENV.get("BULK_REPS", "5"))
# Rounds of the TCP bulk case: each is a few seconds, and pairs measured seconds apart are what
# cancels this VM's drift (the paired ratio), so more rounds than the wrk cases' RUNS.
BULK_ROUNDS = int(ENV.get("BULK_ROUNDS", "11"))
BUFFER_LIMIT = 1024 * 1024  # Envoy's per_connection_buffer_limit_bytes default (1 MiB)
# HAProxy refuses to start unless it can get ~2 fds per maxconn under the hard RLIMIT_NOFILE.
HAP_MAXCONN = max(1000, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100) // 2
                  if resource.getrlimit(resource.RLIMIT_NOFILE)[1] != resource.RLIM_INFINITY else 30000)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%T')}] {msg}", file=sys.stderr, flush=True)


def ftproxy_cmd(config: str | Path, concurrency: int) -> list[str]:
    """FTPROXY_CMD (a template with {config} {concurrency}) or proxyctl start, one epoch."""
    tmpl = ENV.get("FTPROXY_CMD") or (
        f"{ROOT}/.venv/bin/proxyctl start -c {{config}} --concurrency {{concurrency}} -l warning")
    return ["bash", "-c", "cd %s && exec %s" % (ROOT, tmpl.format(
        config=config, concurrency=concurrency))]


class Server:
    """One process group in its own session, pinned to `cpus`; killed by group on stop()."""

    def __init__(self, name: str, argv: list[str], cpus: str, work: Path) -> None:
        self.name = name
        self.log = open(work / f"{name}.log", "ab")
        self.p = subprocess.Popen(["taskset", "-c", cpus, *argv], stdout=self.log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, preexec_fn=raise_nofile)
        self.pgid = self.p.pid

    def pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-g", str(self.pgid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def ticks(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12])
            except (OSError, IndexError):
                pass
        return total

    def mem_kib(self, key: str = "VmRSS") -> int:
        """Sum of `key` over the group (proxyctl may supervise an epoch child)."""
        total = 0
        for pid in self.pids():
            try:
                m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
            except OSError:
                continue
            if m and not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"taskset"):
                total += int(m.group(1))
        return total

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(3)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


def wait_port(port: int, path: str = "/", secs: float = 15.0) -> None:
    end = time.monotonic() + secs
    while time.monotonic() < end:
        r = subprocess.run(["curl", "-fs", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"])
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not ready")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ------------------------------------------------------------------------------ configs
class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.results: dict = {}
        self.upstream = Server("upstream", ["nginx", "-p", f"{work}/", "-e", f"{work}/upstream.err",
                                            "-c", f"{work}/upstream.conf", "-g", "daemon off;"],
                               CLIENT_CPU, work)
        wait_port(UP)

    # -- servers under test ------------------------------------------------------------------
    def start(self, system: str, *, config: str = "http.yaml", concurrency: int = 1,
              cpus: str = PROXY_CPU) -> tuple[Server | None, int]:
        w = self.work
        if system == "direct":
            return None, UP
        if system == "haproxy":
            s, port = Server("haproxy", ["haproxy", "-db", "-f", f"{w}/haproxy.cfg"], cpus, w), HAP
        elif system == "haproxy-tcp":
            s, port = Server("haproxy", ["haproxy", "-db", "-f", f"{w}/haproxy.cfg"], cpus, w), HAP_TCP
        elif system == "python-relay":  # the reference for TCP bulk (perf/probe_relay.py)
            s, port = Server("python-relay", [str(PY), str(HERE / "probe_relay.py"), str(RELAY),
                                              str(UP)], cpus, w), RELAY
        elif system == "nginx":
            s, port = Server("nginx", ["nginx", "-p", f"{w}/", "-e", f"{w}/nginx-proxy.err", "-c",
                                       f"{w}/nginx-proxy.conf", "-g", "daemon off;"], cpus, w), NGX
        else:
            s, port = Server("ftproxy", ftproxy_cmd(render_config(w, config), concurrency), cpus, w), FT
        try:
            wait_port(port)
        except RuntimeError:
            s.stop()
            raise
        return s, port

    # -- clients ---------------------------------------------------------------------------
    def wrk(self, port: int, path: str = "/", conns: int = 50, duration: str = DURATION,
            headers: tuple[str, ...] = ()) -> dict:
        argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}",
                "--timeout", "10s", "-s", str(self.work / "report.lua")]
        for h in headers:
            argv += ["-H", h]
        out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True,
                             text=True, preexec_fn=raise_nofile).stdout
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {out[-500:]}")
        req, dur, p50, p99, errs, non2xx, nbytes = (int(x) for x in line.split("\t")[1:])
        return {"requests": req, "seconds": dur / 1e6, "rps": req / (dur / 1e6), "p50_ms": p50 / 1e3,
                "p99_ms": p99 / 1e3, "errors": errs, "non2xx": non2xx, "MBps": nbytes / (dur / 1e6) / 1e6}

    def measured(self, server: Server | None, fn, *a, **kw) -> dict:
        t0 = server.ticks() if server else 0
        r = fn(*a, **kw)
        if server:
            cpu_s = (server.ticks() - t0) / CLK
            r["proxy_cpu_pct"] = 100 * cpu_s / max(r["seconds"], 1e-9)
            if "requests" in r:
                r["proxy_cpu_us_per_req"] = cpu_s * 1e6 / max(r["requests"], 1)
            r["peak_rss_mib"] = server.mem_kib("VmHWM") / 1024
        return r

    def wrk_case(self, section: str, systems: list[str], **wrk_kw) -> None:
        """Each system: fresh start, 2 s warm-up, RUNS runs (median by RPS), stop."""
        for system in systems:
            kw = {}
            if isinstance(system, tuple):
                system, kw = system
            label = kw.pop("label", system)
            try:
                server, port = self.start(system, **kw)
            except RuntimeError as e:
                log(f"{section}/{label}: {e}")
                continue
            try:
                self.wrk(port, **{**wrk_kw, "duration": "2s"})
                runs = [self.measured(server, self.wrk, port, **wrk_kw) for _ in range(RUNS)]
            finally:
                if server:
                    server.stop()
            med = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            self.results.setdefault(section, {})[label] = {**med, "runs": runs}
            log(f"{section}/{label}: {med['rps']:.0f} rps p99 {med['p99_ms']:.2f} ms "
                f"{med.get('proxy_cpu_us_per_req', 0):.1f} us/req")

    def bulk_case(self) -> None:
        # Rounds interleave the systems (direct, HAProxy, ftproxy, direct, ...): this VM's
        # bulk speed drifts by 20-30 % within minutes, which back-to-back blocks per system
        # turned into ratios between 0.73 and 0.99 for the same build.
        url_path = "/big.bin"
        systems = (("direct", {}), ("haproxy-tcp", {}), ("python-relay", {}),
                   ("ftproxy", {"config": "tcp.yaml"}))
        started: list[tuple[str, Server | None, int]] = []
        try:
            for system, kw in systems:
                server, port = self.start(system, **kw)
                started.append((system, server, port))

            def run(port: int) -> dict:
                args = []
                for _ in range(BULK_REPS):
                    args += ["-o", "/dev/null", f"http://127.0.0.1:{port}{url_path}"]
                out = subprocess.run(["taskset", "-c", CLIENT_CPU, "curl", "-sf", "-w",
                                      "%{size_download} %{time_total}\n", *args],
                                     capture_output=True, text=True).stdout.split()
                b = sum(int(x) for x in out[0::2])
                t = sum(float(x) for x in out[1::2])
                bad = BULK_REPS - sum(int(x) == BULK_MB << 20 for x in out[0::2])
                return {"bytes": b, "seconds": t, "MBps": b / t / 1e6 if t else 0, "bad": bad}

            for _, _, port in started:
                run(port)  # warm-up
            runs: dict[str, list[dict]] = {system: [] for system, _, _ in started}
            for _ in range(BULK_ROUNDS):
                for system, server, port in started:
                    runs[system].append(self.measured(server, run, port))
        finally:
            for _, server, _ in started:
                if server:
                    server.stop()
        direct = runs.get("direct")
        for system, rs in runs.items():
            med = sorted(rs, key=lambda r: r["MBps"])[len(rs) // 2]
            entry = {**med, "runs": rs}
            if direct:  # per-round ratios: each pair measured a few seconds apart
                ratios = sorted(r["MBps"] / d["MBps"] for r, d in zip(rs, direct) if d["MBps"])
                entry["vs_direct_per_round"] = ratios
            self.results.setdefault("tcp_bulk", {})[system] = entry
            log(f"tcp_bulk/{system}: {med['MBps']:.0f} MB/s")

    def sweep_case(self) -> None:
        cases = [("ftproxy", {"concurrency": n, "cpus": SWEEP_CPUS, "label": f"ftproxy-c{n}"})
                 for n in SWEEP]
        # GIL demonstration: two workers allowed on both CPUs (the client shares CPU 1).
        if os.cpu_count() == 2 and SWEEP_CPUS == PROXY_CPU:
            cases.append(("ftproxy", {"concurrency": 2, "cpus": "0,1", "label": "ftproxy-c2-cpus0,1"}))
            cases.append(("ftproxy", {"concurrency": 1, "cpus": "0,1", "label": "ftproxy-c1-cpus0,1"}))
        self.wrk_case("sweep", cases)

    # -- memory: idle keep-alive connections ---------------------------------------------------
    def idle_case(self) -> None:
        for system in ("ftproxy", "haproxy", "nginx"):
            server, port = self.start(system)
            try:
                n = min(IDLE_CONNS, HAP_MAXCONN - 100) if system == "haproxy" else IDLE_CONNS
                self.results.setdefault("idle", {})[system] = idle_connections(server, port, n, CLIENT_CPU)
            finally:
                server.stop()
            r = self.results["idle"][system]
            log(f"idle/{system}: {r['open']} conns, {r['kib_per_conn']:.1f} KiB/conn")

    # -- memory: 1 GiB through a slow reader ------------------------------------------------
    def slow_case(self, h2: bool = False) -> None:
        # RSS growth moves by about 1 MiB between identical runs (allocator slack), so each
        # system gets SLOW_RUNS fresh servers and the run with the median growth is reported.
        # h2: the client speaks HTTP/2 with prior knowledge (HAProxy detects the preface on
        # its HTTP frontend, ftproxy's codec_type is AUTO); the upstream is HTTP/1.1 nginx.
        key, read = ("slow_reader_h2", slow_reader_h2) if h2 else ("slow_reader", slow_reader)
        for system in ("ftproxy", "haproxy"):
            runs = []
            for _ in range(SLOW_RUNS):
                server, port = self.start(system)
                try:
                    runs.append(read(server, port, SLOW_MB, SLOW_RATE_MBPS, BUFFER_LIMIT))
                finally:
                    server.stop()
            runs.sort(key=lambda r: r["rss_growth_kib"])
            r = dict(runs[len(runs) // 2])
            r["rss_growth_runs_kib"] = [x["rss_growth_kib"] for x in runs]
            self.results.setdefault(key, {})[system] = r
            log(f"{key}/{system}: {r['bytes']>>20} MiB, RSS growth {r['rss_growth_kib']} KiB "
                f"(median of {r['rss_growth_runs_kib']})")

SCENARIOS = ("newconn", "mib", "c1000", "tcp", "sweep", "idle", "slow", "slow-h2")


def run(only: list[str], work: Path) -> dict:
    b = Bench(work)
    peers3 = ["direct", "haproxy", "nginx", "ftproxy"]
    try:
        for sc in only:
            log(f"scenario {sc}")
            if sc == "newconn":
                b.wrk_case("newconn", peers3, headers=("Connection: close",))
            elif sc == "mib":
                b.wrk_case("mib", peers3, path="/1m.bin", conns=10)
            elif sc == "c1000":
                b.wrk_case("c1000", peers3, conns=1000)
            elif sc == "tcp":
                b.bulk_case()
            elif sc == "sweep":
                b.sweep_case()
            elif sc == "idle":
                b.idle_case()
            elif sc == "slow":
                b.slow_case()
            elif sc == "slow-h2":
                b.slow_case(h2=True)
    finally:
        b.upstream.stop()
    return b.results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--peers-json", default=str(HERE / "peers.json"))
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--md", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--command", default=" ".join(sys.argv))
    a = ap.parse_args()
    for port in (UP, HAP, NGX, FT, HAP_TCP, RELAY, ADMIN):
        if not port_free(port):
            log(f"port {port} is in use; stop what listens there first, or set PERF_PORT_BASE "
                "(a number, as perf/ports.py; perf/run.sh also takes auto)")
            return 1
    work = Path(tempfile.mkdtemp(prefix="ftbench."))
    write_configs(work, bulk_mb=BULK_MB, slow_mb=SLOW_MB, hap_maxconn=HAP_MAXCONN)
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        results = run([x for x in a.only.split(",") if x], work)
    finally:
        if not ENV.get("KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)
    peers = json.loads(Path(a.peers_json).read_text()) if Path(a.peers_json).exists() else None
    doc = {"meta": meta(a.command, started), "peers": peers, "scenarios": results}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    from report import render  # perf/report.py
    md = Path(a.md)
    md.write_text(render(doc, md.read_text() if md.exists() else None))
    log(f"wrote {a.out} and {a.md}")
    return 0


def meta(command: str, started) -> dict:
    def ver(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout or r.stderr).splitlines()[0].strip()
        except (OSError, IndexError):
            return "n/a"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    py = subprocess.run([str(PY), "-c", "import sys,sysconfig;print(sys.version.split()[0],"
                         "'free-threaded' if sysconfig.get_config_var('Py_GIL_DISABLED') else 'GIL')"],
                        capture_output=True, text=True).stdout.strip()
    return {"date": started.isoformat(timespec="seconds"), "command": command,
            "machine": f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
            "python": py, "ftproxy_cmd": " ".join(ftproxy_cmd("<config>", 1)[2:]),
            "versions": {"wrk": ver(["wrk", "-v"]), "haproxy": ver(["haproxy", "-v"]),
                         "nginx": ver(["nginx", "-v"])},
            "params": {"DURATION": DURATION, "RUNS": RUNS, "SWEEP": SWEEP, "SWEEP_CPUS": SWEEP_CPUS,
                       "IDLE_CONNS": IDLE_CONNS, "SLOW_MB": SLOW_MB, "SLOW_RATE_MBPS": SLOW_RATE_MBPS, "SLOW_RUNS": SLOW_RUNS,
                       "BULK_MB": BULK_MB, "BULK_REPS": BULK_REPS, "BULK_ROUNDS": BULK_ROUNDS},
            "pinning": f"server under test on CPU {PROXY_CPU}; clients and upstream nginx on CPU {CLIENT_CPU}"}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
