"""The journal as queue: CPU per claim+finish with 10k filesets queued, and the cost of the
status counts (queue_counts, i.e. ImportQueue.snapshot) with 100k queued.

    .venv/bin/python benches/bench_queue.py [--queued 10000] [--big 100000]

The journal lives on /dev/shm when there is one, so fsync is free and the numbers are the
SQL and Python cost (on a disk, each commit adds one fsync, as before).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from omero_dropbox.journal import Journal
from omero_dropbox.states import FilesetState


def fill(j: Journal, n: int, users: int) -> None:
    with j.batch():
        for i in range(n):
            fid, user = f"f{i:07d}", f"u{i % users}"
            key = f"/drop/{user}/{fid}.tif"
            j.upsert_fileset(fid, user, key, [key], "Fake")
            j.enqueue(fid, "complete")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20)
    args = ap.parse_args()
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    try:
        j = Journal(base / "a", check=False)
        fill(j, args.queued, args.users)
        n = 2000
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            c = j.claim_next(time.time(), worker="bench", max_running=4)
            assert c is not None
            j.finish(c.id, c.token, FilesetState.IMPORTED, "attempt 1")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"claim+finish at {args.queued} queued, {args.users} users: "
            f"{cpu / n * 1e6:.0f} us CPU, {wall / n * 1e6:.0f} us wall per fileset"
        )
        j.close()
        j = Journal(base / "b", check=False)
        fill(j, args.big, args.users)
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            j.queue_counts(time.time())
        per = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            j.next_due_at()
        due = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        c = j.claim_next(time.time(), worker="bench", max_running=4)
        one = time.perf_counter() - t
        assert c is not None
        print(
            f"at {args.big} queued: queue_counts (snapshot) {per * 1e3:.2f} ms, "
            f"next_due_at {due * 1e6:.0f} us, one claim {one * 1e6:.0f} us"
        )
        j.close()
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
