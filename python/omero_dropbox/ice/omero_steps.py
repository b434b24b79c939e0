"""The OMERO importer's omero-py steps around an import, in the user's own session.

* :meth:`BlitzSteps.dataset_in_project`: a folder's ``project`` + ``dataset`` settings, which
  ``omero import`` cannot express (it takes a dataset id or ``-T Dataset:name:``), become the
  id of the user's dataset of that name in her project of that name, each created if missing
  (the most recent when several share the name, as ``-T Dataset:name:`` chooses);
* :meth:`BlitzSteps.annotate`: the key-value pairs become one map annotation in the namespace
  OMERO.web shows as editable key-value pairs, and the tags the user's own tags of those names
  (created if missing); both are linked to every object the import created.

The session is joined by its key and left open (``detachOnDestroy``): the service opened it
for this user and closes it. Names are bound as query parameters, never pasted into HQL.
"""

from __future__ import annotations

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

        targets = [
            (kind, int(ident))
            for kind, _, ident in (o.partition(":") for o in objects)
            if kind in ANNOTATABLE and ident.isdigit()
        ]
        if not targets:
            raise AnnotationError(
                f"none of the imported objects ({', '.join(objects[:5])}) can carry annotations", final=True
            )
        omero, _ = _modules()
        from omero.rtypes import rstring

        client, conn = self._join(session_key)
        try:
            query, update, ctx = conn.getQueryService(), conn.getUpdateService(), conn.SERVICE_OPTS
            annotations: list[Any] = []
            if key_values:
                ann = omero.model.MapAnnotationI()
                ann.setNs(rstring(CLIENT_MAP_NS))
                ann.setMapValue([omero.model.NamedValue(k, v) for k, v in key_values])
                saved = update.saveAndReturnObject(ann, ctx)
                annotations.append(omero.model.MapAnnotationI(saved.getId().getValue(), False))
            for name in tags:
                params = omero.sys.ParametersI()
                params.addLong("uid", conn.getUserId())
                params.addString("name", name)
                found = query.findAllByQuery(
                    "select t from TagAnnotation t where t.textValue = :name"
                    " and t.details.owner.id = :uid and t.details.group.id = :gid order by t.id",
                    params,
                    ctx,
                )
                if found:
                    tag_id = found[0].getId().getValue()
                else:
                    tag = omero.model.TagAnnotationI()
                    tag.setTextValue(rstring(name))
                    tag_id = update.saveAndReturnObject(tag, ctx).getId().getValue()
                annotations.append(omero.model.TagAnnotationI(tag_id, False))
            links = []
            for kind, ident in targets:
                for annotation in annotations:
                    link = getattr(omero.model, ANNOTATABLE[kind])()
                    link.setParent(getattr(omero.model, f"{kind}I")(ident, False))
                    link.setChild(annotation)
                    links.append(link)
            update.saveArray(links, ctx)
        finally:
            self._leave(client)
