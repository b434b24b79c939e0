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


def test_the_reference_parser_reads_every_family_back() -> None:
    """prometheus-client's own text parser (the one Prometheus' Python tooling uses) reads our
    hand-written exposition back to the same names, types, labels and values."""
    parser = pytest.importorskip("prometheus_client.parser")
    m = EngineMetrics()
    for kind in ("created", "created", "moved", "renamed-by-a-new-backend"):
        m.event(kind)
    m.skip()
    for seconds, outcome in ((0.2, "imported"), (45.0, "imported"), (7200.0, "failed"), (1e-9, "retry")):
        m.observe_import(seconds, outcome)
    families = collect(
        m,
        fileset_states={"imported": 3, "failed": 1},
        all_states=("waiting", "queued", "importing", "imported", "failed", "skipped"),
        queue={"ready": 1, "running": 2},
        waiting_files=2,
        watcher={"watches": 7, "overflows": 1, "rescans": 2, "raw_events": 10**15 + 1},
    )
    odd = 'amy "the boss"\\ \n\u00e9'
    families.append(Family("odd", "gauge", 'help with \\ and\nnewline "quoted"', [({"user": odd}, math.inf)]))
    families.append(Family("nan", "gauge", "not a number", [({}, math.nan), ({"k": "neg"}, -2.5e-7)]))

    parsed = {f.name: f for f in parser.text_string_to_metric_families(exposition(families))}

    def samples(name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in parsed[name].samples}

    ours = {f"omero_dropbox_{f.name}".removesuffix("_total"): f for f in families}
    assert set(parsed) == set(ours)
    for name, fam in ours.items():
        assert parsed[name].type == fam.type, name
        assert parsed[name].documentation == fam.help, name
    assert samples("omero_dropbox_events")[("omero_dropbox_events_total", (("kind", "created"),))] == 2
    assert samples("omero_dropbox_events")[("omero_dropbox_events_total", (("kind", "deleted"),))] == 0
    assert ("omero_dropbox_events_total", (("kind", "renamed-by-a-new-backend"),)) in samples(
        "omero_dropbox_events"
    )
    raw = samples("omero_dropbox_watcher_raw_events")[("omero_dropbox_watcher_raw_events_total", ())]
    assert raw == 10**15 + 1
    durations = samples("omero_dropbox_import_duration_seconds")
    name = "omero_dropbox_import_duration_seconds"
    imported = (("outcome", "imported"),)
    assert durations[(f"{name}_count", imported)] == 2
    assert durations[(f"{name}_sum", imported)] == 45.2
    assert durations[(f"{name}_bucket", (("le", "0.5"), *imported))] == 1
    assert durations[(f"{name}_bucket", (("le", "+Inf"), *imported))] == 2
    assert durations[(f"{name}_bucket", (("le", "+Inf"), ("outcome", "failed")))] == 1
    assert durations[(f"{name}_bucket", (("le", "3600"), ("outcome", "failed")))] == 0
    assert samples("omero_dropbox_odd") == {("omero_dropbox_odd", (("user", odd),)): math.inf}
    nan = samples("omero_dropbox_nan")
    assert (
        math.isnan(nan[("omero_dropbox_nan", ())]) and nan[("omero_dropbox_nan", (("k", "neg"),))] == -2.5e-7
    )
