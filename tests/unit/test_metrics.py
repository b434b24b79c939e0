"""The Prometheus text exposition written by hand: format rules a scraper relies on."""

from __future__ import annotations

import math

import pytest

from omero_dropbox.importers import ImportRequest, ImportResult
from omero_dropbox.metrics import EngineMetrics, Family, Histogram, InstrumentedImporter, collect, exposition


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    h = Histogram((1, 5, 10))
    for v in (0.2, 1.0, 3, 7, 50):
        h.observe(v)
    assert h.cumulative() == [("1", 2), ("5", 3), ("10", 4), ("+Inf", 5)]
    assert h.count == 5 and math.isclose(h.sum, 61.2)


def test_histogram_rejects_unsorted_buckets() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((5, 1))


def test_label_values_and_help_are_escaped() -> None:
    fam = Family("x", "gauge", "a\\b\nc", [({"path": 'we"ird\\name\n'}, 1.5)])
    text = exposition([fam])
    assert "# HELP omero_dropbox_x a\\\\b\\nc\n" in text
    assert 'omero_dropbox_x{path="we\\"ird\\\\name\\n"} 1.5\n' in text


def test_histogram_family_lines() -> None:
    h = Histogram((1,))
    h.observe(0.5)
    text = exposition([Family("d_seconds", "histogram", "d", histograms=[({"outcome": "imported"}, h)])])
    assert text.splitlines()[2:] == [
        'omero_dropbox_d_seconds_bucket{outcome="imported",le="1"} 1',
        'omero_dropbox_d_seconds_bucket{outcome="imported",le="+Inf"} 1',
        'omero_dropbox_d_seconds_sum{outcome="imported"} 0.5',
        'omero_dropbox_d_seconds_count{outcome="imported"} 1',
    ]


def test_every_state_and_outcome_is_exposed_even_at_zero() -> None:
    m = EngineMetrics()
    m.event("created")
    fams = {
        f.name: f
        for f in collect(
            m,
            fileset_states={"imported": 3},
            all_states=("waiting", "queued", "importing", "imported", "failed", "skipped"),
            queue={"ready": 1},
            waiting_files=2,
            watcher={"watches": 7, "overflows": 1, "rescans": 2},
        )
    }
    text = exposition(fams.values())
    assert 'omero_dropbox_filesets{state="failed"} 0' in text
    assert 'omero_dropbox_filesets{state="imported"} 3' in text
    assert 'omero_dropbox_events_total{kind="created"} 1' in text
    assert 'omero_dropbox_import_duration_seconds_count{outcome="retry"} 0' in text
    assert "omero_dropbox_overflows_total 1" in text and "omero_dropbox_rescans_total 2" in text
    assert "omero_dropbox_watches 7" in text and "omero_dropbox_waiting_files 2" in text
    assert fams["overflows_total"].type == "counter" and fams["watches"].type == "gauge"


def test_instrumented_importer_times_each_outcome() -> None:
    m = EngineMetrics()
    results = iter(
        [
            ImportResult.success(),
            ImportResult.failure("x", transient=True),
            ImportResult.failure("y", transient=False),
        ]
    )

    class Inner:
        def __call__(self, request: ImportRequest) -> ImportResult:
            return next(results)

    imp = InstrumentedImporter(Inner(), m)  # type: ignore[arg-type]
    req = ImportRequest("amy", "/a.tif", ("/a.tif",), "f" * 32, "single")
    for _ in range(3):
        imp(req)
    hists = m.histograms()
    assert {k: h.count for k, h in hists.items()} == {"imported": 1, "retry": 1, "failed": 1}
