"""SkipLog: every skip journaled, the log bounded per user and window (real SQLite journal, fake clock)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from omero_dropbox import skip_log
from omero_dropbox.journal import Journal
from omero_dropbox.skip_log import LOG_PER_USER, SkipLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Not importing")]


def test_a_flood_of_skips_is_journaled_in_full_and_logged_within_the_bound_then_summarised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with Journal(tmp_path) as journal:
        skips = SkipLog(journal, clock=clock)
        caplog.set_level(logging.WARNING, "omero_dropbox.dropbox")
        with journal.batch():
            for i in range(500):
                skips.skip(f"/d/mallory/f{i}.junk", "mallory", "not a format Bio-Formats reads")
            skips.skip("/d/amy/x.junk", "amy", "not a format Bio-Formats reads")
        assert len(_lines(caplog)) == LOG_PER_USER + 1  # mallory's bound, and amy's own line
        assert any("/d/amy/x.junk" in line for line in _lines(caplog))
        assert journal.counts("files")["mallory"]["skipped"] == 500
        clock.now += skip_log.WINDOW
        skips.flush()
        summary = [line for line in _lines(caplog) if "more file(s)" in line]
        assert len(summary) == 1 and "480 more file(s) of user mallory" in summary[0], summary
        assert "480 not a format Bio-Formats reads" in summary[0]
        # A new window logs again.
        skips.skip("/d/mallory/late.junk", "mallory", "not a format Bio-Formats reads")
        assert any("late.junk" in line for line in _lines(caplog))


def test_a_path_is_reported_once_until_forgotten_and_the_memory_of_paths_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skip_log, "REMEMBERED", 100)
    with Journal(tmp_path) as journal:
        skips = SkipLog(journal)
        skips.skip("/d/amy/a.ids", "amy", "companion file whose key file never arrived")
        skips.skip("/d/amy/a.ids", "amy", "companion file whose key file never arrived")
        assert len(journal.history_of("/d/amy/a.ids")) == 1
        skips.forget("/d/amy/a.ids")
        skips.skip("/d/amy/a.ids", "amy", "companion file whose key file never arrived")
        assert len(journal.history_of("/d/amy/a.ids")) == 2
        with journal.batch():
            for i in range(1000):
                skips.skip(f"/d/amy/{i}.junk", "amy", "not a format Bio-Formats reads")
        assert len(skips) == 100
