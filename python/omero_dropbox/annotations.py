"""Attaches a fileset's key-value pairs and tags (``dropbox.toml``) after its import, durably.

``omero import`` can attach neither (its ``--annotation-*`` options make comment annotations),
so the importer that can talk to OMERO (:class:`Annotator`, the OMERO importer's omero-py
steps) attaches them to the objects the import created. The attaching is journaled as a state
of its own: ``pending`` as soon as the import is recorded, then ``done``, or ``failed`` with
the reason. A transient failure (OMERO down) stays pending and is tried again at start-up and
after a back-off (``retry_every`` doubling per attempt, at most an hour), up to
``max_attempts``; the import itself is never repeated for it. ``omero-dropbox retry`` on the
fileset tries a failed attaching again.

Attaching again after a lost reply attaches nothing twice: the omero-py steps link only what is
not linked yet and reuse a map annotation with the same pairs already on the objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from omero_dropbox.fileset_duty import FilesetDuty
from omero_dropbox.folder_settings import ImportPlan
from omero_dropbox.journal import IMPORTED, Journal, display_path

__all__ = ["AnnotationError", "Annotations", "Annotator"]

log = logging.getLogger("omero_dropbox.annotations")

#: The longest wait between two attempts, and the longest the duty sleeps before looking for
#: work again (an operator's retry is picked up within that).
_MAX_BACKOFF = 3600.0
_POLL = 2.0


class AnnotationError(Exception):
    """Attaching failed; ``final`` when trying again cannot help (no objects, refused)."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


@runtime_checkable
class Annotator(Protocol):
    """Attaches ``plan``'s key-value pairs and tags to ``objects`` as ``user`` (in ``plan.group``)."""

    def annotate(self, user: str, plan: ImportPlan, objects: Sequence[str]) -> None: ...


def annotator_of(importer: object) -> Annotator | None:
    """The importer's way to attach annotations, if it has one (the OMERO importer does)."""
    return importer if isinstance(importer, Annotator) else None


class Annotations(FilesetDuty):
    """The annotation duty of one service; with no annotator, filesets keep their plan only
    (a command importer gets the plan in ``$OMERO_DROPBOX_PLAN`` and attaches them itself)."""

    name = "annotations"

    def __init__(
        self,
        journal: Journal,
        annotator: Annotator | None,
        *,
        retry_every: float = 30.0,
        max_attempts: int = 12,
    ) -> None:
        super().__init__(log, min(_POLL, max(retry_every, 0.1)))
        self.journal = journal
        self.annotator = annotator
        self.retry_every = retry_every
        self.max_attempts = max_attempts

    @property
    def active(self) -> bool:
        return self.annotator is not None

    def imported(self, fileset_id: str, plan: ImportPlan) -> None:
        """A fileset's import was just journaled: note its annotations, then attach them."""
        if self.annotator is None or not plan.annotates:
            return
        if self.journal.annotations_begin(fileset_id):
            self.run(fileset_id)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed attempts (0: none, due now)."""
        if attempts <= 0:
            return 0.0
        return float(min(self.retry_every * 2 ** min(attempts - 1, 30), _MAX_BACKOFF))

    def due(self) -> Iterable[str]:
        """Pending attaching whose back-off has passed (an operator's retry: at once)."""
        now = time.time()
        return [
            fid
            for fid, attempts, updated in self.journal.annotations_pending()
            if now >= updated + self.backoff(attempts)
        ]

    def _run(self, fid: str) -> None:
        annotator = self.annotator
        rec = self.journal.fileset_by_id(fid)
        state = self.journal.annotations_state(fid)
        if annotator is None or rec is None or state is None or state[0] != "pending":
            return
        if rec.state != IMPORTED:
            self.journal.annotations_end(
                fid, done=False, final=True, reason="not attached: the fileset is no longer imported"
            )
            return
        plan = ImportPlan.from_json(rec.plan)
        objects = self.journal.objects_of([fid]).get(fid, [])
        what = _what(plan)
        try:
            if not objects:
                raise AnnotationError(
                    "the importer reported no imported objects to attach them to; attach them in "
                    "OMERO.web by hand",
                    final=True,
                )
            annotator.annotate(rec.user, plan, objects)
        except AnnotationError as exc:
            self._failed(fid, rec.key, what, str(exc), exc.final)
            return
        except Exception as exc:  # the annotator is another party's code: never lose the state
            self._failed(fid, rec.key, what, f"{type(exc).__name__}: {exc}", False)
            return
        log.info("Attached %s to %s (%s)", what, ", ".join(objects[:5]), display_path(rec.key))
        self.journal.annotations_end(fid, done=True, final=True, reason=f"attached {what}")

    def _failed(self, fid: str, key: str, what: str, why: str, final: bool) -> None:
        attempts = next((a for f, a, _at in self.journal.annotations_pending() if f == fid), 0) + 1
        final = final or attempts >= self.max_attempts
        reason = (
            f"{what} not attached: {why}"
            + ("" if final else f"; tried again in {self.backoff(attempts):g} s")
            + ("; `omero-dropbox retry` the fileset to try again" if final else "")
        )
        (log.error if final else log.warning)("Annotations of %s: %s", display_path(key), reason)
        self.journal.annotations_end(fid, done=False, final=final, reason=reason)


def _what(plan: ImportPlan) -> str:
    parts = []
    if plan.key_values:
        n = len(plan.key_values)
        parts.append(f"{n} key-value pair{'s' if n != 1 else ''}")
    if plan.tags:
        parts.append(f"{len(plan.tags)} tag{'s' if len(plan.tags) != 1 else ''}")
    return " and ".join(parts) or "nothing"
