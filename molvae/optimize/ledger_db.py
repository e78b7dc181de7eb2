"""The molecule ledger in a database: optimization workers on several machines (no shared
disk) share one budget through the database that holds their Optuna study.

With an RDB storage (``--storage postgresql://...``; SQLite works too), every `molvae optimize`
process on any machine records its molecules here instead of in a file::

    worker ──claim──► molvae_claims (smiles, worker)      a molecule being scored
       │                    │ dropped in the transaction that records it
       └──score──record──► molvae_molecules (oracle_call 1, 2, 3, ... , smiles once)
                            ▲
    molvae_workers (heartbeat, the batch's trials)         a claim lives while its worker beats

Four tables beside Optuna's (``molvae_ledgers``: one row per study, its columns, settings and
search region), written with SQLAlchemy Core in short transactions that each start by
updating the study's ledger row: the row lock puts all the workers' transactions in a line,
so that read-claims-then-claim is atomic and oracle calls are numbered without gaps or
repeats (the primary key and a unique SMILES per study would refuse a repeat anyway).

A worker killed with ``kill -9``, or a machine lost, stops its heartbeat; ``lease`` seconds
later (:data:`LEASE_S`, 60; the environment variable ``MOLVAE_LEDGER_LEASE`` overrides) its
claims are free for the others. A pid check would not do: the claimant may run on another
machine. All times are the database server's clock, so the machines' clocks need not agree.
Each process keeps a copy of the whole ledger as ``molecules.csv`` in its own run folder.

Cost: four transactions per batch; a batch of 16 took 65 ms (fsync off) to 90-130 ms
(default settings) on a local PostgreSQL, 115-120 ms on SQLite, on the loaded 2-core test
machine (``python scripts/bench_ledger.py URL``): small beside Optuna's own RDB writes
(16-90 ms per trial) and nothing beside an oracle worth several machines. Each
process holds one or two ledger connections besides Optuna's: raise PostgreSQL's
``max_connections`` (100 by default) beyond about 30 workers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MolvaeError
from .ledger import MoleculeLog, _coerce, _csv_field, _format, file_lock

log = logging.getLogger(__name__)

#: Seconds after a worker's last heartbeat that its claims count as abandoned: a worker on
#: another machine cannot be checked by pid. Each worker refreshes its heartbeat every sixth
#: of this; override with the ``MOLVAE_LEDGER_LEASE`` environment variable (seconds).
LEASE_S = 60.0


def _tables():
    """The ledger's tables (SQLAlchemy Core), created beside Optuna's own on first use."""
    import sqlalchemy as sa

    md = sa.MetaData()
    ledgers = sa.Table(
        "molvae_ledgers", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study", sa.String(512), nullable=False, unique=True),
        sa.Column("columns", sa.Text, nullable=False),      # JSON list: molecules.csv's columns
        sa.Column("settings", sa.Text),                     # JSON: what every worker must share
        sa.Column("space", sa.Text),                        # JSON: the search region, the first worker's
        sa.Column("n", sa.Integer, nullable=False),         # molecules recorded = last oracle_call
        sa.Column("version", sa.Integer, nullable=False))   # bumped by every transaction (the lock)
    workers = sa.Table(
        "molvae_workers", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ledger_id", sa.Integer, sa.ForeignKey("molvae_ledgers.id"), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started", sa.Float, nullable=False),     # database clock, epoch seconds
        sa.Column("heartbeat", sa.Float, nullable=False),   # 0 once the worker has finished
        sa.Column("trials", sa.Text))                       # JSON: trial numbers of its batch
    molecules = sa.Table(
        "molvae_molecules", md,
        sa.Column("ledger_id", sa.Integer, sa.ForeignKey("molvae_ledgers.id"), primary_key=True),
        sa.Column("oracle_call", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("smiles", sa.Text, nullable=False),
        sa.Column("worker_id", sa.Integer, nullable=False),
        sa.Column("recorded", sa.Float, nullable=False),
        sa.Column("row", sa.Text, nullable=False),          # JSON list, in the ledger's columns
        sa.UniqueConstraint("ledger_id", "smiles", name="molvae_molecules_once"))
    claims = sa.Table(
        "molvae_claims", md,
        sa.Column("ledger_id", sa.Integer, sa.ForeignKey("molvae_ledgers.id"), primary_key=True),
        sa.Column("smiles", sa.Text, primary_key=True),
        sa.Column("worker_id", sa.Integer, nullable=False),
        sa.Column("claimed", sa.Float, nullable=False))
    return md, ledgers, workers, molecules, claims


_TABLES = None
_ENGINES: dict[tuple[str, int], Any] = {}


def _schema():
    global _TABLES
    if _TABLES is None:
        _TABLES = _tables()
    return _TABLES


def _engine(url: str):
    """One engine per URL and process (a forked worker must not reuse its parent's sockets)."""
    import sqlalchemy as sa

    key = (url, os.getpid())
    if key not in _ENGINES:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 120}  # wait for other writers, as the study does
        try:
            engine = sa.create_engine(url, **kwargs)
            for attempt in range(5):
                try:
                    _schema()[0].create_all(engine)
                    break
                except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                    if attempt == 4:  # not a race with another worker creating them
                        raise
                    time.sleep(0.2 * (attempt + 1))
        except ImportError as exc:
            raise MolvaeError(f"storage {url!r}: cannot open the molecule ledger ({exc}); for "
                              "PostgreSQL: pip install 'molvae[postgres]'") from None
        except sa.exc.SQLAlchemyError as exc:
            raise MolvaeError(f"storage {url!r}: cannot open the molecule ledger "
                              f"({type(exc).__name__}: {exc})") from None
        _ENGINES[key] = engine
    return _ENGINES[key]


def _clock(engine):
    """A SQL expression for the database server's clock in epoch seconds: leases compare
    times written by different machines, so they all read one clock."""
    import sqlalchemy as sa

    name = engine.dialect.name
    if name == "postgresql":
        return sa.literal_column("extract(epoch from clock_timestamp())")
    if name == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    if name in ("mysql", "mariadb"):
        return sa.literal_column("unix_timestamp(now(6))")
    return sa.literal(time.time())  # another database: this machine's clock


def _lease() -> float:
    text = os.environ.get("MOLVAE_LEDGER_LEASE")
    if not text:
        return LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or not math.isfinite(value):
        raise MolvaeError(f"MOLVAE_LEDGER_LEASE={text!r}: give the lease in seconds, a positive number")
    return value


class DbMoleculeLog(MoleculeLog):
    """A molecule ledger in a database (the Optuna storage's), shared by worker processes on
    any number of machines: same interface as :class:`MoleculeLog`.

    Every read and write runs in a transaction that first bumps the ledger's row, so the
    transactions of all workers on one study run one at a time: a molecule is claimed only
    if nobody recorded or claimed it, oracle calls are numbered in the database (1, 2, 3, …,
    never twice; the primary key and a unique SMILES per ledger enforce it), and the claim is
    dropped in the transaction that records the molecule. A claim lives while its worker's
    heartbeat does: a background thread refreshes it every ``lease / 6`` s, and a worker
    silent for ``lease`` s (:data:`LEASE_S`; killed, or its machine lost) counts as dead, its
    claims free for others. Times are the database server's clock.

    ``path`` (``molecules.csv`` of this process's run folder) receives a copy of the whole
    ledger, appended as rows arrive; it is rewritten from the database when a run starts.
    """

    distributed = True

    def __init__(self, url: str, study: str, path: Path | None, columns: list[str],
                 value_columns: list[str], settings: dict[str, Any] | None = None):
        super().__init__(None, columns, value_columns, shared=True)
        self.url = url
        self.study = study
        self.local = path
        self.lease = _lease()
        self._conn = None
        self._worker: int | None = None
        self._beat: threading.Event | None = None
        self._written = 0  # rows known to be in the local copy
        self.ledger_id = self._open_ledger(settings)
        self.local = None  # checked before it is written
        self.sync()
        if path is not None:
            self.local = path
            self._rewrite_local()

    # -------------------------------------------------------------- transactions

    @property
    def engine(self):
        return _engine(self.url)

    @contextlib.contextmanager
    def lock(self):
        """A transaction holding the ledger's row lock (re-entrant); the local copy is
        brought up to date once it has committed."""
        if self._conn is not None:
            yield
            return
        import sqlalchemy as sa

        _, ledgers, *_ = _schema()
        with self.engine.begin() as conn:
            # The write takes the row lock (PostgreSQL) or the database's write lock (SQLite)
            # before anything is read: no two workers read the ledger in between.
            conn.execute(sa.update(ledgers).where(ledgers.c.id == self.ledger_id)
                         .values(version=ledgers.c.version + 1))
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None
        self._write_local()

    def _open_ledger(self, settings: dict[str, Any] | None) -> int:
        import sqlalchemy as sa

        _, ledgers, *_ = _schema()
        for attempt in range(2):
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(ledgers.c.id, ledgers.c.columns, ledgers.c.settings)
                                   .where(ledgers.c.study == self.study)).first()
                if row is None:
                    try:
                        return conn.execute(sa.insert(ledgers).values(
                            study=self.study, columns=json.dumps(self.columns), n=0, version=0,
                            settings=json.dumps(settings) if settings is not None else None)
                        ).inserted_primary_key[0]
                    except sa.exc.IntegrityError:  # created by another worker meanwhile
                        if attempt:
                            raise
                        continue
            found = json.loads(row.columns)
            if found != self.columns:
                raise MolvaeError(
                    f"study {self.study!r} in {self._where()}: its molecule ledger has the columns "
                    f"({', '.join(found)}), not those of this objective ({', '.join(self.columns)}); "
                    "another objective runs under this study name. Use another study name (the "
                    "--out folder's name), or the objective that study uses.")
            if settings is not None and row.settings is None:  # opened without them before
                with self.engine.begin() as conn:
                    conn.execute(sa.update(ledgers).where(ledgers.c.id == row.id)
                                 .values(settings=json.dumps(settings)))
            elif settings is not None:
                old = json.loads(row.settings)
                diff = [k for k in settings if k in old and old[k] != settings[k]]
                if diff:
                    detail = "; ".join(f"{k}: {old[k]!r} there, {settings[k]!r} here" for k in diff)
                    raise MolvaeError(f"study {self.study!r} in {self._where()} runs with other "
                                      f"settings ({detail}); every worker of a study needs the same "
                                      "model and search region. Use the same settings, or another "
                                      "study name (the --out folder's name).")
            return row.id
        raise AssertionError("unreachable")

    def _where(self) -> str:
        import sqlalchemy as sa

        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def share_space(self, space):
        """The search region every worker of the study uses: the first worker's (a PCA fitted
        on another machine may differ in the last digits, or in an axis's sign, and trial
        coordinates must mean the same latent point everywhere)."""
        import sqlalchemy as sa

        from .region import SearchSpace

        _, ledgers, *_ = _schema()
        with self.lock():
            text = self._conn.execute(sa.select(ledgers.c.space).where(ledgers.c.id == self.ledger_id)).scalar_one()
            if text is None:
                self._conn.execute(sa.update(ledgers).where(ledgers.c.id == self.ledger_id).values(space=json.dumps({
                    "center": space.center.tolist(), "axes": space.axes.tolist(), "scale": space.scale.tolist(),
                    "bound": space.bound, "kind": space.kind, "explained": _json_value(space.explained)})))
                return space
        d = json.loads(text)
        return SearchSpace(np.array(d["center"]), np.array(d["axes"]), np.array(d["scale"]), float(d["bound"]),
                           d["kind"], float("nan") if d["explained"] is None else float(d["explained"]))

    # -------------------------------------------------------------- rows

    def sync(self) -> int:
        """Read rows recorded since the last read (by any worker); returns how many."""
        import sqlalchemy as sa

        _, _, _, molecules, _ = _schema()
        with self.lock():  # rows added inside, so the local copy gets them when it commits
            rows = self._conn.execute(
                sa.select(molecules.c.oracle_call, molecules.c.row)
                .where(molecules.c.ledger_id == self.ledger_id, molecules.c.oracle_call > len(self.rows))
                .order_by(molecules.c.oracle_call)).all()
            for call, text in rows:
                if call != len(self.rows) + 1:
                    raise MolvaeError(f"study {self.study!r} in {self._where()}: oracle call {call} follows "
                                      f"{len(self.rows)} in the molecule ledger; the table "
                                      "molvae_molecules was edited")
                self._add([_coerce(c, v) for c, v in zip(self.columns, json.loads(text))])
        return len(rows)

    def append(self, table: pd.DataFrame, extra: dict[str, Any]) -> list[int]:
        """Record scored molecules with the next oracle-call numbers and drop this worker's
        claims on them. A molecule another worker recorded meanwhile (it took over this
        worker's claim after a lapsed lease) is not recorded twice."""
        import sqlalchemy as sa

        _, ledgers, _, molecules, claims = _schema()
        worker = self.worker_id
        with self.lock():
            self.sync()
            conn = self._conn
            start = len(self.rows) + 1
            records, seen = [], set()
            for i, rec in enumerate(table.to_dict("records")):
                if rec["smiles"] in self.index or rec["smiles"] in seen:
                    continue
                seen.add(rec["smiles"])
                rec = dict(rec)
                rec["oracle_call"] = start + len(records)
                for k, v in extra.items():
                    rec[k] = v[i] if isinstance(v, list) else v
                records.append([_coerce(c, rec.get(c)) for c in self.columns])
            if records:
                now = conn.execute(sa.select(_clock(self.engine))).scalar_one()
                conn.execute(sa.insert(molecules), [
                    {"ledger_id": self.ledger_id, "oracle_call": r[0], "smiles": r[self._col["smiles"]],
                     "worker_id": worker, "recorded": float(now), "row": json.dumps([_json_value(v) for v in r])}
                    for r in records])
                conn.execute(sa.update(ledgers).where(ledgers.c.id == self.ledger_id)
                             .values(n=start - 1 + len(records)))
            conn.execute(sa.delete(claims).where(claims.c.ledger_id == self.ledger_id,
                                                 claims.c.worker_id == worker,
                                                 claims.c.smiles.in_(list(table["smiles"]))))
            for r in records:
                self._add(r)
        return [r[0] for r in records]

    # -------------------------------------------------------------- claims

    def read_claims(self) -> dict[str, int]:
        """smiles -> worker id of the live claims on molecules not yet recorded; the claims
        of dead workers are deleted."""
        import sqlalchemy as sa

        _, _, workers, _, claims = _schema()
        with self.lock():
            conn = self._conn
            now = float(conn.execute(sa.select(_clock(self.engine))).scalar_one())
            rows = conn.execute(sa.select(claims.c.smiles, claims.c.worker_id, workers.c.heartbeat)
                                .join(workers, workers.c.id == claims.c.worker_id)
                                .where(claims.c.ledger_id == self.ledger_id)).all()
            live, dead = {}, []
            for smiles, worker, beat in rows:
                if smiles in self.index:
                    dead.append(smiles)  # recorded by a worker that took the claim over
                elif worker == self._worker or beat >= now - self.lease:
                    live[smiles] = worker
                else:
                    dead.append(smiles)
            if dead:
                log.info("%d molecule claim(s) of stopped workers taken back", len(dead))
                conn.execute(sa.delete(claims).where(claims.c.ledger_id == self.ledger_id,
                                                     claims.c.smiles.in_(dead)))
        return live

    def claim(self, smiles: list[str], trials: list[int] = ()) -> None:
        """Claim molecules before scoring them (call under :meth:`lock`, after
        :meth:`read_claims` showed them free), and note the batch's trial numbers so that a
        starting worker leaves this worker's running trials alone."""
        import sqlalchemy as sa

        _, _, workers, _, claims = _schema()
        worker = self.worker_id
        with self.lock():
            conn = self._conn
            now = conn.execute(sa.select(_clock(self.engine))).scalar_one()
            conn.execute(sa.update(workers).where(workers.c.id == worker)
                         .values(trials=json.dumps([int(t) for t in trials]), heartbeat=now))
            if smiles:
                conn.execute(sa.delete(claims).where(claims.c.ledger_id == self.ledger_id,
                                                     claims.c.smiles.in_(list(smiles))))
                conn.execute(sa.insert(claims), [{"ledger_id": self.ledger_id, "smiles": s,
                                                  "worker_id": worker, "claimed": float(now)}
                                                 for s in smiles])

    def release(self) -> None:
        """Drop this worker's claims (it will not record them)."""
        import sqlalchemy as sa

        if self._worker is None:
            return
        _, _, _, _, claims = _schema()
        with self.lock():
            self._conn.execute(sa.delete(claims).where(claims.c.ledger_id == self.ledger_id,
                                                       claims.c.worker_id == self._worker))

    # -------------------------------------------------------------- workers

    @property
    def worker_id(self) -> int:
        """This process's number among all the workers the ledger has seen (registered on
        first use, then kept alive by a heartbeat thread)."""
        if self._worker is None:
            import sqlalchemy as sa

            _, _, workers, _, _ = _schema()
            with self.lock():  # in the caller's transaction, if any (SQLite has one writer)
                now = self._conn.execute(sa.select(_clock(self.engine))).scalar_one()
                self._worker = self._conn.execute(sa.insert(workers).values(
                    ledger_id=self.ledger_id, host=socket.gethostname()[:255], pid=os.getpid(),
                    started=float(now), heartbeat=float(now))).inserted_primary_key[0]
            self._beat = threading.Event()
            threading.Thread(target=self._heartbeat, args=(self._worker, self._beat),
                             name="molvae-ledger-heartbeat", daemon=True).start()
        return self._worker

    def worker_number(self, index: int) -> int:
        return self.worker_id

    def _heartbeat(self, worker: int, stop: threading.Event) -> None:
        import sqlalchemy as sa

        _, _, workers, _, _ = _schema()
        while not stop.wait(self.lease / 6):
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.update(workers).where(workers.c.id == worker)
                                 .values(heartbeat=_clock(self.engine)))
            except Exception as exc:  # a lost connection: retry at the next beat
                log.warning("molecule ledger heartbeat failed (%s); retrying", exc)

    def orphans(self, trials: list) -> list:
        """Of the study's RUNNING ``trials`` (Optuna FrozenTrials), those no live worker will
        finish: in the batch of a worker whose lease ran out, or in no live worker's batch
        and asked more than ``max(10 leases, 10 min)`` ago (a worker that died between asking
        and noting its batch; a live one notes it within a decode)."""
        import datetime

        import sqlalchemy as sa

        _, _, workers, _, _ = _schema()
        with self.engine.begin() as conn:
            now = float(conn.execute(sa.select(_clock(self.engine))).scalar_one())
            rows = conn.execute(sa.select(workers.c.trials, workers.c.heartbeat)
                                .where(workers.c.ledger_id == self.ledger_id, workers.c.trials.is_not(None))).all()
        live, dead = set(), set()
        for text, beat in rows:
            (live if beat >= now - self.lease else dead).update(int(t) for t in json.loads(text))
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=max(10 * self.lease, 600.0))
        return [t for t in trials if t.number not in live
                and (t.number in dead or t.datetime_start is None or t.datetime_start < cutoff)]

    def close(self) -> None:
        """Stop the heartbeat, drop this worker's claims and mark it finished, so that its
        claims are free at once rather than after a lease."""
        import sqlalchemy as sa

        if self._worker is None:
            return
        if self._beat is not None:
            self._beat.set()
        _, _, workers, _, _ = _schema()
        try:
            self.release()
            with self.engine.begin() as conn:
                conn.execute(sa.update(workers).where(workers.c.id == self._worker).values(heartbeat=0.0))
        except Exception as exc:  # the lease frees the claims anyway
            log.warning("molecule ledger: could not sign off (%s)", exc)
        self._worker = None

    # -------------------------------------------------------------- the local copy

    def _rewrite_local(self) -> None:
        """Replace the local ``molecules.csv`` by the ledger, after checking that every
        molecule it holds is in the ledger (a folder from another run is never overwritten)."""
        path = self.local
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path):
            if path.exists() and path.stat().st_size > 0:
                with open(path, newline="") as fh:
                    reader = csv.reader(fh)
                    header = next(reader, [])
                    local = [r for r in reader if len(r) == len(self.columns)]
                if header and header != self.columns:
                    raise MolvaeError(
                        f"{path}: its columns ({', '.join(header)}) are not those of this objective "
                        f"({', '.join(self.columns)}); the folder holds a run with another objective. "
                        "Use a new output folder, or the objective that run used.")
                j = self._col["smiles"]
                extra = [r[j] for r in local if r[j] not in self.index]
                if extra:
                    raise MolvaeError(
                        f"{path} holds {len(extra)} molecule(s) that the ledger of study "
                        f"{self.study!r} in {self._where()} does not (e.g. {extra[0]}): the folder "
                        "belongs to another run. Use a new output folder, or that run's storage.")
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as fh:
                fh.write(",".join(self.columns) + "\n")
                fh.write("".join(_csv_line(r) for r in self.rows))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        self._written = len(self.rows)

    def _write_local(self) -> None:
        """Append the rows the local copy lacks (other processes of this machine may share
        the folder and append too: the file's own last oracle call decides)."""
        if self.local is None or self._written >= len(self.rows):
            return
        with file_lock(self.local):
            have = _last_call(self.local)
            if have < len(self.rows):
                with open(self.local, "a", newline="") as fh:
                    fh.write("".join(_csv_line(r) for r in self.rows[have:]))
                    fh.flush()
                    os.fsync(fh.fileno())
        self._written = len(self.rows)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _csv_line(row: list[Any]) -> str:
    return ",".join(_csv_field(_format(v)) for v in row) + "\n"


def _last_call(path: Path) -> int:
    """The oracle call (first field) of the last complete line of a molecules.csv; a partial
    last line (a writer killed mid-write) is cut off first."""
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        tail = b""
        pos = size
        while pos > 0 and tail.count(b"\n") < 2:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
        end = tail.rfind(b"\n") + 1
        if pos + end < size:
            fh.truncate(pos + end)
        lines = tail[:end].splitlines()
    if not lines:
        return 0
    first = lines[-1].split(b",", 1)[0]
    return int(first) if first.isdigit() else 0
