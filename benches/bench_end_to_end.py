#!/usr/bin/env python
"""End-to-end throughput: files written into the DropBox to filesets recorded by the importer.

    python benches/bench_end_to_end.py [--files N] [--users U] [--runs R] [--profile [--gil]]
                                       [--dir-import-wait S] [--fsyncs] [--keep] [-D NAME=VALUE]

Runs the real CLI (``omero-dropbox run --importer record``: imports nothing, appends one JSON
line per fileset to ``<state-dir>/imports.jsonl``) with its DropBox and state directory on
``/dev/shm``, ``dirImportWait=2`` and ``throttleImport=0``. Once it has started, one Python
writer creates N files (default 100,000) as fast as it can: mixed filesets, half ICS pairs
(``x.ics`` + ``x.ids``) and half single TIFFs (``x.tif``), dealt round-robin to U users (20),
500 files a folder (folders made before the first write). Then it waits (with a deadline) until
every fileset is recorded, and a further ``dirImportWait`` + 3 s for any duplicate.

Reported, as one JSON line per run (``--json FILE`` appends them there too):

* ``seconds``: first write to the last fileset recorded; ``files_per_s`` = N / seconds;
* ``lost``: filesets written but never recorded; ``duplicated``: recorded more than once;
  ``wrong``: recorded with other members than written;
* ``writer_s``: how long the writer took; ``service_cpu_s``: the service's user+system CPU;
* with ``--profile``, py-spy samples the service (``py-spy record --format raw --threads``)
  and the top functions by own time and by total time are printed (``profile_top``); with
  ``--gil`` too, only threads holding the GIL are sampled: where the Python CPU goes;
* with ``--fsyncs``, ``perf stat`` counts the service's fsync/fdatasync calls from the first
  write to the end (syscall tracepoints; needs perf and root or perf_event_paranoid <= 1).

The machine is a noisy shared VM: read medians of several runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.appended import complete_lines  # noqa: E402

PER_FOLDER = 500
ICS_HEADER = (
    "\t\nics_version\t1.0\nfilename\t{stem}\nlayout\tparameters\t3\nlayout\torder\tbits\tx\ty\n"
    "layout\tsizes\t8\t4\t3\nlayout\tcoordinates\tvideo\nlayout\tsignificant_bits\t8\n"
    "representation\tformat\tinteger\nrepresentation\tsign\tunsigned\n"
    "representation\tcompression\tuncompressed\nrepresentation\tbyte_order\t1\nend\n"
)
TIFF = b"II*\x00\x08\x00\x00\x00" + bytes(64)
IDS = bytes(range(12))


def plan(dropbox: Path, files: int, users: int) -> list[tuple[str, tuple[str, ...]]]:
    """The filesets to write, in writing order: (key, members). Fileset i goes to user i % U;
    even ones are ICS pairs, odd ones TIFFs, until N files."""
    out: list[tuple[str, tuple[str, ...]]] = []
    count = [0] * users
    total = 0
    i = 0
    while total < files:
        u = i % users
        folder = dropbox / f"user{u:02d}" / f"run{count[u] // PER_FOLDER:04d}"
        stem = f"img{i:07d}"
        if i % 2 == 0 and files - total >= 2:
            members: tuple[str, ...] = (str(folder / f"{stem}.ics"), str(folder / f"{stem}.ids"))
        else:
            members = (str(folder / f"{stem}.tif"),)
        out.append((members[0], members))
        count[u] += len(members)
        total += len(members)
        i += 1
    return out


def write_all(filesets: list[tuple[str, tuple[str, ...]]]) -> float:
    """Write every member; returns the wall time of the first write (time.time())."""
    for folder in {os.path.dirname(m) for _, ms in filesets for m in ms}:
        os.makedirs(folder, exist_ok=True)
    first = time.time()
    for _key, members in filesets:
        for m in members:
            if m.endswith(".ics"):
                data = ICS_HEADER.format(stem=os.path.basename(m)[:-4]).encode()
            elif m.endswith(".ids"):
                data = IDS
            else:
                data = TIFF
            with open(m, "wb") as fh:
                fh.write(data)
    return first


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_top(raw: Path, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top functions of a py-spy raw (collapsed) profile, as % of the samples: by own time and
    by total time (a function counted once per stack), and by thread."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        samples += k
        threads[frames[0]] += k  # --threads: the first frame names the thread
        frames = frames[1:] or frames
        own[_short(frames[-1])] += k
        for f in {_short(f) for f in frames}:
            total[f] += k
    pct = 100.0 / max(samples, 1)
    return {
        "own": [(f, round(c * pct, 1)) for f, c in own.most_common(n)],
        "total": [(f, round(c * pct, 1)) for f, c in total.most_common(n)],
        "threads": [(t, round(c * pct, 1)) for t, c in threads.most_common(8)],
    }


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py:123)``."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rsplit('/', 1)[-1]}"


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="odb-bench-e2e-", dir=args.base))
    dropbox, state = base / "DropBox", base / "state"
    for u in range(args.users):
        (dropbox / f"user{u:02d}").mkdir(parents=True)
    argv = [
        sys.executable, "-m", "omero_dropbox.cli", "run",
        "-D", f"omero.fs.watchDir={dropbox}",
        "-D", f"omero.fs.dirImportWait={args.dir_import_wait}",
        "-D", "omero.fs.throttleImport=0",
        "--state-dir", str(state), "--importer", "record",
    ]  # fmt: skip
    for prop in args.define:
        argv[4:4] = ["-D", prop]
    log_path = base / "service.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stderr=log, stdout=log)
    spy: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"run": run, "files": args.files, "users": args.users}
    try:
        deadline = time.monotonic() + 120
        while b"Started OMERO.fs DropBox client" not in log_path.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(log_path.read_text())
            time.sleep(0.05)
        service_pid = proc.pid
        counter: subprocess.Popen[bytes] | None = None
        if args.fsyncs:
            # Kernel tracepoints (perf stat): counts every thread's calls without slowing them.
            counter = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-o", str(base / "fsyncs.csv"), "-p", str(service_pid),
                 "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        filesets = plan(dropbox, args.files, args.users)
        expected = {key: members for key, members in filesets}
        if args.profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(service_pid), "-o", str(base / "profile.txt"),
                 "--format", "raw", "--threads", "--function", "--rate", "200", "--nonblocking",
                 *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
        cpu0 = cpu_seconds(service_pid)
        first = write_all(filesets)
        result["writer_s"] = round(time.time() - first, 2)
        record = state / "imports.jsonl"
        seen: collections.Counter[str] = collections.Counter()
        wrong = 0
        last_at = first
        done_lines = 0
        deadline = time.monotonic() + args.timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            lines = complete_lines(record) if record.exists() else []
            for line in lines[done_lines:]:
                doc = json.loads(line)
                seen[doc["key"]] += 1
                last_at = max(last_at, float(doc["at"]))
                if tuple(sorted(doc["files"])) != tuple(sorted(expected.get(doc["key"], ()))):
                    wrong += 1
            done_lines = len(lines)
            if settle_until is None and all(k in seen for k in expected):
                result["service_cpu_s"] = round(cpu_seconds(service_pid) - cpu0, 1)
                settle_until = time.monotonic() + args.dir_import_wait + 3.0
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            time.sleep(0.2)
        seconds = last_at - first
        result.update(
            seconds=round(seconds, 2),
            files_per_s=round(args.files / seconds) if seconds > 0 else None,
            filesets=len(expected),
            recorded=len(seen),
            lost=sum(1 for k in expected if k not in seen),
            duplicated=sum(1 for n in seen.values() if n > 1),
            wrong=wrong,
            unexpected=sum(1 for k in seen if k not in expected),
        )
        if counter is not None:
            counter.send_signal(signal.SIGINT)
            counter.wait(timeout=60)
            result["fsyncs"] = _fsync_calls(base / "fsyncs.csv")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=120)
            if (base / "profile.txt").exists():
                result["profile_top"] = profile_top(base / "profile.txt")
                if args.keep_profile:
                    shutil.copy(base / "profile.txt", args.keep_profile)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        errors = [ln for ln in log_path.read_text(errors="replace").splitlines() if " ERROR " in ln]
        result["log_errors"] = len(errors)
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


def _fsync_calls(csv: Path) -> int:
    """fsync + fdatasync calls from ``perf stat -x ,`` output."""
    calls = 0
    for line in csv.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:") and parts[0].isdigit():
            calls += int(parts[0])
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dir-import-wait", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every fileset")
    ap.add_argument("--base", default="/dev/shm", help="where the DropBox and state directory go")
    ap.add_argument(
        "-D",
        dest="define",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a further property for the service, e.g. -D omero.fs.ng.maxConcurrentImports=1",
    )
    ap.add_argument("--profile", action="store_true", help="sample the service with py-spy")
    ap.add_argument("--gil", action="store_true", help="with --profile: only samples holding the GIL")
    ap.add_argument("--keep-profile", metavar="FILE", help="copy py-spy's raw profile here")
    ap.add_argument("--fsyncs", action="store_true", help="count the service's fsyncs with perf stat")
    ap.add_argument("--keep", action="store_true", help="keep the DropBox, state and log")
    ap.add_argument("--json", metavar="FILE", help="append each run's JSON line to FILE")
    args = ap.parse_args()
    results = []
    for run in range(1, args.runs + 1):
        res = one_run(args, run)
        results.append(res)
        top = res.pop("profile_top", None)
        line = json.dumps(res)
        print(line, flush=True)
        if top is not None:
            for title in ("threads", "own", "total"):
                print(f"  py-spy, {title} (% of samples):")
                for name, pct in top[title]:
                    print(f"    {pct:5.1f}  {name}")
            res["profile_top"] = top
        if args.json:
            with open(args.json, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(res) + "\n")
    if len(results) > 1:
        rates = [r["files_per_s"] or 0 for r in results]
        summary = {
            "summary": True,
            "runs": len(results),
            "files": args.files,
            "median_files_per_s": statistics.median(rates),
            "median_seconds": statistics.median(r["seconds"] for r in results),
            "lost": sum(r["lost"] for r in results),
            "duplicated": sum(r["duplicated"] for r in results),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
