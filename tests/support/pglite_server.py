"""Spawn a throw-away PostgreSQL 17 + TimescaleDB (PGlite/WASM) for tests.

    with start_pglite() as pg:
        conn = await asyncpg.connect(pg.dsn, statement_cache_size=0)

All connections share ONE backend session; see ``pglite/`` and ``PGLITE.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Self

PGLITE_DIR = Path(__file__).resolve().parent / "pglite"
USER = "postgres"
DATABASE = "postgres"
# Recommended asyncpg options (see PGLITE.md): no SSLRequest round trip, and no named
# prepared statements piling up in the one session that all connections share.
ASYNCPG_CONNECT_KWARGS: dict[str, object] = {"ssl": False, "statement_cache_size": 0}

_install_lock = threading.Lock()


class PgliteError(RuntimeError):
    pass


def pglite_available() -> tuple[bool, str]:
    """(True, info) when node >= 20 and npm are on PATH, else (False, reason)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node:
        return False, "node not found on PATH"
    if not npm:
        return False, "npm not found on PATH"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=15, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"node --version failed: {exc}"
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        return False, f"unrecognised node version {version!r}"
    if major < 20:
        return False, f"node {version} is too old (need >= 20)"
    return True, f"node {version} at {node}"


def _installed() -> bool:
    """node_modules holds both packages and is not older than the lock file."""
    modules = PGLITE_DIR / "node_modules"
    needed = [
        modules / "@unni-craftsman" / "pglite" / "package.json",
        modules / "@electric-sql" / "pglite-socket" / "package.json",
    ]
    if not all(p.exists() for p in needed):
        return False
    hidden_lock = modules / ".package-lock.json"  # written by npm after each install
    for source in (PGLITE_DIR / "package-lock.json", PGLITE_DIR / "package.json"):
        if source.exists() and (not hidden_lock.exists() or hidden_lock.stat().st_mtime < source.stat().st_mtime):
            return False
    return True


@contextlib.contextmanager
def _install_guard() -> Iterator[None]:
    """Serialise installs across threads and processes (e.g. pytest-xdist workers)."""
    digest = hashlib.sha1(str(PGLITE_DIR).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"ioc-pglite-install-{digest}.lock"
    with _install_lock, lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed(timeout: float = 300) -> None:
    """`npm ci` (or `npm install` without a lock file) when node_modules is missing or stale."""
    if _installed():
        return
    with _install_guard():
        if _installed():  # another process did it meanwhile
            return
        npm = shutil.which("npm")
        if not npm:
            raise PgliteError("npm not found on PATH")
        verb = "ci" if (PGLITE_DIR / "package-lock.json").exists() else "install"
        cmd = [npm, verb, "--legacy-peer-deps", "--no-audit", "--no-fund"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=PGLITE_DIR,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgliteError(f"{' '.join(cmd)} timed out after {timeout}s") from exc
        if proc.returncode != 0:
            raise PgliteError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )


def _pump(stream: IO[str], sink: queue.Queue[str | None], keep: list[str] | None) -> None:
    """Reader thread: forwards lines to ``sink`` (stdout) or keeps a tail (stderr)."""
    try:
        for line in stream:
            if keep is not None:
                keep.append(line)
                del keep[:-1000]
            else:
                sink.put(line)
    except (OSError, ValueError):
        pass
    finally:
        if keep is None:
            sink.put(None)


class PgliteServer:
    """A running ``node server.mjs``; use :func:`start_pglite` to make one."""

    def __init__(self, proc: subprocess.Popen[str], port: int, stderr_tail: list[str]) -> None:
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = port
        self.user = USER
        self.database = DATABASE
        self._stderr_tail = stderr_tail

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def connect_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``asyncpg.connect``/``create_pool`` (ssl off, no statement cache)."""
        return dict(ASYNCPG_CONNECT_KWARGS)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr_tail)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Never hangs; returns the exit code."""
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        return proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PgliteServer(dsn={self.dsn!r}, pid={self.proc.pid}, running={self.running()})"


def start_pglite(
    timeout: float = 60,
    data_dir: str | os.PathLike[str] | None = None,
    install_timeout: float = 300,
) -> PgliteServer:
    """Install deps if needed, start the server on a free port and wait for ``READY``.

    ``timeout`` bounds the start-up (not the npm install, see ``install_timeout``).
    ``data_dir`` persists the cluster in a directory; default is in memory.
    """
    ok, why = pglite_available()
    if not ok:
        raise PgliteError(why)
    ensure_installed(install_timeout)

    env = dict(os.environ)
    env.pop("PGLITE_PORT", None)
    env.pop("PGLITE_DATA_DIR", None)
    cmd = [shutil.which("node") or "node", "server.mjs", "--port", "0"]
    if data_dir is not None:
        cmd += ["--data-dir", os.fspath(data_dir)]
    # stdin stays an open pipe: the server exits when it closes (i.e. when we die).
    proc = subprocess.Popen(
        cmd,
        cwd=PGLITE_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # a Ctrl-C in the terminal goes to pytest, which then stops us
    )
    lines: queue.Queue[str | None] = queue.Queue()
    stderr_tail: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines, None), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, lines, stderr_tail), daemon=True).start()

    server = PgliteServer(proc, 0, stderr_tail)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            server.stop()
            raise PgliteError(f"PGlite did not report READY within {timeout}s:\n{server.stderr[-4000:]}")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            if proc.poll() is not None:
                line = None
            else:
                continue
        if line is None:  # stdout closed: the process died
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            code = proc.returncode
            server.stop()
            raise PgliteError(f"PGlite server exited early (code {code}):\n{server.stderr[-4000:]}")
        if line.startswith("READY port="):
            server.port = int(line.split("=", 1)[1])
            return server
