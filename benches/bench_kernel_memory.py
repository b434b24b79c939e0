#!/usr/bin/env python
"""Kernel memory the watcher's watches hold, which RSS does not show: our inotify backend against
our fanotify backend on a tree of directories.

    python benches/bench_kernel_memory.py [--dirs 100000] [--runs 3] [--base /dev/shm]

Each inotify watch is a mark in unreclaimable kernel slab; fanotify's one filesystem mark is not
per directory. Measured as the change of ``SUnreclaim`` in /proc/meminfo between before the
watcher starts and once its constructor returned (every watch placed), with the watcher alive;
the figure is system-wide, so other activity on the machine adds noise (median of the runs).
Needs root for fanotify (CAP_SYS_ADMIN).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile

from omero_dropbox import Watcher


def sunreclaim_kib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("SUnreclaim:"):
                return int(line.split()[1])
    raise RuntimeError("no SUnreclaim in /proc/meminfo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dirs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", default="/dev/shm")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-kmem-", dir=args.base)
    try:
        per = 1000
        for i in range(args.dirs):
            os.makedirs(os.path.join(root, f"a{i // per:04d}", f"b{i % per:04d}"))
        results: dict[str, list[float]] = {"native": [], "fanotify": []}
        for _ in range(args.runs):
            for backend in results:
                before = sunreclaim_kib()
                with Watcher(root, backend=backend) as w:
                    after = sunreclaim_kib()
                    assert [b for _, b in w.backends()] == [backend]
                results[backend].append((after - before) / 1024)
        for backend, mib in results.items():
            print(
                f"{backend:9s} unreclaimable kernel slab for {args.dirs:,} directories: "
                f"median {statistics.median(mib):.1f} MiB (runs: {', '.join(f'{m:.1f}' for m in mib)})"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
