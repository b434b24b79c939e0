"""Time from the last file of a complete fileset landing to its import starting.

Runs the real CLI (`omero-dropbox run`) with a recording importer on tmpfs, drops
complete ICS (.ics + .ids) filesets one at a time, and measures from the moment the
last member is closed to the moment the importer process starts. Medians of N runs.

    python benches/bench_engine_latency.py [--runs 5] [--complete-wait 5] [--dir-import-wait 60]

Upstream OMERO.dropbox, by construction, needs at least the worker batch window
(0.25 x dirImportWait = 15 s) plus a JVM start for `import -f` plus dirImportWait
(60 s) before an import starts: >= 75 s with default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.appended import complete_lines  # noqa: E402

RECORDER = """
import json, os, sys, time
with open(os.environ["RECORD_FILE"], "a") as fh:
    fh.write(json.dumps({"started": time.time(), "files": sys.argv[1:]}) + "\\n")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--complete-wait", type=float, default=5.0)
    ap.add_argument("--dir-import-wait", type=float, default=60.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="odb-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    dropbox, record, recorder = base / "DropBox", base / "imports.jsonl", base / "rec.py"
    (dropbox / "amy").mkdir(parents=True)
    recorder.write_text(RECORDER)
    env = dict(os.environ, RECORD_FILE=str(record))
    argv = [
        sys.executable, "-m", "omero_dropbox.cli", "run",
        "-D", f"omero.fs.watchDir={dropbox}",
        "-D", f"omero.fs.dirImportWait={args.dir_import_wait}",
        "-D", f"omero.fs.ng.completeWait={args.complete_wait}",
        "-D", "omero.fs.throttleImport=0",
        "--state-dir", str(base / "state"),
        "--importer-command", f"{sys.executable} {recorder} {{files}}",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    time.sleep(2)
    latencies = []
    try:
        for i in range(args.runs):
            d = dropbox / "amy" / f"run{i}"
            d.mkdir()
            (d / "cell.ids").write_bytes(os.urandom(4096))
            (d / "cell.ics").write_bytes(b"\t\nics_version\t1.0\nfilename\tcell\n")
            landed = time.time()
            deadline = time.monotonic() + args.dir_import_wait + 30
            while time.monotonic() < deadline:
                lines = complete_lines(record)
                if len(lines) > i:
                    latencies.append(json.loads(lines[i])["started"] - landed)
                    break
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    print(f"complete ICS fileset, last file -> import start (completeWait={args.complete_wait}s):")
    print(f"  runs={len(latencies)} median={statistics.median(latencies):.2f}s max={max(latencies):.2f}s")
    print("  upstream lower bound with defaults: >= 75 s (15 s batch + JVM + 60 s dirImportWait)")


if __name__ == "__main__":
    main()
