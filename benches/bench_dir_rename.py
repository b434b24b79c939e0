#!/usr/bin/env python
"""What a directory rename costs our watcher while it tracks many files (issue 15).

    python benches/bench_dir_rename.py [--dirs 10000] [--per-dir 10] [--renames 500]

Builds ``dirs`` directories of ``per-dir`` empty files on tmpfs, starts the watcher on them
(the files are its baseline), renames ``renames`` of the directories in a burst and waits for
every file's ``moved`` event. CPU is this process's (the watcher's thread and the consumer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from omero_dropbox import Watcher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dirs", type=int, default=10_000)
    ap.add_argument("--per-dir", type=int, default=10)
    ap.add_argument("--renames", type=int, default=500)
    ap.add_argument("--base", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(dir=args.base, prefix="odb-bench-rename-")
    try:
        for d in range(args.dirs):
            os.mkdir(f"{root}/d{d:06d}")
            for f in range(args.per_dir):
                open(f"{root}/d{d:06d}/f{f}.tif", "wb").close()
        with Watcher(root, settle=0.2) as w:
            cpu0, t0 = time.process_time(), time.monotonic()
            for d in range(args.renames):
                os.rename(f"{root}/d{d:06d}", f"{root}/e{d:06d}")
            moved, want = 0, args.renames * args.per_dir
            while moved < want:
                batch = w.next_batch(timeout=120)
                assert batch, f"only {moved} of {want} moves reported within 120 s"
                moved += sum(1 for e in batch if e.kind == "moved")
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        print(
            f"{args.renames} directory renames ({args.per_dir} files each) with "
            f"{args.dirs * args.per_dir:,} tracked files: {wall:.3f} s wall, {cpu:.3f} s CPU, "
            f"{1000 * cpu / args.renames:.3f} ms CPU per rename"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
