#!/usr/bin/env python
"""Fileset grouping throughput: the rule table versus asking Bio-Formats.

    python benches/bench_grouping.py [--files N] [--runs R] [--base DIR] [--jvm-runs K]
                                     [--batches B] [--batch-size S] [--oracle-sample M]

Builds a tree of N files (default 100,000) on tmpfs (``--base``, default /dev/shm) in 100
directories, mixing formats the way a busy drop folder might: single TIFFs, ICS pairs,
Analyze pairs, DeltaVision + log, MetaMorph .nd sets, .pattern sets, OME-TIFF companion
sets, Leica .lei sets, InCell plates, text notes and dot files (all valid enough for
Bio-Formats to read). Then it measures, as medians:

1. ``table``: ``FilesetGrouper().group(all files)`` (this project; R runs);
2. ``oracle``: one long-lived JVM (``BioFormatsOracle``) grouping a sample of M files
   (K runs), extrapolated to N files;
3. ``upstream``: one JVM started per batch of S files (default 10), as OMERO.dropbox does
   with ``omero import -f`` for every batch of events: B batches per run, K runs,
   extrapolated to N files. This is a lower bound for upstream: the real importer JVM
   also loads OMERO's client jars and Ice before it reads a single file.

Rows 2 and 3 are extrapolations and say so. Needs java and bioformats_package.jar for
rows 2 and 3 (skipped otherwise, or with ``--skip-java``).

``--regroup N`` measures instead what the engine does on every event batch: regroup a
pool holding one N-member MetaMorph .nd (N time points) and one N-member ``.pattern``,
with the user's folder as ``root``: the first grouping and a regroup by the same
grouper (medians of R runs). ``--module FILE`` takes ``FilesetGrouper`` from the module
FILE instead (e.g. ``git show REV:python/omero_dropbox/grouping/grouper.py``; before the
grouping package, REV's ``filesets.py``, run in a checkout of REV whose imports it needs)
to compare before/after; a module whose ``group`` has no ``root`` runs without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE.parent))

from omero_dropbox.grouping import FilesetGrouper  # noqa: E402
from omero_dropbox.grouping.oracle import BioFormatsOracle  # noqa: E402
from tests.support.filesets import (  # noqa: E402
    write_analyze,
    write_dv,
    write_ics,
    write_lei,
    write_nd,
    write_ome_tiffs,
    write_pattern,
    write_tiff,
    write_xdce,
)

DIRS = 100


def _dv(d: Path, s: str) -> list[Path]:
    dv = write_dv(d, f"{s}.dv")
    log = d / f"{s}.dv.log"
    log.write_text("log")
    return [dv, log]


def _note(d: Path, s: str) -> list[Path]:
    p = d / f"{s}.txt.bak"
    p.write_text("notes")
    return [p]


def _dot(d: Path, s: str) -> list[Path]:
    p = d / f".{s}.swp"
    p.write_bytes(b"x")
    return [p]


# (kind, writer, weight); weights chosen so about half of all files are single TIFFs
RECIPE: list[tuple[str, Callable[[Path, str], list[Path]], int]] = [
    ("tif", lambda d, s: [write_tiff(d / f"{s}.tif")], 60),
    ("ics", lambda d, s: write_ics(d, s), 6),
    ("analyze", lambda d, s: write_analyze(d, s), 4),
    ("dv", _dv, 4),
    ("nd", lambda d, s: write_nd(d, s, stages=2), 3),
    ("pattern", lambda d, s: write_pattern(d, s, 3), 3),
    ("ome", lambda d, s: write_ome_tiffs(d, s, 2), 1),
    ("lei", lambda d, s: write_lei(d, s, 2), 1),
    ("note", _note, 2),
    ("dot", _dot, 1),
]


def build_tree(root: Path, total: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    kinds = [k for k in RECIPE for _ in range(k[2])]
    files: list[str] = []
    per_dir = max(total // DIRS, 1)
    for i in range(DIRS):
        d = root / f"acq{i:03d}"
        d.mkdir()
        plate = d / "plate"
        plate.mkdir()
        made = [str(p) for p in write_xdce(plate, "plate", wells=((1, 1), (1, 2), (2, 1)))]
        n = 0
        while len(made) < per_dir and len(files) + len(made) < total:
            kind, writer, _w = rnd.choice(kinds)
            made += [str(p) for p in writer(d, f"{kind}{n:05d}")]
            n += 1
        files += made
    return files


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_big_keys(root: Path, n: int) -> list[str]:
    """One .nd naming n time points and one .pattern naming n files, all present."""
    nd = root / "exp.nd"
    nd.write_text(
        f'"NDInfoFile", Version 1.0\n"DoTimelapse", TRUE\n"NTimePoints", {n}\n"DoStage", FALSE\n'
        '"DoWave", FALSE\n"EndFile"\n'
    )
    pattern = root / "p.pattern"
    pattern.write_text(f"p_<1-{n}>.tif")
    files = [str(nd), str(pattern)]
    for i in range(1, n + 1):
        for name in (f"exp_t{i}.TIF", f"p_{i}.tif"):
            (root / name).touch()
            files.append(str(root / name))
    return files


def regroup_main(args: argparse.Namespace) -> int:
    if args.module:
        spec = importlib.util.spec_from_file_location("filesets_under_test", args.module)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        grouper_class = module.FilesetGrouper
    else:
        grouper_class = FilesetGrouper
    root = Path(tempfile.mkdtemp(prefix="odb-bench-regroup-", dir=args.base))
    try:
        files = build_big_keys(root, args.regroup)
        kw = {"root": str(root)} if "root" in inspect.signature(grouper_class.group).parameters else {}
        firsts, regroups = [], []
        for _ in range(args.runs):
            grouper = grouper_class()
            t0 = time.perf_counter()
            result = grouper.group(files, **kw)
            firsts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            grouper.group(files, **kw)
            regroups.append(time.perf_counter() - t0)
        sizes = sorted(len(fs.files) for fs in result.filesets)
        print(
            f"{len(files):,} files, filesets of {sizes}, root={'yes' if kw else 'no'}, "
            f"{args.module or 'this tree'}"
        )
        print(
            f"first grouping: {statistics.median(firsts):.3f} s, "
            f"regroup: {statistics.median(regroups):.3f} s (medians of {args.runs})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5, help="runs of the table grouper")
    ap.add_argument("--jvm-runs", type=int, default=3, help="runs of the JVM measurements")
    ap.add_argument("--batches", type=int, default=5, help="upstream batches per run")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--oracle-sample", type=int, default=2_000)
    ap.add_argument("--base", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--skip-java", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree")
    ap.add_argument("--regroup", type=int, metavar="N", help="regroup a pool with two N-member key files")
    ap.add_argument("--module", help="take FilesetGrouper from this module file (with --regroup)")
    args = ap.parse_args(argv)
    if args.regroup:
        return regroup_main(args)

    root = Path(tempfile.mkdtemp(prefix="odb-bench-grouping-", dir=args.base))
    try:
        t0 = time.perf_counter()
        files = build_tree(root, args.files)
        print(f"built {len(files):,} files under {root} in {time.perf_counter() - t0:.1f}s")
        n = len(files)
        rows: list[tuple[str, int, float, float, str]] = []

        result = FilesetGrouper().group(files)
        formats: dict[str, int] = {}
        for fs in result.filesets:
            formats[fs.format] = formats.get(fs.format, 0) + 1
        summary = ", ".join(f"{k} {v:,}" for k, v in sorted(formats.items()))
        print(f"{len(result.filesets):,} filesets ({summary}); {len(result.unclaimed):,} unclaimed")

        t = median_time(lambda: FilesetGrouper().group(files), args.runs)
        rows.append(("table-driven grouper (this project)", n, t, n / t, f"median of {args.runs}"))

        why = None if not args.skip_java else "--skip-java"
        why = why or BioFormatsOracle.unavailable_reason()
        if why is None:
            rnd = random.Random(2)
            ordered = sorted(files)
            sample_size = min(args.oracle_sample, n)
            start = rnd.randrange(0, n - sample_size + 1)
            sample = ordered[start : start + sample_size]
            with BioFormatsOracle() as oracle:
                oracle.group(ordered[:300])  # warm up the JIT, as a long-lived JVM would be
                t = median_time(lambda: oracle.group(sample), args.jvm_runs)
            rows.append(
                (
                    "Bio-Formats, one long-lived JVM",
                    n,
                    t * n / sample_size,
                    sample_size / t,
                    f"EXTRAPOLATED from {sample_size:,} files, median of {args.jvm_runs}",
                )
            )

            size = args.batch_size

            def upstream_run() -> None:
                for _ in range(args.batches):
                    at = rnd.randrange(0, n - size + 1)
                    with BioFormatsOracle() as fresh:  # a new JVM per batch
                        fresh.group(ordered[at : at + size])

            t = median_time(upstream_run, args.jvm_runs)
            per_file = t / (args.batches * size)
            rows.append(
                (
                    f"one JVM per batch of {size} (upstream style)",
                    n,
                    per_file * n,
                    1 / per_file,
                    f"EXTRAPOLATED from {args.batches} batches, median of {args.jvm_runs}",
                )
            )
        else:
            print(f"Bio-Formats rows skipped: {why}")

        print()
        print(f"{'method':45} {'files':>9} {'seconds':>10} {'files/s':>11}  note")
        for name, count, secs, rate, note in rows:
            print(f"{name:45} {count:>9,} {secs:>10.2f} {rate:>11,.0f}  {note}")
        if len(rows) == 3:
            print(f"\ntable grouper vs one JVM per batch: {rows[0][3] / rows[2][3]:,.0f}x faster")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
