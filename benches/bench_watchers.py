#!/usr/bin/env python
"""Side-by-side benchmark of our native watcher against watchfiles, watchdog and pyinotify.

    python benches/bench_watchers.py [--runs N] [--scale S] [--libs ours,watchfiles,...] [--ref LIB]

``ours`` is our inotify backend (``native``); ``ours-fanotify`` our fanotify backend (root only),
e.g. ``--libs ours,ours-fanotify --ref ours --scenarios tree``.

Scenarios (full scale, S=1; every tree lives on tmpfs under ``--base``, default /dev/shm):

1. ``tree``   - watch a tree of 100 x 1,000 = 100,000 leaf directories (+100 parents +root):
               ready time (watch-placing call returns) and RSS growth of the watcher process.
2. ``burst``  - 100,000 files (10 per directory) written as fast as one Python writer can into
               100 x 100 = 10,000 existing directories: files missed, time from the first write
               to the last file reported, watcher-process CPU seconds per 1,000 files.
3. ``nested`` - 5,000 times ``mkdir -p n<i>/x/y`` then write ``n<i>/x/y/f.dat`` at once:
               files missed.

Every watcher runs in its own subprocess (RSS and CPU are that process's); the writer is this
(parent) process. Each child imports its library, takes an RSS baseline, places the watches
(timed), checks that a sentinel file written into the last directory is reported, then counts
the distinct ``*.dat`` paths it is told about. See ``_watch_adapters.py`` for what "reported"
means per library. Results: medians over runs, ratios vs watchfiles, raw JSON in ``--json``.
Our watcher runs with ``settle=0.2`` (only matters for files found by walking a new directory).
The kernel's inotify limits are left as they are (the script prints them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _watch_adapters as A  # noqa: E402

SUFFIX = ".dat"
SENTINEL = "zz_sentinel" + SUFFIX
PAYLOAD = b"x" * 64


# --------------------------------------------------------------------------- child side
def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def child_main(lib: str, root: str, sentinel_dir: str) -> None:
    version = A.import_lib(lib)
    gc.collect()
    base_rss = A.rss_bytes()
    _emit({"ev": "imported", "rss": base_rss, "version": version})
    cmds: queue.Queue[str] = queue.Queue()

    def read_cmds() -> None:
        for line in sys.stdin:
            cmds.put(line.strip())
        cmds.put("eof")

    threading.Thread(target=read_cmds, daemon=True).start()
    if cmds.get() != "start":
        os._exit(2)

    ad = A.make(lib, SUFFIX)
    c0 = A.cpu_seconds()
    t0 = time.monotonic()
    ad.start(root)
    t1 = time.monotonic()
    c1 = A.cpu_seconds()
    gc.collect()
    _emit(
        {
            "ev": "ready",
            "ready_s": t1 - t0,
            "ready_cpu_s": c1 - c0,
            "rss_delta": A.rss_bytes() - base_rss,
            "extra": ad.extra(),
        }
    )

    # sentinel in the last directory of the tree: proves the whole tree is watched
    spath = os.path.join(sentinel_dir, SENTINEL)
    ts = time.monotonic()
    fd = os.open(spath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, PAYLOAD)
    os.close(fd)
    while spath not in ad.seen and time.monotonic() - ts < 30:
        ad.pump(0.02)
    sentinel_s = ad.seen.get(spath, float("nan")) - ts
    ad.seen.pop(spath, None)
    os.unlink(spath)
    ad.pump(0.3)  # let the deletion pass
    _emit(
        {
            "ev": "sentinel",
            "sentinel_s": sentinel_s,
            "rss_delta": A.rss_bytes() - base_rss,
            "extra": ad.extra(),
        }
    )

    samples: list[tuple[float, float, int]] = []
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.is_set():
            samples.append((time.monotonic(), A.cpu_seconds(), len(ad.seen)))
            stop_sampling.wait(0.05)

    while True:
        cmd = cmds.get()
        if not cmd.startswith("go"):
            break
        _, n, quiet, deadline = cmd.split()
        expected, quiet_s, deadline_s = int(n), float(quiet), float(deadline)
        ad.seen.clear()
        ad.last_new = 0.0
        samples.clear()
        threading.Thread(target=sampler, daemon=True).start()
        cpu_go = A.cpu_seconds()
        t_go = time.monotonic()
        _emit({"ev": "going"})
        written_at = None
        end_reason = "deadline"
        while time.monotonic() - t_go < deadline_s:
            ad.pump(0.05)
            while not cmds.empty():
                if cmds.get().startswith("written"):
                    written_at = time.monotonic()
            if len(ad.seen) >= expected:
                end_reason = "all"
                break
            if written_at is not None:
                if time.monotonic() - max(written_at, ad.last_new) > quiet_s:
                    end_reason = "quiet"
                    break
        cpu_end = A.cpu_seconds()
        stop_sampling.set()
        cpu_last = cpu_end
        if ad.last_new:
            for t, c, _ in samples:
                if t >= ad.last_new:
                    cpu_last = c
                    break
        _emit(
            {
                "ev": "result",
                "reported": len(ad.seen),
                "last_new": ad.last_new,
                "cpu_go": cpu_go,
                "cpu_last": cpu_last,
                "cpu_end": cpu_end,
                "end_reason": end_reason,
                "rss_delta": A.rss_bytes() - base_rss,
                "extra": ad.extra(),
            }
        )
    os._exit(0)  # do not wait on library threads


# --------------------------------------------------------------------------- parent side
class Child:
    def __init__(self, lib: str, root: Path, sentinel_dir: Path, log) -> None:
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--child", lib, str(root), str(sentinel_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                pass
        self.q.put(None)

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def expect(self, ev: str, timeout: float) -> dict[str, Any]:
        try:
            msg = self.q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(ev) from None
        if msg is None or msg.get("ev") != ev:
            raise RuntimeError(f"expected {ev}, got {msg!r} (rc={self.p.poll()})")
        return msg

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


def make_tree(root: Path, top: int, per: int) -> list[Path]:
    leaves = []
    for i in range(top):
        d = root / f"a{i:03d}"
        d.mkdir(parents=True)
        for j in range(per):
            leaf = d / f"b{j:04d}"
            leaf.mkdir()
            leaves.append(leaf)
    return leaves


def write_file(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, PAYLOAD)
    os.close(fd)


def start_child(lib: str, root: Path, sentinel_dir: Path, ready_timeout: float, log):
    """Spawn, place the watches, check the sentinel. Returns (child, info) or (None, info)."""
    ch = Child(lib, root, sentinel_dir, log)
    info: dict[str, Any] = {}
    try:
        info["version"] = ch.expect("imported", 60)["version"]
        ch.send("start")
        r = ch.expect("ready", ready_timeout)
        info.update(
            ready_s=r["ready_s"],
            ready_cpu_s=r["ready_cpu_s"],
            rss_mb=r["rss_delta"] / 2**20,
            ready_extra=r["extra"],
        )
        s = ch.expect("sentinel", 60)
        info.update(
            sentinel_s=s["sentinel_s"], rss_mb_sentinel=s["rss_delta"] / 2**20, sentinel_extra=s["extra"]
        )
        return ch, info
    except TimeoutError as exc:
        info["error"] = f"timeout waiting for {exc} (> {ready_timeout:.0f} s)"
    except RuntimeError as exc:
        info["error"] = str(exc)
    ch.kill()
    return None, info


def run_burst(ch: Child, expected: int, writer, quiet: float, deadline: float) -> dict[str, Any]:
    ch.send(f"go {expected} {quiet} {deadline}")
    ch.expect("going", 30)
    t_first = time.monotonic()
    w_cpu0 = time.process_time()
    writer()
    t_written = time.monotonic()
    w_cpu = time.process_time() - w_cpu0
    ch.send("written")
    r = ch.expect("result", deadline + 60)
    out = {
        "written": expected,
        "reported": r["reported"],
        "missed": expected - r["reported"],
        "missed_pct": 100.0 * (expected - r["reported"]) / expected,
        "writer_s": t_written - t_first,
        "writer_cpu_s": w_cpu,
        "last_event_s": (r["last_new"] - t_first) if r["last_new"] else None,
        "cpu_s": r["cpu_last"] - r["cpu_go"],
        "cpu_per_1k": (r["cpu_last"] - r["cpu_go"]) / expected * 1000,
        "end_reason": r["end_reason"],
        "rss_mb_after": r["rss_delta"] / 2**20,
        "extra": r["extra"],
    }
    return out


def scenario_tree(base: Path, lib: str, tree_root: Path, last_leaf: Path, args, log):
    ch, info = start_child(lib, tree_root, last_leaf, args.ready_timeout, log)
    if ch is not None:
        ch.send("end")
        ch.kill()
    return info


def scenario_burst(base: Path, lib: str, args, log):
    sc = args.scale
    top, per, files_per_dir = max(1, round(100 * sc)), 100, 10
    root = base / f"burst-{lib}"
    leaves = make_tree(root, top, per)
    expected = len(leaves) * files_per_dir
    paths = [str(d / f"f{k}{SUFFIX}") for d in leaves for k in range(files_per_dir)]
    try:
        ch, info = start_child(lib, root, leaves[-1], args.ready_timeout, log)
        if ch is None:
            return info

        def writer() -> None:
            for p in paths:
                write_file(p)

        try:
            info.update(run_burst(ch, expected, writer, args.quiet, args.deadline))
        except (TimeoutError, RuntimeError) as exc:
            info["error"] = f"burst: {exc}"
        ch.kill()
        return info
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scenario_nested(base: Path, lib: str, args, log):
    n = max(1, round(5000 * args.scale))
    root = base / f"nested-{lib}"
    root.mkdir()
    try:
        ch, info = start_child(lib, root, root, args.ready_timeout, log)
        if ch is None:
            return info

        def writer() -> None:
            for i in range(n):
                d = os.path.join(root, f"n{i:05d}", "x", "y")
                os.makedirs(d)
                write_file(os.path.join(d, "f" + SUFFIX))

        try:
            info.update(run_burst(ch, n, writer, args.quiet, args.deadline))
        except (TimeoutError, RuntimeError) as exc:
            info["error"] = f"nested: {exc}"
        ch.kill()
        return info
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- reporting
def med(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and v == v]  # drop None and NaN
    return statistics.median(vals) if vals else None


METRICS = [
    # (scenario, key, label, format, goal)
    ("tree", "ready_s", "1. ready time, s", "{:.2f}", "<= 0.5x watchfiles"),
    ("tree", "ready_cpu_s", "1. CPU s to place the watches", "{:.2f}", ""),
    ("tree", "rss_mb", "1. RSS growth, MB", "{:.1f}", "<= 0.5x watchfiles"),
    ("tree", "sentinel_s", "1. sentinel latency after ready, s", "{:.2f}", ""),
    ("burst", "missed", "2. files missed (of {n2:,})", "{:,.0f}", "0"),
    ("burst", "last_event_s", "2. first write -> last file reported, s", "{:.2f}", ""),
    ("burst", "cpu_per_1k", "2. watcher CPU s per 1,000 files", "{:.3f}", "<= 1/3x watchfiles"),
    ("burst", "writer_s", "2. writer wall time, s", "{:.2f}", ""),
    ("burst", "rss_mb_after", "2. RSS growth after the burst, MB", "{:.1f}", ""),
    ("nested", "missed", "3. files missed (of {n3:,})", "{:,.0f}", "0"),
    ("nested", "last_event_s", "3. first write -> last file reported, s", "{:.2f}", ""),
]


def summarize(results: dict[str, Any], libs: list[str], scale: float, ref_lib: str = "watchfiles") -> str:
    """The table of medians; ratios are against `ref_lib`."""
    n2 = max(1, round(100 * scale)) * 100 * 10
    n3 = max(1, round(5000 * scale))
    runs = results["runs"]
    lines = []
    hdr = f"| metric (median of {len(runs)} runs) | " + " | ".join(libs) + " | goal |"
    lines.append(hdr)
    lines.append("|" + "---|" * (len(libs) + 2))
    for sc, key, label, fmt, goal in METRICS:
        label = label.format(n2=n2, n3=n3)
        meds = {}
        cells = []
        for lib in libs:
            vals = [r[sc][lib].get(key) for r in runs if lib in r[sc]]
            errs = [r[sc][lib].get("error") for r in runs if lib in r[sc] and r[sc][lib].get("error")]
            m = med(vals)
            meds[lib] = m
            if m is None:
                if any("timeout" in e for e in errs):
                    cells.append("timeout")
                elif key == "sentinel_s" and vals:
                    cells.append("not seen in 30 s")
                else:
                    cells.append("n/a")
                continue
            cell = fmt.format(m)
            if key == "missed":
                pct = med([r[sc][lib].get("missed_pct") for r in runs if lib in r[sc]])
                rng = [v for v in vals if v is not None]
                cell = f"{cell} ({pct:.1f} %)" if pct else cell
                if len(rng) > 1 and min(rng) != max(rng):
                    cell += f" [{min(rng):,}-{max(rng):,}]"
            if errs:
                cell += f" ({len(errs)} run(s) failed)"
            cells.append(cell)
        ref = meds.get(ref_lib)
        for i, lib in enumerate(libs):
            m = meds[lib]
            if key != "missed" and m is not None and ref and lib != ref_lib:
                cells[i] += f" ({m / ref:.2f}x)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines)


def machine_note(base: Path) -> str:
    def sysctl(name: str) -> str:
        try:
            return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
        except OSError:
            return "?"

    try:
        model = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(base)], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} CPU ({model}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, base {base} ({fs}); inotify "
        f"max_queued_events={sysctl('max_queued_events')}, "
        f"max_user_watches={sysctl('max_user_watches')}, "
        f"max_user_instances={sysctl('max_user_instances')}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink sizes (0.05 = smoke run)")
    ap.add_argument("--libs", default=",".join(A.LIBS))
    ap.add_argument("--scenarios", default="tree,burst,nested")
    ap.add_argument("--base", default="/dev/shm")
    ap.add_argument(
        "--ready-timeout", type=float, default=180.0, help="seconds a watcher may take to place its watches"
    )
    ap.add_argument(
        "--quiet",
        type=float,
        default=10.0,
        help="stop waiting this long after the writer ended and no new file appeared",
    )
    ap.add_argument("--deadline", type=float, default=180.0, help="hard limit per burst")
    ap.add_argument("--json", default=str(HERE / "bench_watchers_results.json"))
    ap.add_argument("--report", metavar="JSON", help="only print the table of an earlier run")
    ap.add_argument("--ref", default="watchfiles", help="the library ratios are given against")
    args = ap.parse_args()
    if args.report:
        old = json.loads(Path(args.report).read_text())
        libs = list(old["versions"])
        print(
            f"{old['command']}\n{old['machine']}\nversions: {old['versions']}; "
            f"ours with settle={old['ours_settle']}"
        )
        print(summarize(old, libs, old["scale"], args.ref))
        return
    libs = [lib for lib in args.libs.split(",") if lib]
    scenarios = args.scenarios.split(",")
    for lib in libs:
        A.import_lib(lib)  # fail early if a library is missing
    versions = {lib: A.import_lib(lib) for lib in libs}

    base = Path(args.base) / f"bench-watchers-{os.getpid()}"
    base.mkdir()
    log_path = Path("/tmp") / f"bench_watchers-{os.getpid()}.log"
    log = open(log_path, "w")
    note = machine_note(Path(args.base))
    print(note, flush=True)
    results: dict[str, Any] = {
        "command": "python benches/bench_watchers.py " + " ".join(sys.argv[1:]),
        "machine": note,
        "versions": versions,
        "scale": args.scale,
        "ours_settle": A.Ours.SETTLE,
        "runs": [],
    }
    t_all = time.monotonic()
    try:
        tree_root = last_leaf = None
        if "tree" in scenarios:
            tree_root = base / "tree"
            t = time.monotonic()
            leaves = make_tree(tree_root, max(1, round(100 * args.scale)), 1000)
            last_leaf = leaves[-1]
            print(f"tree: {len(leaves):,} leaf dirs built in {time.monotonic() - t:.1f} s", flush=True)
            del leaves
        for run in range(args.runs):
            order = libs[run % len(libs) :] + libs[: run % len(libs)]  # rotate to spread noise
            res: dict[str, Any] = {"tree": {}, "burst": {}, "nested": {}, "order": order}
            for sc in scenarios:
                for lib in order:
                    t = time.monotonic()
                    if sc == "tree":
                        r = scenario_tree(base, lib, tree_root, last_leaf, args, log)
                    elif sc == "burst":
                        r = scenario_burst(base, lib, args, log)
                    else:
                        r = scenario_nested(base, lib, args, log)
                    res[sc][lib] = r
                    short = {
                        k: (round(v, 3) if isinstance(v, float) else v)
                        for k, v in r.items()
                        if not isinstance(v, dict)
                    }
                    ex = r.get("extra") or r.get("ready_extra") or {}
                    print(
                        f"run {run + 1} {sc:6s} {lib:10s} {time.monotonic() - t:6.1f}s "
                        f"{short} {ex if lib in ('ours', 'ours-fanotify', 'pyinotify') else ''}",
                        flush=True,
                    )
            results["runs"].append(res)
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        log.close()
    results["total_s"] = time.monotonic() - t_all
    Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    print(f"versions: {versions}; ours with settle={A.Ours.SETTLE}")
    print(summarize(results, libs, args.scale, args.ref))
    print(f"\nraw results: {args.json}; child stderr: {log_path}; total {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
