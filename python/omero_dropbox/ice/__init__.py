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
from typing import TYPE_CHECKING, Any

__all__ = ["IceUnavailableError", "load_slice"]

if TYPE_CHECKING:
    # zeroc-ice and omero-py ship no types, and the Slice servant classes are generated when
    # the Slice is loaded; to mypy their modules are Any (pyproject.toml), and a class cannot
    # be checked if it derives from Any. The servers therefore derive, for mypy only, from
    # these stand-ins (at run time: Ice.Application and the Slice classes), so that everything
    # they define themselves is checked.

    class Application:
        """What the servers use of ``Ice.Application``."""

        def communicator(self) -> Any: ...
        def shutdownOnInterrupt(self) -> None: ...
        def main(self, args: list[str]) -> int: ...

    Servant = object
    """A Slice servant base class (``omero.grid.monitors.MonitorServer``, ``MonitorClient``)."""

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
        import Ice
    except ImportError as exc:
        raise IceUnavailableError(f"zeroc-ice is not installed ({exc}); {_INSTALL_HINT}") from exc
    try:
        import omero
        import omero_FS_ice  # noqa: F401
        import omero_ServerErrors_ice  # noqa: F401
    except ImportError as exc:
        raise IceUnavailableError(f"omero-py is not installed ({exc}); {_INSTALL_HINT}") from exc
    return Ice, omero
