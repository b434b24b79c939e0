"""The import queue: fairness, concurrency cap, throttle, retries, resume, shutdown."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.importers import (
    CommandImporter,
    ImportRequest,
    ImportResult,
    PermanentImportError,
)
from omero_dropbox.journal import INTERRUPTED_REASON, Journal
from tests.support.queue import Recorder, add

FAST = {"backoff_initial": 0.05, "backoff_factor": 2.0, "backoff_max": 1.0}


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state")
    yield j
    j.close()


def transient(reason: str = "server down") -> ImportResult:
    return ImportResult.failure(reason, transient=True, returncode=75)


def run_queue(j: Journal, importer: Callable[[ImportRequest], ImportResult], **kw: object) -> ImportQueue:
    return ImportQueue(j, importer, **{**FAST, **kw})  # type: ignore[arg-type]


def test_round_robin_fairness(journal: Journal) -> None:
    for i in range(50):
        add(journal, f"a{i:02d}", "alice")
    add(journal, "b00", "bob")
    imp = Recorder(hold=0.002)
    q = run_queue(journal, imp)
    q.start()
    for i in range(50):
        assert q.submit(f"a{i:02d}")
    assert q.submit("b00")  # (commits to the journal first, then enqueues)
    submitted = time.monotonic()
    assert q.wait_idle(30)
    q.drain(5)
    assert len(imp.order) == 51
    b_at = imp.order.index("b00")
    started_after = [f for f, t in imp.calls[:b_at] if t >= submitted]
    # Bob waits for at most one alice import already picked (its call is timed after
    # its journal commit, so it may look later than bob's submit) plus one round-robin
    # turn; never for the rest of hers.
    assert len(started_after) <= 2, (b_at, started_after)
    assert b_at < 50

    # and with everything queued before the workers start, bob goes second
    for i in range(20):
        add(journal, f"c{i:02d}", "carol")
    add(journal, "d00", "dave")
    imp2 = Recorder()
    q2 = run_queue(journal, imp2)
    for i in range(20):
        q2.submit(f"c{i:02d}")
    q2.submit("d00")
    q2.start()
    assert q2.wait_idle(30)
    q2.drain(5)
    assert imp2.order.index("d00") == 1
    # alice's own filesets keep their order
    assert [f for f in imp.order if f.startswith("a")] == [f"a{i:02d}" for i in range(50)]
    assert journal.counts()["alice"] == {"imported": 50}


# Counts concurrent runs in a locked JSON file.  Each run waits (bounded) until the
# count has once reached the cap, so the test proves the cap is reached, not just
# that it is not exceeded, whatever the machine's load.
COUNTER = """\
#!{python}
import fcntl, json, os, sys, time
path, cap = sys.argv[1], int(sys.argv[2])
def update(delta):
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        state = json.load(f)
        state["now"] += delta
        state["max"] = max(state["max"], state["now"])
        f.seek(0); f.truncate(); json.dump(state, f)
        return state
state = update(1)
deadline = time.monotonic() + 10
while state["max"] < cap and time.monotonic() < deadline:
    time.sleep(0.01)
    state = update(0)
time.sleep(0.05)
update(-1)
"""


def test_max_concurrent_is_respected(journal: Journal, tmp_path: Path) -> None:
    script = tmp_path / "count"
    script.write_text(COUNTER.format(python=sys.executable))
    script.chmod(0o755)
    counter = tmp_path / "counter.json"
    counter.write_text(json.dumps({"now": 0, "max": 0}))
    imp = CommandImporter(f"{shlex.quote(str(script))} {shlex.quote(str(counter))} 3 {{fileset}}")
    q = run_queue(journal, imp, max_concurrent=3)
    for i in range(9):
        add(journal, f"f{i}", user=f"u{i % 2}")
        q.submit(f"f{i}")
    q.start()
    assert q.wait_idle(60)
    q.drain(5)
    state = json.loads(counter.read_text())
    assert state["now"] == 0
    assert state["max"] == 3  # never more, and the cap is actually used
    assert journal.counts() == {"u0": {"imported": 5}, "u1": {"imported": 4}}


def test_throttle_spaces_import_starts(tmp_path: Path) -> None:
    # The throttle spaces the moments imports are picked; one journal commit (fsync)
    # lies between that and the importer call the test can time, so keep the journal
    # on tmpfs, where fsync costs nothing and adds no jitter, if there is one.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    journal = Journal(base / "state")
    imp = Recorder()
    q = run_queue(journal, imp, max_concurrent=4, throttle=0.2)
    try:
        for i in range(4):
            q.submit(add(journal, f"f{i}", user=f"u{i}"))
        q.start()
        assert q.wait_idle(30)
        q.drain(5)
    finally:
        journal.close()
        if base != tmp_path:
            shutil.rmtree(base)
    starts = sorted(t for _, t in imp.calls)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 3 and min(gaps) >= 0.19, gaps


def test_transient_failures_are_retried_with_backoff(journal: Journal) -> None:
    imp = Recorder({"f": [transient("refused"), transient("refused again")]})
    done: list[tuple[str, bool]] = []
    q = run_queue(journal, imp, max_attempts=5, on_done=lambda fid, r: done.append((fid, r.ok)))
    q.start()
    q.submit(add(journal, "f"))
    assert q.wait_idle(30)
    q.drain(5)
    rec = journal.fileset_by_id("f")
    assert rec is not None and rec.state == "imported" and rec.attempts == 3
    assert rec.last_error == "refused again" and rec.next_attempt_at is None
    times = [t for _, t in imp.calls]
    assert times[1] - times[0] >= 0.045 and times[2] - times[1] >= 0.095  # 0.05, then 0.1
    hist = [(h.old_state, h.new_state, h.reason) for h in journal.history_of("f")]
    assert ("importing", "queued", "refused") in hist
    assert ("importing", "queued", "refused again") in hist
    assert hist[-1][:2] == ("importing", "imported")
    assert done == [("f", False), ("f", False), ("f", True)]


def test_retry_limit_then_failed_with_reason(journal: Journal) -> None:
    imp = Recorder({"f": [transient("timeout") for _ in range(10)]})
    q = run_queue(journal, imp, max_attempts=3)
    q.start()
    q.submit(add(journal, "f"))
    assert q.wait_idle(30)
    q.drain(5)
    rec = journal.fileset_by_id("f")
    assert rec is not None and rec.state == "failed" and rec.attempts == 3
    assert rec.last_error == "gave up after 3 attempt(s): timeout"
    assert len(imp.calls) == 3
    f = journal.file_state(rec.key)
    assert f is not None and f.state == "failed" and "gave up" in f.reason


@pytest.mark.parametrize(
    "outcome",
    [
        ImportResult.failure("corrupt file", transient=False, returncode=65),
        PermanentImportError("corrupt file"),
    ],
)
def test_permanent_failure_fails_at_once(journal: Journal, outcome: ImportResult | Exception) -> None:
    imp = Recorder({"f": [outcome]})
    q = run_queue(journal, imp, max_attempts=5)
    q.start()
    q.submit(add(journal, "f"))
    assert q.wait_idle(30)
    q.drain(5)
    rec = journal.fileset_by_id("f")
    assert rec is not None and rec.state == "failed" and rec.attempts == 1
    assert "corrupt file" in rec.last_error and len(imp.calls) == 1


def test_importer_exception_is_transient(journal: Journal) -> None:
    imp = Recorder({"f": [RuntimeError("flaky")]})
    q = run_queue(journal, imp)
    q.start()
    q.submit(add(journal, "f"))
    assert q.wait_idle(30)
    q.drain(5)
    rec = journal.fileset_by_id("f")
    assert rec is not None and rec.state == "imported" and rec.attempts == 2
    assert rec.last_error == "RuntimeError: flaky"


def test_resume_after_restart(journal: Journal) -> None:
    add(journal, "queued")
    journal.transition("queued", "queued")
    add(journal, "crashed", "bob")
    journal.transition("crashed", "queued")
    journal.transition("crashed", "importing")  # the process died here
    add(journal, "waiting")
    add(journal, "done")
    for s in ("queued", "importing", "imported"):
        journal.transition("done", s)
    add(journal, "later")
    journal.transition("later", "queued", next_attempt_at=time.time() + 0.4)

    imp = Recorder()
    q = run_queue(journal, imp)
    t0 = time.monotonic()
    resumed = q.start()
    assert set(resumed) == {"queued", "crashed", "later"}
    assert q.wait_idle(30)
    q.drain(5)
    assert sorted(imp.order) == ["crashed", "later", "queued"]
    assert dict(imp.calls)["later"] - t0 >= 0.35  # its back-off survived the restart
    crashed = journal.fileset_by_id("crashed")
    assert crashed is not None and crashed.state == "imported" and crashed.attempts == 2
    assert INTERRUPTED_REASON in [h.reason for h in journal.history_of("crashed")]
    w = journal.fileset_by_id("waiting")
    assert w is not None and w.state == "waiting"  # the engine's to re-debounce


def test_crash_loop_ends_failed(journal: Journal) -> None:
    add(journal, "f")
    journal.transition("f", "queued")
    for _ in range(3):  # three imports that each took the service down
        journal.transition("f", "importing")
        journal.recover_interrupted()
    imp = Recorder()
    q = run_queue(journal, imp, max_attempts=3)
    q.start()
    assert q.wait_idle(30)
    q.drain(5)
    rec = journal.fileset_by_id("f")
    assert rec is not None and rec.state == "failed" and imp.calls == []
    assert rec.last_error.startswith("gave up after 3 attempt(s); last: interrupted")


def test_submit_dedup_and_imported_noop(journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="omero_dropbox.queue")
    gate = threading.Event()

    def slow(req: ImportRequest) -> ImportResult:
        gate.wait(10)
        return ImportResult.success()

    imp = Recorder()
    q = run_queue(journal, lambda r: (slow(r), imp(r))[1], max_concurrent=4)
    q.start()
    rec = journal.fileset_by_id(add(journal, "f"))
    assert rec is not None
    assert q.submit(rec)
    assert not q.submit(rec)  # queued or running: not twice
    assert not q.submit("f")
    gate.set()
    assert q.wait_idle(30)
    assert not q.submit("f")  # imported: no-op
    assert "was already imported" in caplog.text
    with pytest.raises(KeyError):
        q.submit("unknown")
    q.drain(5)
    assert imp.order == ["f"] and not imp.overlap_same_id


def test_drain_waits_for_running_and_leaves_queued(journal: Journal) -> None:
    started = threading.Event()

    def slow(req: ImportRequest) -> ImportResult:
        started.set()
        time.sleep(0.3)
        return ImportResult.success()

    q = run_queue(journal, slow)
    q.start()
    q.submit(add(journal, "running"))
    assert started.wait(10)
    q.submit(add(journal, "next"))
    assert q.drain(10)
    assert journal.fileset_by_id("running").state == "imported"  # type: ignore[union-attr]
    assert journal.fileset_by_id("next").state == "queued"  # type: ignore[union-attr]
    assert not q.submit(add(journal, "late"))


def test_stop_does_not_wait(journal: Journal) -> None:
    started = threading.Event()
    release = threading.Event()

    def blocked(req: ImportRequest) -> ImportResult:
        started.set()
        release.wait(10)
        return ImportResult.success()

    q = run_queue(journal, blocked)
    q.start()
    q.submit(add(journal, "f"))
    assert started.wait(10)
    t0 = time.monotonic()
    q.stop()
    assert time.monotonic() - t0 < 0.5
    assert q.running == frozenset({"f"})
    assert journal.fileset_by_id("f").state == "importing"  # type: ignore[union-attr]
    release.set()
    assert q.wait_idle(10)


def test_bad_settings() -> None:
    j = object()
    for kw in ({"max_concurrent": 0}, {"throttle": -1}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            ImportQueue(j, lambda r: True, **kw)  # type: ignore[arg-type]
