"""OMERO/Ice integration: a drop-in ``MonitorServer`` and ``DropBox`` for OMERO's IceGrid.

Needs the ``omero`` extra (``pip install 'omero-dropbox-ng[omero]'``: omero-py and
zeroc-ice 3.6.5; on Python >= 3.11 build the Ice wheel with ``scripts/build-ice-wheel.sh``).
Nothing outside this package imports Ice, so core installs work without it.

Entry points (what IceGrid's server templates run; see ``docs/icegrid.md``)::

    python -m omero_dropbox.ice.monitor_server   # server id MonitorServer
    python -m omero_dropbox.ice.dropbox_service  # server id DropBox
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["IceUnavailableError", "load_slice"]

_INSTALL_HINT = (
    "install the omero extra: pip install 'omero-dropbox-ng[omero]' (omero-py and zeroc-ice 3.6.5; "
    "on Python >= 3.11 first build the Ice wheel with scripts/build-ice-wheel.sh and pass "
    "--find-links ~/.cache/omero-dropbox-ng/wheelhouse)"
)


class IceUnavailableError(ImportError):
    """Ice or omero-py is not installed; the message says how to install them."""


def load_slice() -> tuple[ModuleType, ModuleType]:
    """``(Ice, omero)`` with the FS Slice (``omero.grid.monitors``) and ``omero.OmeroFSError`` loaded.

    Only the generated FS and error modules are loaded, not all of ``omero.all``, which keeps
    the MonitorServer's start-up and memory small.
    """
    try:
        import Ice  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        raise IceUnavailableError(f"zeroc-ice is not installed ({exc}); {_INSTALL_HINT}") from exc
    try:
        import omero  # type: ignore[import-not-found, import-untyped, unused-ignore]
        import omero_FS_ice  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
        import omero_ServerErrors_ice  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise IceUnavailableError(f"omero-py is not installed ({exc}); {_INSTALL_HINT}") from exc
    return Ice, omero
