"""A real PostgreSQL server for the tests: Debian's `postgresql` package, started once per
test session in a temporary folder on a free local port, one empty database per test.

PostgreSQL refuses to run as root (CI runs as root): there the server runs as the
unprivileged `postgres` user the package creates, through `runuser`. Without the package the
fixtures fail with the command that installs it; they never skip.
"""

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

INSTALL = (
    "PostgreSQL's server programs (initdb, pg_ctl) are not installed: run "
    "scripts/setup_tests.sh, or `apt-get install postgresql` (Debian/Ubuntu)."
)


def server_programs() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A throwaway PostgreSQL cluster: trust authentication, listening on 127.0.0.1 only."""

    def __init__(self):
        self.bin = server_programs()
        if self.bin is None:
            pytest.fail(INSTALL, pytrace=False)
        self.as_user = []
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                pytest.fail("Running as root needs `runuser` to start PostgreSQL as another user.")
            try:
                import pwd

                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "Running as root, the tests start PostgreSQL as the `postgres` user, "
                    "which does not exist: " + INSTALL,
                    pytrace=False,
                )
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Under /tmp, not pytest's root-only temporary folder: the postgres user must reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="fp8demo-postgres-"))
        if self.as_user:
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self._names = itertools.count(1)

    def _run(self, *command):
        done = subprocess.run(
            [*self.as_user, *command], capture_output=True, text=True, cwd=self.folder
        )
        if done.returncode:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(
                f"{' '.join(command[:2])} failed ({done.returncode}): {done.stderr}{tail}",
                pytrace=False,
            )

    def start(self):
        self._run(
            self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self.bin / "pg_ctl", "-D", self.data, "-o", options,
            "-l", self.folder / "server.log", "-w", "start",
        )  # fmt: skip

    def stop(self):
        if self.data.exists():
            subprocess.run(
                [*self.as_user, self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                capture_output=True,
                cwd=self.folder,
            )
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    server = Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """`postgresql://…` of an empty database of its own for this test."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A new, empty run store on each backend (tests taking it run once per backend)."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'store.sqlite'}"
