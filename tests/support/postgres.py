"""A private PostgreSQL server for tests: ``initdb`` in a temporary directory, listening only on
a free loopback port and a private socket directory, password authentication.  No mocks.

Fixtures (imported by tests/conftest.py):

* ``postgres_server`` (session): the running :class:`PostgresServer`; skipped, with the reason,
  only when the PostgreSQL server binaries are not installed;
* ``pg_dsn`` (function): a fresh, empty database on it, dropped after the test.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (or
``$OMERO_DROPBOX_TEST_PG_USER``) and its directory belongs to that user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_pg_bin", "pg_dsn", "postgres_server"]

PG_BIN_ENV = "OMERO_DROPBOX_TEST_PG_BIN"
PG_USER_ENV = "OMERO_DROPBOX_TEST_PG_USER"
SUPERUSER = "odb_test"


def find_pg_bin() -> Path | None:
    """The directory with ``initdb``, ``pg_ctl`` and ``postgres``: ``$OMERO_DROPBOX_TEST_PG_BIN``,
    the newest Debian/Ubuntu install, or ``PATH``."""
    candidates: list[str] = []
    if os.environ.get(PG_BIN_ENV):
        candidates.append(os.environ[PG_BIN_ENV])
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2] or 0), reverse=True
    )
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)  # RHEL/PGDG layout
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    for c in candidates:
        if all(os.access(os.path.join(c, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One private PostgreSQL cluster: :meth:`start`, :meth:`stop`, :meth:`restart`, :meth:`destroy`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.password = secrets.token_urlsafe(16)
        self.base = Path(tempfile.mkdtemp(prefix="odb-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.log = self.base / "server.log"
        self.port = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = os.environ.get(PG_USER_ENV, "postgres")
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                pytest.skip(f"running as root, and there is no user {user!r} to run PostgreSQL as")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", user, "--"]
        self.sockets.mkdir()
        if self._as:
            os.chown(self.sockets, os.stat(self.base).st_uid, os.stat(self.base).st_gid)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as:
            os.chown(pwfile, os.stat(self.base).st_uid, os.stat(self.base).st_gid)
        pwfile.chmod(0o600)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> str:
        cmd = [*self._as, str(self.bin_dir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\nserver log:\n{log}"
            )
        return done.stdout

    def start(self) -> None:
        """Start on a free loopback port (a new one if another process took the one chosen)."""
        for attempt in itertools.count(1):
            self.port = self.port or _free_port()
            try:
                self._pg(
                    "pg_ctl",
                    "start",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
                    " -c fsync=off -c max_connections=60 -c shared_buffers=16MB",
                )
                return
            except RuntimeError:
                if attempt >= 3:
                    raise
                self.port = 0  # most likely the port was taken meanwhile

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every client connection is cut, the data stays."""
        self._pg(
            "pg_ctl", "restart", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "-l", str(self.log)
        )

    def running(self) -> bool:
        cmd = [*self._as, str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data)]
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=30) as conn:
            conn.execute(sql.encode())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]')")
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install the server "
            f"package (Debian: postgresql) or set {PG_BIN_ENV}"
        )
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


_databases = itertools.count(1)


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh empty database on the private server; its DSN (with the password)."""
    name = f"odb_test_{os.getpid()}_{next(_databases)}"
    if not postgres_server.running():  # a test that stopped it and failed before starting it
        postgres_server.start()
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.dsn(name)
    finally:
        if not postgres_server.running():
            postgres_server.start()
        postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
