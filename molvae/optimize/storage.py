"""Where the Optuna study lives: a journal file by default, any RDB URL, or memory.

The default is a journal file rather than SQLite: Optuna's SQLite storage spends 16 ms of CPU
per trial on SQLAlchemy statements (one query and flush per parameter; 70-90 ms on a busy
machine), the journal 0.5 ms. With one worker the sampler works on an in-memory copy of the
study and :class:`_Mirror` copies each finished batch to the persistent storage from a
background thread, so storage writes overlap decoding and scoring.
"""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import MolvaeError

log = logging.getLogger(__name__)


def open_storage(spec: Any, out_dir: Path | None):
    """An Optuna storage from ``spec``: ``None`` (the journal file ``study.journal`` in
    ``out_dir``, or memory without one), ``"memory"``, ``"journal:PATH"`` (a JournalStorage
    file), an RDB URL (``sqlite:///…``, ``postgresql://…``), or a storage object."""
    import optuna

    if spec is None:
        if out_dir is None:
            return None
        spec = f"journal:{Path(out_dir).resolve() / 'study.journal'}"
    if not isinstance(spec, str):
        return spec
    if spec in ("memory", ":memory:"):
        return None
    if spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = spec[len("journal:"):]
        if not path:
            raise MolvaeError("journal storage needs a file: journal:PATH")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=_journal_lock(path)))
    if "://" not in spec:
        raise MolvaeError(f"storage {spec!r}: give an RDB URL (sqlite:///study.db, postgresql://...), "
                          "journal:PATH, or memory")
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            if spec.startswith("sqlite"):
                # Several worker processes may write at once: wait for the lock instead of failing.
                storage = optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 120}})
                _sqlite_wal(storage)
                return storage
            return optuna.storages.RDBStorage(spec)
        except (IntegrityError, ProgrammingError) as exc:
            # Workers starting together on a new database all create Optuna's tables; the
            # losers of that race meet a duplicate, and find the tables there when they retry.
            if attempt == 4:
                raise MolvaeError(f"storage {spec!r}: cannot open ({type(exc).__name__}: {exc})") from None
            time.sleep(0.2 * (attempt + 1))
        except ImportError as exc:
            hint = " (pip install 'molvae[postgres]')" if spec.startswith("postgres") else ""
            raise MolvaeError(f"storage {spec!r}: cannot open ({exc}){hint}") from None
        except ValueError as exc:
            raise MolvaeError(f"storage {spec!r}: cannot open ({exc})") from None
        except Exception as exc:  # SQLAlchemy's OperationalError etc.: a path or server problem
            raise MolvaeError(f"storage {spec!r}: cannot open ({type(exc).__name__}: {exc})") from None


def _journal_lock(path: str):
    """A lock for a journal file that the kernel releases when its holder dies.

    Optuna's default symlink lock outlives a killed process, and the next run then waits 30 s
    for it to go stale. Holding this lock also means no one is writing, so a partial last
    record left by a killed writer is cut off before anyone appends after it (the journal
    reader would otherwise reject the merged line)."""
    import threading

    from optuna.storages.journal._file import BaseJournalFileLock

    class _FlockJournalLock(BaseJournalFileLock):
        def __init__(self) -> None:
            self._thread_lock = threading.Lock()  # flock alone does not order threads sharing it
            self._fh = None

        def acquire(self) -> bool:
            self._thread_lock.acquire()
            fh = open(path + ".lock", "a")
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._fh = fh
            _cut_partial_line(Path(path))
            return True

        def release(self) -> None:
            fh, self._fh = self._fh, None
            if fh is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            self._thread_lock.release()

    return _FlockJournalLock()


def _cut_partial_line(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        log.warning("%s: cutting off a partial record left by an interrupted write", path)
        end, keep = size, 0
        while end > 0:  # the last complete line, reading backwards in blocks
            start = max(0, end - 65536)
            fh.seek(start)
            i = fh.read(end - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            end = start
        fh.truncate(keep)


def _sqlite_wal(storage) -> None:
    """WAL journal with synchronous=NORMAL: a commit is 3x cheaper than the default rollback
    journal's fsync, and a crash loses at most the last commit, never the database."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()  # reconnect so the pragmas apply to every connection

class _Mirror:
    """Copies finished trials to a persistent study from a background thread, in order, so
    that storage writes overlap decoding and scoring. :meth:`close` waits for the backlog."""

    def __init__(self, study):
        import queue
        import threading

        self.study = study
        self.queue: queue.Queue = queue.Queue()
        self.busy = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="molvae-study-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (trials := self.queue.get()) is not None:
            if self.error is None:
                t = time.perf_counter()
                try:
                    self.study.add_trials(trials)
                except BaseException as exc:  # raised in the main thread by close()
                    self.error = exc
                self.busy += time.perf_counter() - t

    def put(self, trials: list) -> None:
        if self.error is not None:
            raise MolvaeError(f"writing the study failed: {self.error}") from self.error
        self.queue.put(trials)

    def close(self) -> float:
        """Flush and stop; returns the seconds spent waiting."""
        t = time.perf_counter()
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise MolvaeError(f"writing the study failed: {self.error}") from self.error
        return time.perf_counter() - t
