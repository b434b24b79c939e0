#!/usr/bin/env python
"""Upstream's MonitorServer (omero-dropbox 5.7.0) versus ours, over real Ice, same client, same bursts.

    python benches/bench_ice_monitor.py [--runs N] [--scale S] [--servers ng,upstream] [--json FILE]

Each server runs as its own process, started exactly as in the tests (``tests/support/ice.py``:
loopback tcp, ``Ice.MessageSizeMax=65536`` as in OMERO's templates). The client is a
``MonitorClient`` servant in this process that records every ``fsEventHappened``; the files are
written by this process on tmpfs (``--base``, default /dev/shm). Monitor: ``Persistent``,
``Creation``, ``Follow``, ``blockSize=0`` (upstream DropBox's settings). Scenarios (S=1):

1. ``start``   - a tree of 100 x 100 = 10,000 existing directories: seconds for
                 ``createMonitor`` + ``startMonitor``, then until a file written into the last
                 directory is delivered (``ready``);
2. ``burst``   - 100,000 files (10 per directory) written into those directories as fast as one
                 writer can: distinct files delivered as ``Create``, seconds from the first write
                 to the last delivery, server CPU seconds (user+system of the server process);
3. ``newdirs`` - on a fresh server and an empty tree, 5,000 times ``mkdir -p n<i>/x/y`` then
                 write ``n<i>/x/y/f.dat`` at once: files delivered.

A run ends when every file is delivered or nothing new arrived for ``--quiet`` seconds
(default 20). Medians over ``--runs`` (default 3), ranges in brackets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from tests.support.ice import (  # noqa: E402
    ClientSide,
    ServerProcess,
    require_ice,
    start_ng_monitor_server,
    start_upstream_monitor_server,
)

Ice, omero = require_ice()
PAYLOAD = b"x" * 64


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _wait_delivered(
    client: ClientSide, want: set[str], quiet: float, cap: float = 600.0
) -> tuple[int, float]:
    """(files of ``want`` delivered, monotonic time of the last new delivery)."""
    start = last_change = time.monotonic()
    seen = 0
    got: set[str] = set()
    while True:
        new = client.received.calls[seen:]  # calls are only appended: take each exactly once
        seen += len(new)
        for _, evs in new:
            for path, kind in evs:
                if kind == "Create" and path in want and path not in got:
                    got.add(path)
                    last_change = time.monotonic()
        if len(got) == len(want):
            return len(got), last_change
        now = time.monotonic()
        if now - last_change > quiet or now - start > cap:
            return len(got), last_change
        time.sleep(0.05)


def _start(server_name: str, log_dir: Path) -> tuple[ServerProcess, str]:
    if server_name == "ng":
        return start_ng_monitor_server()
    return start_upstream_monitor_server(log_dir)


def newdirs_run(server_name: str, base: Path, scale: float, quiet: float) -> dict[str, Any]:
    """Scenario 3 on a fresh server and an empty tree."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-ice-{server_name}-", dir=base))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ice-log-"))
    server, proxy = _start(server_name, log_dir)
    client = ClientSide(Ice, omero)
    result: dict[str, Any] = {"server": server_name}
    try:
        ms = client.server(proxy)
        (root / "new").mkdir()
        mid = client.create(ms, root, types=["Creation"], mode="Follow")
        ms.startMonitor(mid)
        n_new = max(1, round(5000 * scale))
        new_files = []
        t2 = time.monotonic()
        for i in range(n_new):
            d = root / "new" / f"n{i}" / "x" / "y"
            d.mkdir(parents=True)
            f = d / "f.dat"
            with open(f, "wb") as fh:
                fh.write(PAYLOAD)
            new_files.append(str(f))
        got, last = _wait_delivered(client, set(new_files), quiet)
        result["newdirs_files"] = n_new
        result["newdirs_delivered"] = got
        result["newdirs_s"] = last - t2
        ms.destroyMonitor(mid)
    finally:
        client.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


def one_run(server_name: str, base: Path, scale: float, quiet: float) -> dict[str, Any]:
    """Scenarios 1 and 2 on one server: start on the tree, then the burst into it."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-ice-{server_name}-", dir=base))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ice-log-"))
    top = max(1, round(100 * scale**0.5))
    dirs = [root / "tree" / f"d{i:03}" / f"e{j:03}" for i in range(top) for j in range(top)]
    for d in dirs:
        d.mkdir(parents=True)
    per_dir = 10
    server, proxy = _start(server_name, log_dir)
    proc = psutil.Process(server.proc.pid)
    client = ClientSide(Ice, omero)
    result: dict[str, Any] = {"server": server_name, "dirs": len(dirs)}
    try:
        ms = client.server(proxy)
        # 1. start on the tree
        t0 = time.monotonic()
        mid = client.create(ms, root, types=["Creation"], mode="Follow")
        ms.startMonitor(mid)
        result["start_call_s"] = time.monotonic() - t0
        sentinel = dirs[-1] / "zz_sentinel.dat"
        sentinel.write_bytes(PAYLOAD)
        got, last = _wait_delivered(client, {str(sentinel)}, quiet=max(quiet, 60.0))
        result["ready_s"] = (last - t0) if got else None
        # 2. burst into existing directories
        files = [d / f"f{k}.dat" for d in dirs for k in range(per_dir)]
        cpu0 = _cpu(proc)
        t1 = time.monotonic()
        for f in files:
            with open(f, "wb") as fh:
                fh.write(PAYLOAD)
        result["write_s"] = time.monotonic() - t1
        got, last = _wait_delivered(client, {str(f) for f in files}, quiet)
        result["burst_files"] = len(files)
        result["burst_delivered"] = got
        result["burst_s"] = last - t1
        result["burst_cpu_s"] = _cpu(proc) - cpu0
        ms.destroyMonitor(mid)
    finally:
        client.close()
        server.stop()
        notes = [ln for ln in server.log.splitlines() if any(w in ln for w in ("WARN", "ERROR", "destroyed"))]
        result["server_notes"] = notes[:10]
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _median(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} [{min(vals):.2f}-{max(vals):.2f}]"


def _pct(delivered: list[int], total: list[int]) -> str:
    pct = [100.0 * d / t for d, t in zip(delivered, total, strict=True)]
    return f"{statistics.median(delivered):.0f} / {total[0]} ({statistics.median(pct):.1f} %)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--servers", default="ng,upstream")
    ap.add_argument("--base", type=Path, default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--quiet", type=float, default=20.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scenarios", default="tree,newdirs", help="tree (start + burst), newdirs")
    args = ap.parse_args()
    with open("/proc/sys/fs/inotify/max_queued_events") as fh:
        queued = fh.read().strip()
    with open("/proc/sys/fs/inotify/max_user_watches") as fh:
        watches = fh.read().strip()
    print(f"inotify: max_queued_events={queued} max_user_watches={watches}; cpus={os.cpu_count()}")
    results: dict[str, list[dict[str, Any]]] = {}
    scenarios = args.scenarios.split(",")
    for run in range(args.runs):
        for name in args.servers.split(","):
            r: dict[str, Any] = {}
            if "tree" in scenarios:
                r.update(one_run(name, args.base, args.scale, args.quiet))
            if "newdirs" in scenarios:
                r.update(newdirs_run(name, args.base, args.scale, args.quiet))
            print(f"run {run + 1} {name}: {json.dumps(r)}", flush=True)
            results.setdefault(name, []).append(r)
    print()
    print(
        "| server | start+ready on dirs (s) | burst delivered | burst time (s) | burst server CPU (s) "
        "| new-dir files delivered |"
    )
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        cells = ["n/a"] * 5
        if "tree" in scenarios:
            cells[:4] = [
                f"{_median([r['ready_s'] for r in rs])} ({rs[0]['dirs']} dirs)",
                _pct([r["burst_delivered"] for r in rs], [r["burst_files"] for r in rs]),
                _median([r["burst_s"] for r in rs]),
                _median([r["burst_cpu_s"] for r in rs]),
            ]
        if "newdirs" in scenarios:
            cells[4] = _pct([r["newdirs_delivered"] for r in rs], [r["newdirs_files"] for r in rs])
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
