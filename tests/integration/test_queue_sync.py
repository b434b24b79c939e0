"""A watcher node's journal kept in step with the shared PostgreSQL queue (queue_sync.QueueSync),
one pass at a time, against the private PostgreSQL server: each shared state a fileset can
reach is mirrored in the journal, and an operator's retry on the node queues it there again."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]')")

from omero_dropbox.journal import Journal
from omero_dropbox.pg_store import PgQueueStore
from omero_dropbox.queue_sync import QueueSync
from tests.support.queue import add

Node = tuple[Journal, PgQueueStore, QueueSync, list[tuple[str, list[str]]]]


@pytest.fixture
def node(tmp_path: Path, pg_dsn: str) -> Iterator[Node]:
    journal = Journal(tmp_path / "state")
    store = PgQueueStore(pg_dsn, lease=60.0)
    imported: list[tuple[str, list[str]]] = []

    def on_imported(fid: str, objects: Sequence[str]) -> None:
        imported.append((fid, list(objects)))

    try:
        yield journal, store, QueueSync(journal, store, on_imported), imported
    finally:
        store.close()
        journal.close()


def _queued(journal: Journal, fid: str) -> str:
    add(journal, fid)
    journal.enqueue(fid, "complete; queued for import")
    return fid


def _state(journal: Journal, fid: str) -> str:
    rec = journal.fileset_by_id(fid)
    assert rec is not None
    return str(rec.state)


def test_a_queued_fileset_is_sent_once_and_its_outcome_mirrored(
    node: Node,
) -> None:
    journal, store, sync, imported = node
    fid = _queued(journal, "f1")
    sync.step()
    sync.step()  # idempotent: still one row, still queued
    assert store.ids_in(["queued"]) == {fid: "queued"}

    claim = store.claim_next(0.0 + 1e12, worker="w1", max_running=5)
    assert claim is not None and claim.id == fid
    sync.step()
    assert _state(journal, fid) == "importing"
    store.record_objects(fid, ["Image:12", "Image:13"])
    store.finish(fid, claim.token, "imported", "")
    sync.step()
    assert _state(journal, fid) == "imported"
    assert imported == [(fid, ["Image:12", "Image:13"])]
    sync.step()
    assert imported == [(fid, ["Image:12", "Image:13"])]  # learnt once


def test_a_retry_and_a_reclaim_go_back_to_queued_and_a_failure_is_mirrored(
    node: Node,
) -> None:
    journal, store, sync, _ = node
    fid = _queued(journal, "f2")
    sync.step()
    claim = store.claim_next(1e12, worker="w1", max_running=5)
    assert claim is not None
    sync.step()
    assert _state(journal, fid) == "importing"
    store.finish(fid, claim.token, "queued", "OMERO unreachable", next_attempt_at=1e12)
    sync.step()
    rec = journal.fileset_by_id(fid)
    assert rec is not None and rec.state == "queued" and rec.last_error == "OMERO unreachable"

    claim = store.claim_next(2e12, worker="w2", max_running=5)
    assert claim is not None
    sync.step()
    assert _state(journal, fid) == "importing"
    assert store.reclaim_expired(now=float("inf")) == [fid]
    sync.step()
    assert _state(journal, fid) == "queued"

    claim = store.claim_next(2e12, worker="w2", max_running=5)
    assert claim is not None
    store.finish(fid, claim.token, "failed", "cannot read plane 3")
    sync.step()
    rec = journal.fileset_by_id(fid)
    assert rec is not None and rec.state == "failed" and rec.last_error == "cannot read plane 3"


def test_an_operator_retry_on_the_node_queues_the_fileset_again_in_the_shared_queue(
    node: Node,
) -> None:
    journal, store, sync, _ = node
    fid = _queued(journal, "f3")
    sync.step()
    claim = store.claim_next(1e12, worker="w1", max_running=5)
    assert claim is not None
    store.finish(fid, claim.token, "failed", "unsupported compression")
    sync.step()
    assert _state(journal, fid) == "failed"

    journal.retry(fid, "amy on host (omero-dropbox retry)")
    sync.step()
    assert store.ids_in(["queued"]) == {fid: "queued"}
    assert _state(journal, fid) == "queued"


def test_a_fileset_journaled_while_the_database_was_away_is_sent_later(
    node: Node,
    pg_dsn: str,
) -> None:
    journal = node[0]
    fid = _queued(journal, "f4")
    unreachable = PgQueueStore(pg_dsn)
    unreachable.dsn = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    unreachable.close()  # its next call connects to the unreachable DSN
    cut_off = QueueSync(journal, unreachable, lambda fid, objects: None)
    cut_off.step()  # logged once, nothing raised, nothing lost
    assert _state(journal, fid) == "queued"
    with PgQueueStore(pg_dsn) as store:
        assert store.ids_in(["queued"]) == {}
        QueueSync(journal, store, lambda fid, objects: None).step()
        assert store.ids_in(["queued"]) == {fid: "queued"}
