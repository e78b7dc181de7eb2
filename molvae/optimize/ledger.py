"""The molecule ledger: every unique molecule scored, in oracle order, kept in memory as
the dedup cache and on disk as ``molecules.csv`` (append-only, fsynced each batch).

Its interface to the search is small: :meth:`MoleculeLog.lock`, :meth:`~MoleculeLog.sync`,
:meth:`~MoleculeLog.append`, the claims (:meth:`~MoleculeLog.read_claims`,
:meth:`~MoleculeLog.claim`, :meth:`~MoleculeLog.release`) and the queries (``index``,
``scores``, :meth:`~MoleculeLog.values`, :meth:`~MoleculeLog.frame`). Several worker processes
share one file under an ``fcntl`` lock; each new molecule is first *claimed* (``claims.tsv``,
with the claimant's pid) so that no other worker scores it meanwhile, and the claims of dead
processes (:func:`_alive`) are ignored. With an RDB storage, :func:`open_ledger` puts the
ledger in that database instead (:mod:`molvae.optimize.ledger_db`), shared by workers on
machines without a shared disk.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MolvaeError

log = logging.getLogger(__name__)

MOLECULES_FILE = "molecules.csv"


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``<path>.lock`` (processes on one machine take turns)."""
    fh = open(path.with_name(path.name + ".lock"), "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class MoleculeLog:
    """The dedup cache and its append-only file: every unique molecule scored, in oracle order.

    ``path=None`` keeps it in memory only. With ``shared=True`` several processes append to
    one file under an exclusive lock, and each new molecule is first *claimed* (in
    ``claims.tsv``, with the claimant's pid) so that no other worker scores it meanwhile; the
    claims of dead processes are ignored.
    """

    INT_COLUMNS = ("oracle_call", "trial", "batch", "worker")
    TEXT_COLUMNS = ("smiles", "error")

    def __init__(self, path: Path | None, columns: list[str], value_columns: list[str],
                 shared: bool = False):
        self.path = path
        self.columns = columns
        self.value_columns = value_columns
        self.shared = shared
        self.rows: list[list[Any]] = []
        self.index: dict[str, int] = {}       # smiles -> row
        # 'score' in oracle order; for several objectives the mean of their values, which
        # only ranks molecules and drives the stop rules (each value is kept in its column).
        self.scores: list[float] = []
        self.n_failed = 0  # molecules the objective could not score (non-empty 'error')
        self._value_idx = [columns.index(c) for c in value_columns]
        self._col = {c: i for i, c in enumerate(columns)}
        self._offset = 0
        self._lock_fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock():
                if not path.exists() or path.stat().st_size == 0:
                    with open(path, "w", newline="") as fh:
                        fh.write(",".join(columns) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                self._read_header()
                self.sync()

    # -------------------------------------------------------------- file access

    @contextlib.contextmanager
    def lock(self):
        """Exclusive lock over the file and the claims (a no-op in memory)."""
        if self.path is None:
            yield
            return
        with file_lock(self.path):
            yield

    def _read_header(self) -> None:
        with open(self.path, "rb") as fh:
            header = fh.readline()
        found = header.decode().rstrip("\r\n").split(",")
        if found != self.columns:
            raise MolvaeError(
                f"{self.path}: its columns ({', '.join(found)}) are not those of this objective "
                f"({', '.join(self.columns)}); the folder holds a run with another objective. "
                "Use a new output folder, or the objective that run used.")
        self._offset = len(header)

    def sync(self) -> int:
        """Read rows appended since the last read (by this or another process); returns how
        many. Call under :meth:`lock` when the file is shared. A partial last line (a writer
        killed mid-write) is cut off, since no live writer can be writing it."""
        if self.path is None:
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: dropping a partial last line left by an interrupted write", self.path)
            with open(self.path, "r+b") as fh:
                fh.truncate(self._offset + end)
        n = 0
        for record in csv.reader(io.StringIO(data[:end].decode())):
            if not record:
                continue
            if len(record) != len(self.columns):
                raise MolvaeError(f"{self.path}: a row has {len(record)} fields, expected "
                                  f"{len(self.columns)}; the file was edited or corrupted")
            self._add(self._parse(record))
            n += 1
        self._offset += end
        return n

    def _parse(self, record: list[str]) -> list[Any]:
        out: list[Any] = []
        for name, text in zip(self.columns, record):
            if name in self.TEXT_COLUMNS:
                out.append(text)
            elif name == "feasible":
                out.append(text == "True")
            elif name in self.INT_COLUMNS:
                out.append(int(text) if text else -1)
            else:
                out.append(float(text) if text else float("nan"))
        return out

    def _add(self, row: list[Any]) -> None:
        self.index[row[self._col["smiles"]]] = len(self.rows)
        self.rows.append(row)
        values = [row[j] for j in self._value_idx]
        self.scores.append(values[0] if len(values) == 1 else float(np.mean(values)))
        if "error" in self._col and row[self._col["error"]]:
            self.n_failed += 1

    def append(self, table: pd.DataFrame, extra: dict[str, Any]) -> list[int]:
        """Append scored molecules (rows of a score table plus ``extra`` columns, which may be
        lists) with the next oracle-call numbers; written and fsynced before returning."""
        start = len(self.rows) + 1
        new_rows = []
        for i, rec in enumerate(table.to_dict("records")):
            rec = dict(rec)
            rec["oracle_call"] = start + i
            for k, v in extra.items():
                rec[k] = v[i] if isinstance(v, list) else v
            new_rows.append([rec.get(c) for c in self.columns])
        if self.path is not None and new_rows:
            text = "".join(",".join(_csv_field(_format(v)) for v in r) + "\n" for r in new_rows)
            with open(self.path, "a", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            self._offset += len(text.encode())
        for r in new_rows:
            self._add([_coerce(c, v) for c, v in zip(self.columns, r)])
        return list(range(start, start + len(new_rows)))

    # -------------------------------------------------------------- claims (shared logs)

    def _claims_path(self) -> Path:
        return self.path.with_name("claims.tsv")

    def read_claims(self) -> dict[str, int]:
        """smiles -> pid of live claimants (call under :meth:`lock`)."""
        if not self.shared or self.path is None or not self._claims_path().exists():
            return {}
        out = {}
        for line in self._claims_path().read_text().splitlines():
            pid, _, smiles = line.partition("\t")
            if smiles and smiles not in self.index and _alive(int(pid)):
                out[smiles] = int(pid)
        return out

    def write_claims(self, claims: dict[str, int]) -> None:
        if not self.shared or self.path is None:
            return
        tmp = self._claims_path().with_suffix(".tmp")
        tmp.write_text("".join(f"{pid}\t{s}\n" for s, pid in claims.items()))
        os.replace(tmp, self._claims_path())

    def claim(self, smiles: list[str], trials: Sequence[int] = ()) -> None:
        """Claim molecules before scoring them, so that no other worker scores them meanwhile
        (call under :meth:`lock`, after :meth:`read_claims` showed them free). ``trials``, the
        batch's trial numbers, matter to the database ledger only."""
        if not self.shared or self.path is None or not smiles:
            return
        claims = self.read_claims()
        claims.update(dict.fromkeys(smiles, os.getpid()))
        self.write_claims(claims)

    def release(self) -> None:
        """Drop this process's claims (call under :meth:`lock`)."""
        if self.shared and self.path is not None:
            self.write_claims({s: p for s, p in self.read_claims().items() if p != os.getpid()})

    # -------------------------------------------------------------- several processes

    #: Whether processes on other machines may share this ledger (:class:`DbMoleculeLog`).
    distributed = False

    def worker_number(self, index: int) -> int:
        """The number this process writes in the ``worker`` column (and its CMA-ES stream):
        its index among the workers of one run (the database ledger numbers all its workers)."""
        return index

    def orphans(self, trials: list) -> list:
        """Of the study's RUNNING ``trials``, those no live worker will finish: all of them,
        since a file ledger's workers are children of one run, which starts none while its
        previous workers run."""
        return list(trials)

    def share_space(self, space):
        """The search region all workers use: this one (a file ledger's workers fork from one
        run, which fitted it)."""
        return space

    def close(self) -> None:
        """Let go of the ledger (the database ledger frees this worker's claims at once)."""

    # -------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.rows)

    def values(self, smiles: str) -> list[float]:
        row = self.rows[self.index[smiles]]
        return [row[self._col[c]] for c in self.value_columns]

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=self.columns)
        return df.astype({"feasible": bool}) if len(df) else df

    def last_seconds(self) -> float:
        return float(self.rows[-1][self._col["seconds"]]) if self.rows else 0.0

    def max_of(self, column: str, default: int = -1) -> int:
        if not self.rows:
            return default
        j = self._col[column]
        return int(max(r[j] for r in self.rows))


def database_url(storage: Any) -> str | None:
    """The database URL of an RDB ``storage`` (a URL string or an Optuna ``RDBStorage``), or
    ``None`` for a journal file, memory or no storage: where the ledger can live beside the
    study."""
    url = storage if isinstance(storage, str) else getattr(storage, "url", None)
    if not isinstance(url, str) or "://" not in url or url.startswith("journal:"):
        return None
    return url


def open_ledger(path: Path | None, columns: list[str], value_columns: list[str], shared: bool = False,
                storage: Any = None, study: str | None = None,
                settings: dict[str, Any] | None = None) -> MoleculeLog:
    """The ledger of a run: in the database of an RDB ``storage`` (shared by workers on any
    machines, :class:`DbMoleculeLog`), else the file ``path`` (:class:`MoleculeLog`)."""
    url = database_url(storage)
    if url is None:
        return MoleculeLog(path, columns, value_columns, shared=shared)
    from .ledger_db import DbMoleculeLog

    return DbMoleculeLog(url, study or "molvae", path, columns, value_columns, settings=settings)


def _csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n\r') else text


def _coerce(column: str, value: Any) -> Any:
    if column in MoleculeLog.TEXT_COLUMNS:
        return "" if value is None else str(value)
    if column == "feasible":
        return bool(value)
    if column in MoleculeLog.INT_COLUMNS:
        return int(value) if value is not None else -1
    return float(value) if value is not None else float("nan")


def _alive(pid: int) -> bool:
    """Whether a claimant process still runs. A killed worker whose parent died too may stay
    a zombie (in a container nobody reaps it): it exists, but it will never write."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True
