"""omero-py's steps around an import (``BlitzSteps``) against a fake OMERO server.

No OMERO server can run here, so every test says ``fake_omero_server``: the query and update
services are stood in for by :class:`FakeServer`, which keeps the saved objects and answers the
few query shapes the steps use. It is strict where the real server is: a query must bind exactly
the parameters it names (Hibernate refuses a missing one and an unknown one alike). What is real:
omero-py's model classes, ``ParametersI`` and rtypes, and the steps' own code.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("omero")

import omero
import omero.all
from omero.rtypes import rlong, unwrap

from omero_dropbox.annotations import AnnotationError
from omero_dropbox.ice.omero_steps import CLIENT_MAP_NS, BlitzSteps

AMY, BOB, LAB = 2, 3, 5


@dataclass
class Row:
    """One saved object: its class and the fields the steps' queries look at."""

    cls: str
    id: int
    owner: int
    group: int
    fields: dict[str, Any] = field(default_factory=dict)


class QueryRefused(Exception):
    """What the real server raises (as ``ApiUsageException``) for a malformed query."""


class FakeServer:
    """Saved objects, and the query shapes :class:`BlitzSteps` uses, evaluated over them."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.lock = threading.Lock()
        self.next_id = 100
        self.saves = 0
        self.lose_next_reply = False
        self.latency = 0.0

    # --- what the steps see as services ---------------------------------------------------

    def save(self, obj: Any, user: int, group: int) -> Any:
        if self.latency:
            time.sleep(self.latency)  # a round trip: lets two callers interleave, as on a real server
        with self.lock:
            self.saves += 1
            return self._store(obj, user, group)

    def save_array(self, objs: Sequence[Any], user: int, group: int) -> None:
        with self.lock:
            links = [
                (type(o).__name__[:-1], unwrap(o.getParent().getId()), unwrap(o.getChild().getId()))
                for o in objs
            ]
            for cls, parent, child in links:
                if any(
                    r.cls == cls and r.fields["parent"] == parent and r.fields["child"] == child
                    for r in self.rows
                ):
                    raise QueryRefused(f"duplicate {cls} {parent}->{child}: unique constraint violated")
            for cls, parent, child in links:
                self._add(cls, user, group, parent=parent, child=child)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise ConnectionError("the reply was lost (the transaction committed)")

    def _add(self, cls: str, user: int, group: int, **fields: Any) -> Row:
        self.next_id += 1
        row = Row(cls, self.next_id, user, group, fields)
        self.rows.append(row)
        return row

    def _store(self, obj: Any, user: int, group: int) -> Any:
        cls = type(obj).__name__[:-1]
        if cls == "ProjectDatasetLink":
            child = obj.getChild()
            dataset = self._add("Dataset", user, group, name=unwrap(child.getName()))
            project = unwrap(obj.getParent().getId())
            self._add(cls, user, group, parent=project, child=dataset.id)
            child.setId(rlong(dataset.id))
            return obj
        if cls == "Project":
            row = self._add(cls, user, group, name=unwrap(obj.getName()))
        elif cls == "TagAnnotation":
            row = self._add(cls, user, group, textValue=unwrap(obj.getTextValue()))
        elif cls == "MapAnnotation":
            pairs = [(nv.name, nv.value) for nv in obj.getMapValue()]
            row = self._add(cls, user, group, ns=unwrap(obj.getNs()), mapValue=pairs)
        else:
            raise QueryRefused(f"the fake server does not save {cls}")
        obj.setId(rlong(row.id))
        return obj

    def query(self, hql: str, params: Any) -> list[Row | tuple[int, ...]]:
        named = set(re.findall(r":(\w+)", hql))
        bound = set(params.map)
        if named != bound:
            raise QueryRefused(f"parameters named {sorted(named)} but bound {sorted(bound)}: {hql}")
        values = {k: unwrap(v) for k, v in params.map.items()}
        m = re.match(r"select (.+?) from (\w+) (\w)\b(.*?) where (.+?)(?: order by \w\.id)?$", hql)
        if m is None:
            raise QueryRefused(f"the fake server cannot read: {hql}")
        selected, cls, alias, joins, where = m.groups()
        with self.lock:
            rows = [r for r in self.rows if r.cls == cls]
            out = [
                r for r in rows if all(self._holds(r, alias, c, values, joins) for c in where.split(" and "))
            ]
        out.sort(key=lambda r: r.id)
        if selected == alias:
            return list(out)
        paths = [s.strip() for s in selected.split(",")]
        return [tuple(self._value(r, p.split(".", 1)[1]) for p in paths) for r in out]

    def _value(self, row: Row, path: str) -> Any:
        return {"id": row.id, "details.owner.id": row.owner, "details.group.id": row.group}.get(
            path, row.fields.get(path.split(".")[0])
        )

    def _holds(self, row: Row, alias: str, cond: str, values: dict[str, Any], joins: str) -> bool:
        m = re.fullmatch(r"(\w)\.([\w.]+) (=|in) \(?:(\w+)\)?", cond.strip())
        if m is None:
            raise QueryRefused(f"the fake server cannot read the condition {cond!r}")
        who, path, op, name = m.groups()
        want = values[name]
        if who == alias:
            got = [self._value(row, path)]
        elif "join d.projectLinks" in joins and path == "parent.id":  # the dataset's projects
            got = [
                r.fields["parent"]
                for r in self.rows
                if r.cls == "ProjectDatasetLink" and r.fields["child"] == row.id
            ]
        else:
            raise QueryRefused(f"unknown alias in {cond!r}")
        return any((g in want) if op == "in" else (g == want) for g in got)

    def objects(self, rows: list[Any]) -> list[Any]:
        """Rows as omero-py model objects (what ``findAllByQuery`` returns)."""
        out = []
        for r in rows:
            if isinstance(r, tuple):
                out.append([rlong(v) for v in r])
                continue
            obj = getattr(omero.model, f"{r.cls}I")()
            obj.setId(rlong(r.id))
            if r.cls == "MapAnnotation":
                obj.setMapValue([omero.model.NamedValue(k, v) for k, v in r.fields["mapValue"]])
            out.append(obj)
        return out

    def count(self, cls: str, **fields: Any) -> int:
        return sum(
            1 for r in self.rows if r.cls == cls and all(r.fields.get(k) == v for k, v in fields.items())
        )


class Conn:
    """The part of a BlitzGateway the steps use, for one user in one group."""

    def __init__(self, server: FakeServer, user: int, group: int) -> None:
        self.server, self.user, self.group = server, user, group
        self.SERVICE_OPTS: dict[str, str] = {}

    def getUserId(self) -> int:
        return self.user

    def getEventContext(self) -> Any:
        return type("EventContext", (), {"groupId": self.group})()

    def getQueryService(self) -> Any:
        server = self.server

        class Query:
            def findAllByQuery(self, hql: str, params: Any, ctx: Any) -> list[Any]:
                return server.objects(server.query(hql, params))

            def projection(self, hql: str, params: Any, ctx: Any) -> list[Any]:
                return server.objects(server.query(hql, params))

        return Query()

    def getUpdateService(self) -> Any:
        server, user, group = self.server, self.user, self.group

        class Update:
            def saveAndReturnObject(self, obj: Any, ctx: Any) -> Any:
                return server.save(obj, user, group)

            def saveArray(self, objs: Sequence[Any], ctx: Any) -> None:
                server.save_array(objs, user, group)

        return Update()


class Client:
    def closeSession(self) -> None:
        pass


class StepsOnFakeServer(BlitzSteps):
    """BlitzSteps whose session joins the fake server (session key: "user:group")."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__("localhost", 4064)
        self.server = server

    def _join(self, session_key: str) -> tuple[Any, Any]:
        user, group = (int(x) for x in session_key.split(":"))
        return Client(), Conn(self.server, user, group)


AMY_KEY = f"{AMY}:{LAB}"


def test_dataset_in_project_is_created_once_then_found_fake_omero_server() -> None:
    server = FakeServer()
    steps = StepsOnFakeServer(server)
    first = steps.dataset_in_project(AMY_KEY, "Mouse", "Day 1")
    assert steps.dataset_in_project(AMY_KEY, "Mouse", "Day 1") == first
    other = steps.dataset_in_project(AMY_KEY, "Mouse", "Day 2")
    assert other != first
    assert server.count("Project", name="Mouse") == 1
    assert server.count("Dataset") == 2
    # Bob's project of the same name is his own; Amy's is not reused for him.
    bobs = steps.dataset_in_project(f"{BOB}:{LAB}", "Mouse", "Day 1")
    assert bobs != first
    assert server.count("Project", name="Mouse") == 2


def test_imports_from_one_folder_at_once_create_one_project_and_dataset_fake_omero_server() -> None:
    server = FakeServer()
    server.latency = 0.01
    steps = StepsOnFakeServer(server)
    ids: list[int] = []
    threads = [
        threading.Thread(target=lambda: ids.append(steps.dataset_in_project(AMY_KEY, "Mouse", "Day 1")))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(set(ids)) == 1 and len(ids) == 6
    assert server.count("Project") == 1 and server.count("Dataset") == 1


def test_annotate_links_pairs_and_tags_to_every_object_binding_every_parameter_fake_omero_server() -> None:
    server = FakeServer()
    steps = StepsOnFakeServer(server)
    steps.annotate(AMY_KEY, ["Image:7", "Image:8", "Fileset:3"], [("Stain", "DAPI")], ["confocal", "day1"])
    assert server.count("MapAnnotation", ns=CLIENT_MAP_NS, mapValue=[("Stain", "DAPI")]) == 1
    assert server.count("TagAnnotation") == 2
    assert server.count("ImageAnnotationLink") == 6  # 2 images x (map + 2 tags); a Fileset carries none
    # An existing tag of hers is reused; Bob's tag of the same name is not hers to link.
    steps.annotate(f"{BOB}:{LAB}", ["Image:9"], [], ["confocal"])
    steps.annotate(AMY_KEY, ["Image:10"], [], ["confocal"])
    assert server.count("TagAnnotation", textValue="confocal") == 2


def test_attaching_again_after_a_lost_reply_attaches_nothing_twice_fake_omero_server() -> None:
    server = FakeServer()
    steps = StepsOnFakeServer(server)
    server.lose_next_reply = True
    with pytest.raises(ConnectionError):
        steps.annotate(AMY_KEY, ["Image:7", "Image:8"], [("Stain", "DAPI"), ("Day", "1")], ["confocal"])
    saved = len(server.rows)
    # The duty retries: nothing new is created or linked, and the retry succeeds.
    steps.annotate(AMY_KEY, ["Image:7", "Image:8"], [("Stain", "DAPI"), ("Day", "1")], ["confocal"])
    assert len(server.rows) == saved
    assert server.count("MapAnnotation") == 1
    assert server.count("ImageAnnotationLink") == 4
    # Other pairs on the same images are a new annotation, linked once.
    steps.annotate(AMY_KEY, ["Image:7"], [("Stain", "GFP")], [])
    assert server.count("MapAnnotation") == 2
    assert server.count("ImageAnnotationLink") == 5


def test_objects_that_cannot_carry_annotations_fail_for_good_fake_omero_server() -> None:
    steps = StepsOnFakeServer(FakeServer())
    with pytest.raises(AnnotationError) as err:
        steps.annotate(AMY_KEY, ["Fileset:3", "Pixels:4"], [("a", "b")], [])
    assert err.value.final
