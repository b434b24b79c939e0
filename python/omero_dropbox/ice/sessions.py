"""OMERO sessions for imports: one short-lived session per import, made by an admin session.

As upstream ``loginUser``: the admin (inside IceGrid: ``root``, with no password, through
the internal ``Glacier2::SessionManager``) looks the user up and calls
``ISession.createSessionWithTimeouts(Principal(name=user, group="user", eventType="User"),
timeToLive, timeToIdle)``; group ``"user"`` makes the server use the user's default group.
Unlike upstream the session is closed right after the import, and its key is never logged.

Two ways to get the admin session:

* :func:`internal_root_factory`: inside OMERO's IceGrid (the ``DropBox`` server), exactly as
  upstream (``omero.util.internal_service_factory``, retried ``omero.fs.maxRetries`` times
  every ``omero.fs.retryInterval`` seconds);
* :func:`password_admin_factory`: anywhere else (``omero-dropbox run --importer omero``): an
  admin login with a password read from a 0600 file or the environment, never from argv.

Both give a :class:`UserSessions`, which is the importer's
:class:`~omero_dropbox.importers.SessionProvider` and the engine's
:class:`~omero_dropbox.engine.UserDirectory` (does that OMERO user exist?).
:func:`omero_importer_for` builds the importer for a configuration. The session timeouts are
those of the first ``importUsers`` entry (one admin session serves every entry).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omero_dropbox.config import DEFAULT_USER, DropBoxConfig
from omero_dropbox.engine import UserDirectory
from omero_dropbox.folder_settings import ImportPlan
from omero_dropbox.ice import load_slice
from omero_dropbox.importers import (
    BaseImporter,
    ImportRequest,
    ImportResult,
    OmeroImporter,
    OmeroSteps,
    PermanentImportError,
    SessionProvider,
)

__all__ = [
    "ADMIN_PASSWORD_ENV",
    "PerUserOmeroImporter",
    "UserSessions",
    "check_admin_login",
    "internal_root_factory",
    "load_omero",
    "omero_importer_for",
    "password_admin_factory",
    "read_password_file",
]

log = logging.getLogger("omero_dropbox.sessions")

#: Environment variable holding the admin password for ``omero-dropbox run --importer omero``.
ADMIN_PASSWORD_ENV = "OMERO_DROPBOX_ADMIN_PASSWORD"

_EXISTS_TTL = 300.0
_MISSING_TTL = 30.0

Factory = Callable[[], Any]  # () -> omero.api.ServiceFactoryPrx


def _omero() -> tuple[Any, Any]:
    """``(Ice, omero)`` with every generated omero module (the API, model and sys types) loaded."""
    import importlib

    ice, omero_module = load_slice()
    importlib.import_module("omero.all")
    return ice, omero_module


class UserSessions(UserDirectory):
    """Per-user sessions created from an admin ``ServiceFactory``; thread-safe.

    ``factory()`` returns a (possibly new) admin ``ServiceFactoryPrx``; it is called again
    when the current one stops working (server restart, session expired).
    """

    def __init__(
        self,
        factory: Factory,
        *,
        time_to_live_ms: int = 0,
        time_to_idle_ms: int = 600_000,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._factory = factory
        self._close_factory = close
        self.time_to_live_ms = int(time_to_live_ms)
        self.time_to_idle_ms = int(time_to_idle_ms)
        self._sf: Any = None
        self._lock = threading.Lock()
        self._open: dict[str, Any] = {}
        self._known: dict[str, tuple[bool, float]] = {}
        self._unreachable_logged = False

    # ------------------------------------------------------------ admin session

    def _admin(self, fresh: bool = False) -> Any:
        with self._lock:
            if self._sf is None or fresh:
                self._sf = self._factory()
            return self._sf

    def _call(self, op: Callable[[Any], Any]) -> Any:
        """Run ``op(admin)``, once more on a fresh admin session if the first one is gone."""
        Ice, omero = _omero()
        try:
            return op(self._admin())
        except (Ice.ObjectNotExistException, Ice.ConnectionLostException, omero.SessionException) as exc:
            log.info("Admin session lost (%s); creating a new one", type(exc).__name__)
            return op(self._admin(fresh=True))

    # ----------------------------------------------------------- users

    def exists(self, name: str) -> bool:
        """Does OMERO user ``name`` exist? Cached; when the server cannot be asked, True.

        True on errors keeps files of a real user from being skipped forever while the server is
        down: their import then fails transiently and is retried.
        """
        now = time.monotonic()
        hit = self._known.get(name)
        if hit is not None and now - hit[1] < (_EXISTS_TTL if hit[0] else _MISSING_TTL):
            return hit[0]
        _, omero = _omero()
        try:
            self._call(lambda sf: sf.getAdminService().lookupExperimenter(name))
            found = True
        except omero.ApiUsageException:
            found = False
        except Exception as exc:
            if not self._unreachable_logged:  # once per outage, not once per file
                self._unreachable_logged = True
                log.warning(
                    "Cannot ask OMERO whether users exist (%s); assuming they do until it answers", exc
                )
            return True
        if self._unreachable_logged:
            self._unreachable_logged = False
            log.info("OMERO answers again")
        self._known[name] = (found, now)
        return found

    # ---------------------------------------------------------- sessions

    def open_session(self, user: str, group: str | None = None) -> str:
        """A session of ``user`` in ``group`` (a folder's settings), else her default group.

        OMERO refuses a group the user is not a member of; that fails the import for good,
        with the server's reason.
        """
        _, omero = _omero()
        if not self.exists(user):
            raise PermanentImportError(f"user unknown: there is no OMERO user named {user!r}")

        def create(sf: Any) -> Any:
            principal = omero.sys.Principal()
            principal.name = user
            # "user" is the server's name for the user's default group.
            principal.group = group if group else "user"
            principal.eventType = "User"
            return sf.getSessionService().createSessionWithTimeouts(
                principal, self.time_to_live_ms, self.time_to_idle_ms
            )

        try:
            session = self._call(create)
        except omero.ApiUsageException as exc:
            where = f" in group {group!r}" if group else ""
            raise PermanentImportError(
                f"cannot create a session for {user!r}{where}: {exc.message}"
            ) from None
        except omero.SecurityViolation as exc:
            if group:
                raise PermanentImportError(
                    f"OMERO refused a session for {user!r} in group {group!r} ({exc.message}); "
                    f"is {user} a member of {group}? Fix the group in the folder's dropbox.toml"
                ) from None
            raise PermanentImportError(
                f"the admin session may not create sessions for {user!r} ({exc.message}); "
                "use root or an administrator with the Sudo privilege"
            ) from None
        key = str(session.getUuid().getValue())
        with self._lock:
            self._open[key] = session
        log.debug("Opened a session for %s", user)
        return key

    def close_session(self, key: str) -> None:
        with self._lock:
            session = self._open.pop(key, None)
        if session is None:
            return
        self._call(lambda sf: sf.getSessionService().closeSession(session))

    def close(self) -> None:
        """Close the sessions still open and the admin session."""
        for key in list(self._open):
            try:
                self.close_session(key)
            except Exception as exc:
                log.warning("Could not close a user session: %s", type(exc).__name__)
        if self._close_factory is not None:
            self._close_factory()


# --------------------------------------------------------------------------- admin sessions


def internal_root_factory(communicator: Any, retries: int = 5, interval: float = 3.0) -> Factory:
    """Root sessions from inside IceGrid, as upstream (``omero.fs.maxRetries``/``retryInterval``)."""

    def factory() -> Any:
        _omero()
        import omero.util

        sf = omero.util.internal_service_factory(
            communicator, "root", "system", retries=max(1, retries), interval=interval
        )
        if sf is None:
            raise RuntimeError("shutting down: no root session")
        return sf

    return factory


def read_password_file(path: Path) -> str:
    """The first line of ``path``, which must be a regular file readable by its owner only."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PermissionError(f"{path}: cannot read the OMERO password file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"{path}: the OMERO password file is not a regular file")
    if st.st_mode & 0o077:
        raise PermissionError(
            f"{path}: the OMERO password file is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run chmod 600 {path}"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0]:
        raise PermissionError(f"{path}: the OMERO password file is empty")
    return lines[0]


def password_admin_factory(
    host: str, port: int, user: str, password: str
) -> tuple[Factory, Callable[[], None]]:
    """Admin sessions by password login (outside IceGrid); returns ``(factory, close)``."""
    clients: list[Any] = []

    def factory() -> Any:
        _, omero = _omero()
        for old in clients:
            old.__del__()
        clients.clear()
        client = omero.client(host, int(port))
        clients.append(client)
        return client.createSession(user, password)

    def close() -> None:
        for client in clients:
            client.__del__()
        clients.clear()

    return factory, close


def load_omero() -> None:
    """Import Ice and omero-py now (``ImportError`` naming the install when either is missing)."""
    _omero()


def check_admin_login(
    sessions: UserSessions, host: str, port: int, admin: str, retries: int = 5, interval: float = 3.0
) -> tuple[str, bool] | None:
    """Log the admin in once at start, so that a wrong server or password stops the start
    rather than the first import. None when it worked, else ``(message, permanent)``:
    permanent when the server refused the login (not retried), otherwise after ``retries``
    tries ``interval`` s apart (``omero.fs.maxRetries`` / ``retryInterval``, as upstream's
    start-up)."""
    _, omero = _omero()
    import Glacier2

    refused = (
        Glacier2.PermissionDeniedException,
        Glacier2.CannotCreateSessionException,
        omero.SecurityViolation,
    )
    tries = max(1, retries)
    for attempt in range(1, tries + 1):
        try:
            sessions._admin(fresh=True)
            return None
        except refused as exc:
            sessions.close()
            reason = getattr(exc, "reason", "") or getattr(exc, "message", "") or type(exc).__name__
            return (
                f"OMERO at {host}:{port} refused the login of admin '{admin}' ({reason}); check the "
                "admin name (--omero-admin) and its password",
                True,
            )
        except Exception as exc:
            error = " ".join(str(exc).split()) or type(exc).__name__  # Ice's text spans lines
            if attempt < tries:
                log.warning(
                    "Cannot log in to OMERO at %s:%s yet (%s); trying again in %g s",
                    host,
                    port,
                    error,
                    interval,
                )
                time.sleep(interval)
    sessions.close()
    return (
        f"cannot reach OMERO at {host}:{port} to log in as '{admin}' ({error}; {tries} tries, {interval:g} s "
        "apart); check omero.fs.host and omero.fs.port (-D omero.fs.host=HOST -D omero.fs.port=4064, the "
        "server's Glacier2 router port), or start OMERO first; raise omero.fs.maxRetries and "
        "omero.fs.retryInterval if it starts slowly",
        False,
    )


# --------------------------------------------------------------------------- importer


class PerUserOmeroImporter(BaseImporter):
    """One :class:`OmeroImporter` per ``importUsers`` entry, so each entry keeps its ``importArgs``.

    A user with an entry of its own uses it; everyone else (all-users mode) uses ``default``.
    """

    def __init__(self, by_entry: Mapping[str, OmeroImporter]) -> None:
        if not by_entry:
            raise ValueError("PerUserOmeroImporter needs at least one importer")
        self.by_entry = dict(by_entry)
        self._fallback = self.by_entry.get(DEFAULT_USER) or next(iter(self.by_entry.values()))

    def __call__(self, request: ImportRequest) -> ImportResult:
        return self.by_entry.get(request.user, self._fallback)(request)

    def annotate(self, user: str, plan: ImportPlan, objects: Sequence[str]) -> None:
        self.by_entry.get(user, self._fallback).annotate(user, plan, objects)

    @property
    def sessions(self) -> SessionProvider:
        return self._fallback.sessions

    def __repr__(self) -> str:
        return repr(self._fallback) if len(self.by_entry) == 1 else f"PerUserOmeroImporter({self.by_entry!r})"


def omero_importer_for(
    config: DropBoxConfig,
    sessions: UserSessions,
    *,
    omero: str | None = None,
    session_root: Path | None = None,
    steps: OmeroSteps | None = None,
) -> PerUserOmeroImporter:
    """The OMERO importer for ``config``: host, port, per-entry ``importArgs``, ``importTimeout``;
    ``steps`` (default: omero-py's, :class:`~omero_dropbox.ice.omero_steps.BlitzSteps`) resolve a
    project's dataset and attach key-value pairs and tags for the folder settings."""
    if steps is None:
        from omero_dropbox.ice.omero_steps import BlitzSteps

        steps = BlitzSteps(config.host, config.port)
    return PerUserOmeroImporter(
        {
            u.import_user: OmeroImporter(
                config.host,
                config.port,
                sessions,
                u.import_args,
                omero=omero,
                session_root=session_root,
                timeout=config.import_timeout or None,
                steps=steps,
            )
            for u in config.users
        }
    )
