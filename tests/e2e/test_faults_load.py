"""Mass copies and kill -9: nothing lost, nothing imported twice, everything as the right user.

100,000 files in mixed-format filesets across 50 users, written into the watched DropBox
by 4 processes at full speed while the kernel's inotify queue is made small enough to
overflow for real; and ``kill -9`` of the service at random points of a copy, ten times in a
row. The service is the real CLI; the ``record`` importer, or a recording program, stands in
for OMERO (no OMERO server runs here).
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import time
from pathlib import Path

import pytest

from tests.support.faults import check_imports, journal_counts, parallel_write, small_inotify_queue
from tests.support.service import Service
from tests.support.waiting import wait_for

USERS = [f"user{i:02d}" for i in range(50)]
MASS_FILES = int(os.environ.get("ODB_MASS_FILES", "100000"))
# Fast settings: the point is volume, not waiting.
FAST = {"dirImportWait": "2", "ng.completeWait": "0.5", "ng.maxConcurrentImports": "2", "ng.settle": "0.5"}


def _imported(service: Service) -> int:
    return len({r.key for r in service.records()})


@pytest.mark.slow
@pytest.mark.needs_root
def test_mass_copy_of_100k_files_by_4_writers_with_inotify_overflow_loses_nothing_with_record_importer(
    shm_dir: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("forcing an inotify queue overflow needs root (fs.inotify.max_queued_events)")
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    service = Service(shm_dir, dropbox, state, users=USERS, importer="record", props=FAST)
    t0 = time.monotonic()
    with small_inotify_queue(256):
        service.start()
    try:
        expected = parallel_write(dropbox, USERS, MASS_FILES // len(USERS), writers=4, seed=11)
        written_at = time.monotonic()
        assert wait_for(lambda: _imported(service) >= len(expected), 900, 1.0), service.tail()
        done_at = time.monotonic()
        time.sleep(float(FAST["dirImportWait"]) + 1)  # anything imported twice would show up by now
    finally:
        rc = service.stop()
    assert rc == 0, service.tail()
    files = sum(len(k) for k in expected)
    assert files >= MASS_FILES
    outcome = check_imports(service.records(), expected, state)
    assert outcome.interrupted_reruns == 0
    assert "event queue overflowed" in service.text(), "the test did not force an inotify overflow"
    assert journal_counts(state) == {"imported": len(expected)}
    print(
        f"\nmass copy: {files} files, {len(expected)} filesets; written in {written_at - t0:.1f} s, "
        f"all imported after {done_at - t0:.1f} s"
    )


@pytest.mark.slow
def test_kill_9_at_random_points_of_a_mass_copy_10_times_then_finishing_loses_nothing_with_recorder(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    rng = random.Random(12)
    # The recording program (a process per import, each taking 50 ms) so that kills also land
    # inside running imports: those, and only those, may run twice, and the journal says so.
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={**FAST, "ng.maxConcurrentImports": "4"},
        env={"IMPORT_DELAY": "0.05"},
    )
    expected: dict[frozenset[bytes], str] = {}
    kills = 10
    t0 = time.monotonic()
    service.start()
    try:
        for wave in range(kills):
            # A wave of files arrives at full speed; the service dies at a random point of it
            # (while files are written, grouped, queued or imported), and the writers go on
            # while it is down.
            writing = concurrent.futures.ThreadPoolExecutor(1)
            future = writing.submit(
                parallel_write, dropbox, USERS, 4, writers=4, seed=wave, subdir=f"wave{wave}"
            )
            time.sleep(rng.uniform(0.0, 2.5))  # a random point: this is the fault, not a wait
            service.kill9()
            expected.update(future.result())
            writing.shutdown()
            service.start()
        assert wait_for(lambda: _imported(service) >= len(expected), 300, 1.0), service.tail()
        time.sleep(float(FAST["dirImportWait"]) + 1)  # anything imported twice would show up by now
    finally:
        rc = service.stop()
    assert rc == 0, service.tail()
    outcome = check_imports(service.records(), expected, state)
    assert service.text().count("Started OMERO.fs DropBox client") == kills + 1
    assert journal_counts(state) == {"imported": len(expected)}
    print(
        f"\nkill -9 x{kills}: {sum(len(k) for k in expected)} files, {len(expected)} filesets, "
        f"{outcome.interrupted_reruns} re-run(s) of interrupted imports, {time.monotonic() - t0:.1f} s"
    )
