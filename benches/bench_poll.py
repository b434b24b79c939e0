#!/usr/bin/env python
"""Polling 100,000 files in 10,000 directories (issue 15 item 6): idle CPU and what is missed.

    python benches/bench_poll.py [--dirs 10000] [--per-dir 10] [--runs 3] [--idle 30]

Builds the tree on tmpfs once, then for each run and each library starts a child process
that polls it every second: ours (``backend="poll"``, defaults otherwise: settle 2 s, full
sweep every 30 s) and watchfiles' ``RustNotify`` with ``force_polling=True`` (notify's
PollWatcher, which our previous code used). After a 5 s warm-up the child measures its own
CPU time (all threads) over ``--idle`` seconds (30: one full sweep of ours falls inside the
window, so its cost is counted at its real rate), then plays the scenarios and times when
each file is first reported (watchfiles: any change naming it; ours: READY):

* ``new``: one new file in a deep directory.
* ``burst``: 1,000 new files spread over 100 directories.
* ``same_second``: a settled file rewritten with another size, its mtime set back into the
  same second as before (the rewrite notify's whole-second comparison missed).
* ``in_place``: a settled file rewritten in place (no directory changes): ours finds it by
  the full sweep.

A file not reported within 45 s counts as missed. Medians over the runs are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

LIBS = ("ours", "watchfiles")
DEADLINE = 45.0
WARMUP = 5.0


class Ours:
    def __init__(self, root: str) -> None:
        from omero_dropbox import Watcher

        self.w = Watcher(root, backend="poll", poll_interval=1.0)
        self.seen: dict[str, float] = {}

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            for e in self.w.next_batch(timeout=min(left, 0.5)) or []:
                self.seen.setdefault(e.path, time.monotonic())


class WatchFiles:
    def __init__(self, root: str) -> None:
        from watchfiles._rust_notify import RustNotify

        # (paths, debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied)
        self.rn = RustNotify([root], False, True, 1000, True, False)
        self.seen: dict[str, float] = {}

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            raw = self.rn.watch(1600, 50, max(1, int(min(left, 0.5) * 1000)), None)
            if isinstance(raw, str):
                continue
            now = time.monotonic()
            for _, path in raw:
                self.seen.setdefault(path, now)


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def wait_all(lib: Ours | WatchFiles, paths: list[str], since: float) -> tuple[float | None, int]:
    """Seconds until the last of `paths` was reported (None if some never were), and how many were missed."""
    end = since + DEADLINE
    while time.monotonic() < end and any(p not in lib.seen for p in paths):
        lib.pump(0.2)
    missed = sum(p not in lib.seen for p in paths)
    return (None if missed else max(lib.seen[p] for p in paths) - since), missed


def child(name: str, root: str, run: int, idle: float) -> dict[str, Any]:
    t0 = time.monotonic()
    lib: Ours | WatchFiles = Ours(root) if name == "ours" else WatchFiles(root)
    startup = time.monotonic() - t0
    lib.pump(WARMUP)
    cpu0, w0 = time.process_time(), time.monotonic()
    lib.pump(idle)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - w0) * 100
    out: dict[str, Any] = {"startup_s": startup, "idle_cpu_pct": cpu}
    tops = sorted(os.listdir(root))
    subs = sorted(os.listdir(f"{root}/{tops[-1]}"))
    deep = f"{root}/{tops[-1]}/{subs[-1]}"
    # new
    p = f"{deep}/new-{run}.tif"
    t = time.monotonic()
    write(p, b"n" * 1000)
    out["new_s"], out["new_missed"] = wait_all(lib, [p], t)
    # burst
    spread = [f"{root}/{tops[d % len(tops)]}/{subs[d % len(subs)]}" for d in range(100)]
    burst = [f"{d}/burst-{run}-{i}.tif" for d in spread for i in range(10)]
    t = time.monotonic()
    for b in burst:
        write(b, b"b" * 100)
    out["burst_s"], out["burst_missed"] = wait_all(lib, burst, t)
    # same_second: a settled baseline file, rewritten with another size within the same second
    p = f"{root}/{tops[len(tops) // 2]}/{subs[1]}/f3.tif"
    first = os.stat(p).st_mtime_ns
    sec, ns = divmod(first, 1_000_000_000)
    t = time.monotonic()
    write(p, b"s" * (1000 + run))
    os.utime(p, ns=(first, sec * 1_000_000_000 + (ns + 1) % 1_000_000_000))
    lib.seen.pop(p, None)
    out["same_second_s"], out["same_second_missed"] = wait_all(lib, [p], t)
    # in_place: a settled baseline file rewritten in place
    p = f"{root}/{tops[len(tops) * 7 // 10]}/{subs[2]}/f4.tif"
    lib.seen.pop(p, None)
    t = time.monotonic()
    with open(p, "r+b") as fh:
        fh.write(b"i" * (500 + run))
    out["in_place_s"], out["in_place_missed"] = wait_all(lib, [p], t)
    return out


def build(dirs: int, per_dir: int, base: str | None) -> str:
    root = tempfile.mkdtemp(dir=base, prefix="odb-bench-poll-")
    top = max(1, int(dirs**0.5))
    for d in range(top):
        for s in range(dirs // top):
            sub = f"{root}/d{d:04d}/s{s:04d}"
            os.makedirs(sub)
            for f in range(per_dir):
                write(f"{sub}/f{f}.tif", b"x" * 100)
    # Old mtimes: nothing in the tree is being written when watching starts.
    old = time.time() - 3600
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), (old, old))
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dirs", type=int, default=10_000)
    ap.add_argument("--per-dir", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--base", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--child", nargs=3, metavar=("LIB", "ROOT", "RUN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, root, run = args.child
        print(json.dumps(child(name, root, int(run), args.idle)), flush=True)
        return
    root = build(args.dirs, args.per_dir, args.base)
    results: dict[str, list[dict[str, Any]]] = {lib: [] for lib in LIBS}
    try:
        for run in range(args.runs):
            for lib in LIBS:
                cmd = [sys.executable, __file__, "--idle", str(args.idle), "--child", lib, root, str(run)]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                results[lib].append(r)
                print(lib, run, json.dumps(r), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.dirs} dirs x {args.per_dir} files, poll interval 1 s, median of {args.runs} runs")
    keys = list(results["ours"][0])
    print(f"{'':24}" + "".join(f"{lib:>14}" for lib in LIBS) + f"{'ratio':>10}")
    for key in keys:
        med: list[float | None] = []
        for lib in LIBS:
            vals = [r[key] for r in results[lib]]
            med.append(None if any(v is None for v in vals) else statistics.median(vals))
        ratio = f"{med[0] / med[1]:.2f}" if med[0] is not None and med[1] else "-"
        cells = "".join(f"{'never' if m is None else f'{m:.3g}':>14}" for m in med)
        print(f"{key:24}{cells}{ratio:>10}")


if __name__ == "__main__":
    main()
