"""A throwaway PostgreSQL server on loopback, for the tests and the benchmarks.

    python -m devtools.postgres -- COMMAND [ARGS...]

starts one in a temporary directory (as the `postgres` user when run as root, since
PostgreSQL refuses root), runs COMMAND with DATABASE_URL pointing at a fresh database, then
stops the server and removes the directory, whatever COMMAND did. Debian's `postgresql`
package provides the binaries.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from devtools.server import free_port


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql (apt package postgresql)")
    return Path(found[-1])


class TemporaryPostgres:
    def __init__(self, database: str = "hubimages") -> None:
        self.database = database
        self.port = free_port()
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="hubimages-pg."))
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def version(self) -> str:
        return subprocess.run(
            [self.bin / "postgres", "-V"], capture_output=True, text=True, check=True
        ).stdout.split()[2]

    def _run(self, *command: str | Path) -> None:
        result = subprocess.run(
            [*self._as_postgres, *map(str, command)],
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run(
            self.bin / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--locale=C",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            self.bin / "pg_ctl",
            "-D",
            data,
            "-l",
            self.root / "server.log",
            "-w",
            "-o",
            options,
            "start",
        )
        self._run(
            self.bin / "createdb",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            self.database,
        )

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self._as_postgres,
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.root / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ],
                cwd=self.root,
                capture_output=True,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with TemporaryPostgres() as server:
        print(f"PostgreSQL {server.version} on 127.0.0.1:{server.port} ({server.root})", flush=True)
        return subprocess.run(argv, env={**os.environ, "DATABASE_URL": server.url}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
