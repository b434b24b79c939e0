"""The OMERO importer's omero-py steps around an import, in the user's own session.

* :meth:`BlitzSteps.dataset_in_project`: a folder's ``project`` + ``dataset`` settings, which
  ``omero import`` cannot express (it takes a dataset id or ``-T Dataset:name:``), become the
  id of the user's dataset of that name in her project of that name, each created if missing
  (the most recent when several share the name, as ``-T Dataset:name:`` chooses);
* :meth:`BlitzSteps.annotate`: the key-value pairs become one map annotation in the namespace
  OMERO.web shows as editable key-value pairs, and the tags the user's own tags of those names
  (created if missing); both are linked to every object the import created. Attaching again
  (after a lost reply, or an operator's retry) links only what is not linked yet and reuses a
  map annotation with the same pairs already on those objects: nothing is attached twice.

Finding or creating a project, dataset or tag is one step at a time per service: two imports
from one folder run at once and would otherwise each create "the" dataset of that name.

The session is joined by its key and left open (``detachOnDestroy``): the service opened it
for this user and closes it. Names are bound as query parameters, never pasted into HQL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["ANNOTATABLE", "BlitzSteps"]

#: OMERO.web lists and edits map annotations in this namespace as "Key-Value Pairs".
CLIENT_MAP_NS = "openmicroscopy.org/omero/client/mapAnnotation"

#: Objects an import reports that annotations can be linked to, and their link class.
ANNOTATABLE = {
    "Image": "ImageAnnotationLinkI",
    "Plate": "PlateAnnotationLinkI",
    "Screen": "ScreenAnnotationLinkI",
    "Dataset": "DatasetAnnotationLinkI",
    "Project": "ProjectAnnotationLinkI",
    "Well": "WellAnnotationLinkI",
}


def _modules() -> tuple[Any, Any]:
    """``(omero, omero.gateway.BlitzGateway)``, with the model loaded."""
    import omero
    import omero.all
    from omero.gateway import BlitzGateway

    return omero, BlitzGateway


class BlitzSteps:
    """:class:`~omero_dropbox.importers.OmeroSteps` through omero-py's BlitzGateway."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = int(port)
        self._find_or_create = threading.Lock()

    def _join(self, session_key: str) -> tuple[Any, Any]:
        omero, gateway = _modules()
        client = omero.client(self.host, self.port)
        try:
            client.joinSession(session_key).detachOnDestroy()
            return client, gateway(client_obj=client)
        except BaseException:
            client.closeSession()
            raise

    @staticmethod
    def _mine(omero: Any, conn: Any) -> Any:
        """Query parameters naming the session's user and group: only her objects in the
        group the import goes to (a tag or project of another group cannot be linked)."""
        params = omero.sys.ParametersI()
        params.addLong("uid", conn.getUserId())
        params.addLong("gid", conn.getEventContext().groupId)
        return params

    @staticmethod
    def _leave(client: Any) -> None:
        client.closeSession()  # detached: the session itself stays for the service to close

    def dataset_in_project(self, session_key: str, project: str, dataset: str) -> int:
        omero, _ = _modules()
        from omero.rtypes import rstring

        client, conn = self._join(session_key)
        try:
            query, update, ctx = conn.getQueryService(), conn.getUpdateService(), conn.SERVICE_OPTS
            with self._find_or_create:
                params = self._mine(omero, conn)
                params.addString("name", project)
                found = query.findAllByQuery(
                    "select p from Project p where p.name = :name and p.details.owner.id = :uid"
                    " and p.details.group.id = :gid order by p.id",
                    params,
                    ctx,
                )
                if found:
                    project_id = int(found[-1].getId().getValue())
                else:
                    new_project = omero.model.ProjectI()
                    new_project.setName(rstring(project))
                    project_id = int(update.saveAndReturnObject(new_project, ctx).getId().getValue())
                params = self._mine(omero, conn)
                params.addLong("pid", project_id)
                params.addString("name", dataset)
                found = query.findAllByQuery(
                    "select d from Dataset d join d.projectLinks l where l.parent.id = :pid"
                    " and d.name = :name and d.details.owner.id = :uid"
                    " and d.details.group.id = :gid order by d.id",
                    params,
                    ctx,
                )
                if found:
                    return int(found[-1].getId().getValue())
                new_dataset = omero.model.DatasetI()
                new_dataset.setName(rstring(dataset))
                link = omero.model.ProjectDatasetLinkI()
                link.setParent(omero.model.ProjectI(project_id, False))
                link.setChild(new_dataset)
                saved = update.saveAndReturnObject(link, ctx)
                return int(saved.getChild().getId().getValue())
        finally:
            self._leave(client)

    def annotate(
        self,
        session_key: str,
        objects: Sequence[str],
        key_values: Sequence[tuple[str, str]],
        tags: Sequence[str],
    ) -> None:
        from omero_dropbox.annotations import AnnotationError

        targets: dict[str, list[int]] = {}
        for kind, _, number in (o.partition(":") for o in objects):
            if kind in ANNOTATABLE and number.isdigit() and int(number) not in targets.get(kind, []):
                targets.setdefault(kind, []).append(int(number))
        if not targets:
            raise AnnotationError(
                f"none of the imported objects ({', '.join(objects[:5])}) can carry annotations", final=True
            )
        omero, _ = _modules()

        client, conn = self._join(session_key)
        try:
            linked = {kind: self._linked(omero, conn, kind, ids) for kind, ids in targets.items()}
            wanted: list[tuple[str, int]] = []
            if key_values:
                on_targets = {a for pairs in linked.values() for _, a in pairs}
                wanted.append(("MapAnnotation", self._map_annotation(omero, conn, key_values, on_targets)))
            with self._find_or_create:
                wanted.extend(("TagAnnotation", self._tag(omero, conn, name)) for name in tags)
            links = []
            for kind, ids in targets.items():
                for ident in ids:
                    for annotation_class, annotation_id in wanted:
                        if (ident, annotation_id) in linked[kind]:
                            continue
                        link = getattr(omero.model, ANNOTATABLE[kind])()
                        link.setParent(getattr(omero.model, f"{kind}I")(ident, False))
                        link.setChild(getattr(omero.model, f"{annotation_class}I")(annotation_id, False))
                        links.append(link)
            if links:
                conn.getUpdateService().saveArray(links, conn.SERVICE_OPTS)
        finally:
            self._leave(client)

    def _linked(self, omero: Any, conn: Any, kind: str, ids: list[int]) -> set[tuple[int, int]]:
        """``(object id, annotation id)`` of the user's links on these objects already."""
        from omero.rtypes import rlist, rlong

        params = self._mine(omero, conn)
        params.add("ids", rlist([rlong(i) for i in ids]))
        rows = conn.getQueryService().projection(
            f"select l.parent.id, l.child.id from {ANNOTATABLE[kind][:-1]} l"
            " where l.parent.id in (:ids) and l.details.owner.id = :uid and l.details.group.id = :gid",
            params,
            conn.SERVICE_OPTS,
        )
        return {(int(row[0].getValue()), int(row[1].getValue())) for row in rows}

    def _map_annotation(
        self, omero: Any, conn: Any, key_values: Sequence[tuple[str, str]], on_targets: set[int]
    ) -> int:
        """The id of a map annotation with exactly these pairs: one already on the objects
        (attached by an earlier attempt whose reply was lost), else a new one."""
        from omero.rtypes import rlist, rlong, rstring

        if on_targets:
            params = self._mine(omero, conn)
            params.add("ids", rlist([rlong(i) for i in sorted(on_targets)]))
            params.addString("ns", CLIENT_MAP_NS)
            hql = (
                "select a from MapAnnotation a left outer join fetch a.mapValue where a.id in (:ids)"
                " and a.ns = :ns and a.details.owner.id = :uid and a.details.group.id = :gid order by a.id"
            )
            for ann in conn.getQueryService().findAllByQuery(hql, params, conn.SERVICE_OPTS):
                if [(nv.name, nv.value) for nv in ann.getMapValue() or []] == list(key_values):
                    return int(ann.getId().getValue())
        ann = omero.model.MapAnnotationI()
        ann.setNs(rstring(CLIENT_MAP_NS))
        ann.setMapValue([omero.model.NamedValue(k, v) for k, v in key_values])
        return int(conn.getUpdateService().saveAndReturnObject(ann, conn.SERVICE_OPTS).getId().getValue())

    def _tag(self, omero: Any, conn: Any, name: str) -> int:
        """The id of the user's tag of this name in the group (the oldest), created if missing."""
        from omero.rtypes import rstring

        params = self._mine(omero, conn)
        params.addString("name", name)
        hql = (
            "select t from TagAnnotation t where t.textValue = :name"
            " and t.details.owner.id = :uid and t.details.group.id = :gid order by t.id"
        )
        found = conn.getQueryService().findAllByQuery(hql, params, conn.SERVICE_OPTS)
        if found:
            return int(found[0].getId().getValue())
        tag = omero.model.TagAnnotationI()
        tag.setTextValue(rstring(name))
        return int(conn.getUpdateService().saveAndReturnObject(tag, conn.SERVICE_OPTS).getId().getValue())
