"""The status page and /metrics of `omero-dropbox run --http`, over real HTTP to a real service.

The importer is a real command standing in for OMERO (the script importer of
tests/support/service.py); it prints `Image:<n>` as `omero import` does, which the page links
to OMERO.web.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service import Service, run_cli
from tests.support.waiting import wait_for

WEB = "https://omero.example.org"


@pytest.fixture
def service(shm_dir: Path) -> Iterator[Service]:
    with Service.scripted(shm_dir, "--http", "127.0.0.1:0", "--omero-web", WEB) as svc:
        yield svc


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def token_of(svc: Service) -> str:
    return (svc.state / "http-token").read_text().strip()


def test_page_shows_queues_failure_reason_and_links_imports_to_omero_web(service: Service) -> None:
    good = service.drop("amy", "good.czi")
    bad = service.drop("zak", "bad.czi")
    service.wait_state(good, "imported")
    service.wait_state(bad, "failed")
    status, page, headers = get(service.url + "?refresh=0")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert re.search(r'<tr data-user="amy">.*?data-col="imported_today">1<', page, re.S)
    assert re.search(r'<tr data-user="zak">.*?data-col="failed">1<', page, re.S)
    assert "cannot read pixels of bad.czi: unsupported compression" in page
    assert str(bad) in page
    # The import printed Image:<n>; the page links it to OMERO.web.
    m = re.search(r'<a href="(https://omero\.example\.org/webclient/\?show=image-\d+)">Image:\d+</a>', page)
    assert m, page


def test_file_names_are_escaped_on_the_page(service: Service) -> None:
    evil = service.drop("amy", 'bad<img src=x onerror=alert(1)>&"q".czi')
    service.wait_state(evil, "failed")
    _, page, _ = get(service.url + "?refresh=0")
    assert "<img" not in page
    assert "bad&lt;img src=x onerror=alert(1)&gt;&amp;&quot;q&quot;.czi" in page


def test_retry_needs_the_token_from_the_state_dir(service: Service) -> None:
    bad = service.drop("amy", "bad-token.czi")
    service.wait_state(bad, "failed")
    fid = service.fileset_id(bad)
    service.allow(bad.name)
    token_file = service.state / "http-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_of(service)
    assert token not in service.text(), "the token must never be logged"
    assert str(token_file) in service.text(), "the log says where the token is"

    status, body = post(service.url + "retry", {"fileset": fid})
    assert status == 403 and "http-token" in body
    status, _ = post(service.url + "retry", {"fileset": fid, "token": "wrong"})
    assert status == 403
    assert service.fileset_state(bad) == "failed"

    status, body = post(service.url + "retry", {"fileset": fid[:10]}, {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    service.wait_state(bad, "imported")
    doc = service.status()
    recent = doc["recent"]
    assert isinstance(recent, list)
    entries = [e for e in recent if e["subject"] == fid and e["to"] == "queued"]
    assert any("the status page (client 127.0.0.1)" in e["reason"] for e in entries)


def test_retry_of_an_imported_fileset_is_a_conflict_with_the_reason(service: Service) -> None:
    good = service.drop("amy", "good-conflict.czi")
    service.wait_state(good, "imported")
    status, body = post(
        service.url + "retry", {"fileset": service.fileset_id(good), "token": token_of(service)}
    )
    assert status == 409
    assert "already imported" in body


def test_other_host_names_are_refused_on_loopback(service: Service) -> None:
    # DNS rebinding: a web page served as evil.example resolving to 127.0.0.1.
    host, port = urllib.parse.urlsplit(service.url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/", headers={"Host": f"evil.example:{port}"})
    assert conn.getresponse().status == 421
    conn.close()
    status, _, _ = get(service.url.replace("127.0.0.1", "localhost") + "healthz")
    assert status == 200


def test_metrics_in_prometheus_text_format(service: Service) -> None:
    good = service.drop("amy", "m1.czi")
    bad = service.drop("amy", "bad-m.czi")
    service.wait_state(good, "imported")
    service.wait_state(bad, "failed")
    status, text, headers = get(service.url + "metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(
        r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$|^[a-z_]+\{.*\} \+Inf$'
    )
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) omero_dropbox_[a-z_]+ ", line), line
            continue
        assert sample.match(line), line
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    assert values['omero_dropbox_events_total{kind="created"}'] >= 2
    assert values['omero_dropbox_filesets{state="imported"}'] == 1
    assert values['omero_dropbox_filesets{state="failed"}'] == 1
    assert values['omero_dropbox_import_duration_seconds_count{outcome="imported"}'] == 1
    assert values['omero_dropbox_import_duration_seconds_count{outcome="failed"}'] == 1
    assert values['omero_dropbox_import_duration_seconds_bucket{outcome="imported",le="+Inf"}'] == 1
    assert values["omero_dropbox_watches"] >= 2  # DropBox/ and DropBox/amy/
    for name in ("rescans_total", "overflows_total", "waiting_files", "watcher_raw_events_total"):
        assert f"omero_dropbox_{name}" in values
    assert values['omero_dropbox_queue_depth{state="running"}'] == 0


def test_status_json_and_health(service: Service) -> None:
    status, body, _ = get(service.url + "status.json")
    assert status == 200
    doc = json.loads(body)
    assert doc["schema"] == 1 and doc["service"]["running"] is True
    assert get(service.url + "healthz")[:2] == (200, "ok\n")
    assert get(service.url + "nothing-here")[0] == 404


def test_status_cli_names_the_status_page(service: Service) -> None:
    def named() -> bool:
        return service.url in run_cli("status", "--state-dir", str(service.state)).stdout

    assert wait_for(named, 30, 0.5)


def test_bad_http_address_and_busy_port_are_clear_errors(shm_dir: Path) -> None:
    out = run_cli(
        "run", "-D", f"omero.fs.watchDir={shm_dir}", "--state-dir", str(shm_dir / "s"), "--http", "x:y"
    )
    assert out.returncode == 2
    assert "--http 'x:y'" in out.stderr and "0 to 65535" in out.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli(
            "run",
            "-D",
            f"omero.fs.watchDir={shm_dir}",
            "--state-dir",
            str(shm_dir / "s"),
            "--http",
            str(port),
        )
    assert out.returncode == 2
    assert f"--http 127.0.0.1:{port}: cannot listen there" in out.stderr
