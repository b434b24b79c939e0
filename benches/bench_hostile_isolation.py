"""How long one user's hostile input delays another user's import.

Runs the real CLI (`omero-dropbox run --importer record`) on tmpfs with two users. In each
scenario "mallory" drops something pathological, and right after it "amy" drops one plain
image; the figure is amy's delay, from her file closed to her import recorded, against the
same drop with nothing else going on (baseline). Medians of N runs, one fresh service each.

    python benches/bench_hostile_isolation.py [--runs 3] [--junk 200000] [--keys 2000]

Scenarios:
  baseline   amy's file alone
  junk       mallory writes JUNK empty files of a format nobody reads, in 200 folders
  keys       mallory writes KEYS hostile key files: backtracking regex patterns, MetaMorph .nd
             files declaring 10^10 planes, patterns naming another user's files, and patterns of
             99,999 members that never arrive (within the member cap, so they are really grouped)

The machine is a noisy 2-core VM: read the medians and the ratios, not single runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.appended import complete_lines  # noqa: E402

ND = (
    b'"NDInfoFile", Version 1.0\r\n"DoTimelapse", TRUE\r\n"NTimePoints", 100000\r\n'
    b'"DoStage", TRUE\r\n"NStagePositions", 100000\r\n"DoWave", FALSE\r\n"EndFile"\r\n'
)


def write_junk(mallory: Path, count: int) -> None:
    for i in range(count):
        d = mallory / f"junk{i % 200:03d}"
        if i < 200:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:07d}.junk", "wb"):
            pass


def write_keys(mallory: Path, count: int) -> None:
    for i in range(count):
        d = mallory / f"keys{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        kind = i % 4
        if kind == 0:
            (d / f"a{i}").mkdir(exist_ok=True)
            (d / f"a{i}" / ("a" * 60 + ".tif")).write_bytes(b"")
            (d / f"a{i}" / "hang.pattern").write_bytes(b"(a|aa)*c\n")
        elif kind == 1:
            (d / f"huge{i}.nd").write_bytes(ND)
        elif kind == 2:
            (d / f"steal{i}.pattern").write_bytes(b"../../amy/p_<1-2>.tif\n")
        else:
            (d / f"many{i}.pattern").write_bytes(f"m{i}_<00001-99999>.tif\n".encode())


SCENARIOS: dict[str, Callable[[Path, argparse.Namespace], None]] = {
    "baseline": lambda mallory, args: None,
    "junk": lambda mallory, args: write_junk(mallory, args.junk),
    "keys": lambda mallory, args: write_keys(mallory, args.keys),
}


def one_run(name: str, args: argparse.Namespace) -> float:
    base = Path(tempfile.mkdtemp(prefix="odb-bench-iso-", dir="/dev/shm"))
    dropbox, state = base / "DropBox", base / "state"
    (dropbox / "amy").mkdir(parents=True)
    (dropbox / "mallory").mkdir(parents=True)
    argv = [
        sys.executable, "-m", "omero_dropbox.cli", "run",
        "-D", f"omero.fs.watchDir={dropbox}",
        "-D", f"omero.fs.dirImportWait={args.dir_import_wait}",
        "-D", "omero.fs.ng.completeWait=0.5",
        "-D", "omero.fs.throttleImport=0",
        "--state-dir", str(state), "--importer", "record",
    ]  # fmt: skip
    log = open(base / "service.log", "wb")
    proc = subprocess.Popen(argv, stderr=log, stdout=log)
    try:
        deadline = time.monotonic() + 60
        while b"Started OMERO.fs DropBox client" not in (base / "service.log").read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((base / "service.log").read_text())
            time.sleep(0.05)
        SCENARIOS[name](dropbox / "mallory", args)
        target = dropbox / "amy" / "cells.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\namy")
        landed = time.time()
        record = state / "imports.jsonl"
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            for line in complete_lines(record):
                doc = json.loads(line)
                if doc.get("user") == "amy":
                    return float(doc["at"]) - landed
            time.sleep(0.05)
        raise RuntimeError(f"amy's file was not imported within {args.timeout} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--junk", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=2_000)
    ap.add_argument("--dir-import-wait", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    for name in args.scenarios.split(","):
        results[name] = [one_run(name, args) for _ in range(args.runs)]
        print(f"{name}: {', '.join(f'{d:.2f}' for d in results[name])} s", flush=True)
    base = statistics.median(results["baseline"]) if "baseline" in results else None
    print(f"\namy's single .png, closed -> import recorded (median of {args.runs} runs)")
    for name, delays in results.items():
        med = statistics.median(delays)
        extra = f"  +{med - base:.2f} s over baseline" if base is not None and name != "baseline" else ""
        print(f"  {name:<9} median {med:6.2f} s  max {max(delays):6.2f} s{extra}")


if __name__ == "__main__":
    main()
