"""Latent-space optimization: an Optuna study whose parameters are coordinates in the VAE's
latent space, searched for molecules that score well on an objective.

The journey of one batch::

    Optuna sampler ──ask B trials──► coordinates ──► z = center + (coords · scale) @ axes
        ▲                                                  │ one model.decode batch
        │                                                  ▼
        └──────tell B values◄── dedup cache ◄── score the new unique valid molecules (one call)

*Search region.* Coordinates live in a box of ``k`` principal axes of the encodings of
training molecules (:func:`fit_latent_pca`), each in units of the encoded data's standard
deviation along it, bounded by ±``bound`` (3 by default): the decoder is only trustworthy
where training molecules were encoded, so the region is derived from the data, not an
arbitrary box. With a ``lead`` molecule the box is a trust region centred on the lead's own
encoding (its residual outside the ``k`` axes is kept), ±``trust_radius`` sd wide.

*Budget.* The budget counts unique valid molecules scored (the PMO convention). Every scored
molecule is kept in a dedup cache; a molecule decoded again costs nothing. Its trial is told
the infeasible score by default (``duplicates="penalize"``: nothing new was found there;
told the cached score instead, TPE piles its trials onto the best molecule's cell, 70% of
them repeats, and stalls), or the cached score with ``duplicates="cached"``. Invalid
decodes (no molecule, or fewer than 2 heavy atoms) are never scored, never counted, and are
told the objective's infeasible score.

*Samplers.* CMA-ES (:class:`molvae.samplers.BatchCmaEsSampler`, one generation per batch) is
the default: with the shipped model it had the best AUC top-10 of the fast samplers on every
task of ``molvae bench optimize`` (README: 3 seeds at 1,000 and 10,000 calls). Batches of 16
beat 32 at 1,000 calls (celecoxib 0.370 vs 0.339, penalized logP 3.17 vs 2.85, drug_profile
0.795 vs 0.781; 3 seeds) and tie at 10,000, where they decode more slowly (smaller batches).
TPE and the GP sampler spend seconds to minutes per thousand trials in the sampler, a cost
that grows with the trials: they suit expensive objectives and small budgets.

*Run folder* (``out_dir``)::

    molecules.csv     every unique molecule scored, append-only, flushed each batch:
                      oracle_call (1-based, the budget clock), smiles (canonical), score,
                      (several objectives: <objective>_score for each instead of score),
                      feasible, every component's <name>_raw and <name> column from the
                      objective's score table, trial (the Optuna trial number that first
                      decoded it), batch, worker, seconds (wall seconds into the run)
    top.csv           the 100 best molecules with RDKit properties (multi-objective: the
                      Pareto set first)
    summary.json      top-1/10/100, PMO AUCs, counts, wall time and its split, stop reason
    curve.png         best and top-10 mean score against oracle calls
    study.journal     the Optuna study (a JournalStorage file, the default storage; load it with
                      optuna.load_study(study_name=<folder name>, storage=JournalStorage(
                      JournalFileBackend("study.journal"))), or open it in optuna-dashboard)
    search_space.npz  the search region, so a resumed run searches exactly the same box
    run.json          the settings a resumed run must share

*Resume.* Re-running the same call with the same ``out_dir`` reloads ``molecules.csv`` into
the dedup cache (nothing is scored twice, ``oracle_call`` numbering continues) and the
trials into the sampler (CMA-ES replays its generations; nothing in the study file is
unpickled); the budget is the total over all runs.

*Storage.* With one worker the sampler works on an in-memory copy of the study, and a
background thread copies each finished batch to the persistent storage. The default is a
journal file rather than SQLite: Optuna's SQLite storage spends 16 ms of CPU per trial on
SQLAlchemy statements (one query and flush per parameter; 70-90 ms on a busy machine), the
journal 0.5 ms, and the writer thread shares the interpreter with the search loop; any RDB
URL still works. With
``workers > 1`` every worker process asks and tells on the shared storage directly, as
Optuna's distributed optimization does, and the workers share one ``molecules.csv`` under a
file lock, claiming each new molecule before scoring it so that no molecule is ever scored
twice.

    >>> from molvae.model import load_model
    >>> table = optimize(load_model(), "qed", budget=1000, out_dir="runs/qed")
    >>> table.head()
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import chem
from .errors import MolvaeError
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "cmaes", "gp", "random", "nsga2")
#: The winner of ``molvae bench optimize`` (see the module docstring).
DEFAULT_SAMPLER = "cmaes"
DEFAULT_MULTI_SAMPLER = "nsga2"
DEFAULT_BATCH_SIZE = 16
DEFAULT_COMPONENTS = 16
DEFAULT_BOUND = 3.0
DEFAULT_TRUST_RADIUS = 1.0
DEFAULT_SIMILARITY = 0.4
PCA_MOLECULES = 5000
#: Batches in a row without a new molecule before the search counts as converged.
STALL_BATCHES = 25
TOP_N = 100
RUN_FORMAT = 1
MOLECULES_FILE = "molecules.csv"


# ---------------------------------------------------------------------------- search region


def model_fingerprint(model) -> str:
    """A short hash of the model's weights: keys the PCA cache and ties a run to its model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LatentPCA:
    """Principal axes of the posterior means of encoded training molecules."""

    mean: np.ndarray        # (d,)
    axes: np.ndarray        # (d, d), rows = principal directions, largest variance first
    sd: np.ndarray          # (d,) standard deviation of the encodings along each axis
    n_molecules: int

    def explained(self, k: int) -> float:
        """Fraction of the encodings' variance that the first ``k`` axes carry."""
        var = self.sd ** 2
        return float(var[:k].sum() / max(var.sum(), 1e-12))


def fit_latent_pca(model, smiles: Sequence[str] | None = None, n_molecules: int | None = None,
                   seed: int = 0, cache: bool = True) -> LatentPCA:
    """PCA of the encodings (posterior means) of ``n_molecules`` (default
    :data:`PCA_MOLECULES`) training molecules.

    ``smiles`` defaults to the bundled MOSES training sample. The result is cached under
    ``$MOLVAE_CACHE/latent_pca/`` keyed by the model's weights, so it is computed once per
    model (about 10 s on a CPU).
    """
    from .data import bundled, cache_dir

    n_molecules = PCA_MOLECULES if n_molecules is None else int(n_molecules)
    path = None
    if cache and smiles is None:
        path = cache_dir() / "latent_pca" / f"{model_fingerprint(model)}_{n_molecules}_{seed}.npz"
        if path.exists():
            try:
                with np.load(path) as f:
                    return LatentPCA(f["mean"], f["axes"], f["sd"], int(f["n_molecules"]))
            except (OSError, KeyError, ValueError):
                log.warning("%s: unreadable PCA cache, recomputing", path)
    pool = list(bundled("train") if smiles is None else smiles)
    rng = np.random.default_rng(seed)
    if len(pool) > n_molecules:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), n_molecules, replace=False))]
    mu, _, ok, _ = model.try_encode(pool)
    x = mu.detach().to("cpu").double().numpy()
    if len(x) < 2:
        raise MolvaeError("fitting the search region needs at least 2 molecules the model can encode")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    sd = s / math.sqrt(len(x) - 1)
    if vt.shape[0] < x.shape[1]:  # fewer molecules than latent dimensions
        extra = np.linalg.svd(np.eye(x.shape[1]) - vt.T @ vt)[0][:, : x.shape[1] - vt.shape[0]].T
        vt = np.vstack([vt, extra])
        sd = np.concatenate([sd, np.zeros(extra.shape[0])])
    pca = LatentPCA(mean, vt, sd, len(x))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, mean=mean, axes=vt, sd=sd, n_molecules=len(x))
        os.replace(tmp, path)
    return pca


@dataclass
class SearchSpace:
    """A box in ``k`` latent directions: ``z = center + (coords * scale) @ axes``, with every
    coordinate in ``[-bound, bound]`` (units: standard deviations of the encoded data)."""

    center: np.ndarray      # (d,)
    axes: np.ndarray        # (k, d), orthonormal rows
    scale: np.ndarray       # (k,)
    bound: float
    kind: str = "pca"       # "pca" (around the data's mean) or "trust_region" (around a lead)
    explained: float = float("nan")

    @property
    def k(self) -> int:
        return int(self.axes.shape[0])

    @property
    def names(self) -> list[str]:
        return [f"x{i:02d}" for i in range(self.k)]

    def distributions(self) -> dict:
        from optuna.distributions import FloatDistribution

        return {n: FloatDistribution(-self.bound, self.bound) for n in self.names}

    def to_latent(self, coords: np.ndarray) -> np.ndarray:
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        return self.center + (coords * self.scale) @ self.axes

    def to_coords(self, z: np.ndarray) -> np.ndarray:
        """Coordinates of latent points (projected on the axes, clipped into the box)."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        c = ((z - self.center) @ self.axes.T) / np.where(self.scale > 0, self.scale, 1.0)
        return np.clip(c, -self.bound, self.bound)

    def params_to_coords(self, params: Sequence[dict]) -> np.ndarray:
        return np.array([[p[n] for n in self.names] for p in params], dtype=np.float64).reshape(-1, self.k)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, center=self.center, axes=self.axes, scale=self.scale, bound=self.bound,
                 kind=self.kind, explained=self.explained)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SearchSpace:
        try:
            with np.load(path) as f:
                return cls(f["center"], f["axes"], f["scale"], float(f["bound"]), str(f["kind"]),
                           float(f["explained"]))
        except (OSError, KeyError, ValueError) as exc:
            raise MolvaeError(f"{path}: unreadable search region ({exc}); delete it to refit, "
                              "or use a new output folder") from None


def pca_space(pca: LatentPCA, n_components: int = DEFAULT_COMPONENTS,
              bound: float = DEFAULT_BOUND) -> SearchSpace:
    """The box of ±``bound`` sd along the first ``n_components`` axes, around the data mean."""
    k = _check_components(n_components, len(pca.mean))
    return SearchSpace(pca.mean.copy(), pca.axes[:k].copy(), pca.sd[:k].copy(), float(bound), "pca",
                       pca.explained(k))


def trust_region(pca: LatentPCA, center: np.ndarray, n_components: int = DEFAULT_COMPONENTS,
                 radius: float = DEFAULT_TRUST_RADIUS) -> SearchSpace:
    """A box of ±``radius`` sd along the first ``n_components`` axes around ``center`` (an
    encoding): the neighbourhood of a lead molecule, LOL-BO style."""
    k = _check_components(n_components, len(pca.mean))
    return SearchSpace(np.asarray(center, dtype=np.float64).copy(), pca.axes[:k].copy(),
                       pca.sd[:k].copy(), float(radius), "trust_region", pca.explained(k))


def _check_components(k: int, d: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise MolvaeError(f"n_components must be a positive integer, got {k!r}")
    if k > d:
        raise MolvaeError(f"n_components {k} exceeds the model's latent dimension {d}")
    return int(k)


# ---------------------------------------------------------------------------- objectives


class _Scorer:
    """One interface over an Objective or a MultiObjective: the score table, and the value
    column(s) the sampler is told (``score``, or ``<objective>_score`` for each objective)."""

    def __init__(self, objective):
        from .scoring import MultiObjective

        self.objective = objective
        self.multi = isinstance(objective, MultiObjective)
        if self.multi:
            self.value_columns = [f"{n}_score" for n in objective.names]
            self.infeasible = [objective.objectives[n].infeasible_score for n in objective.names]
            self.bounded = True
        else:
            self.value_columns = ["score"]
            self.infeasible = [objective.infeasible_score]
            self.bounded = objective.bounded
        empty = self.score([])
        self.columns = list(empty.columns)

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * len(self.value_columns)

    def score(self, smiles: Sequence[str]) -> pd.DataFrame:
        return self.objective.score(list(smiles), progress=False)

    def describe(self) -> str:
        if self.multi:
            return "multi-objective: " + ", ".join(self.objective.names)
        o = self.objective
        return o.description or o.source


def _log_columns(scorer: _Scorer) -> list[str]:
    """Columns of molecules.csv: see the module docstring."""
    values = scorer.value_columns
    components = [c for c in scorer.columns if c not in ("smiles", "feasible", *values)]
    return ["oracle_call", "smiles", *values, "feasible", *components, "trial", "batch", "worker", "seconds"]


def _resolve_objective(objective) -> Any:
    from .scoring import MultiObjective, as_multi_objective, as_objective

    if isinstance(objective, MultiObjective):
        return objective
    if isinstance(objective, (list, tuple)):
        return as_multi_objective(list(objective))
    return as_objective(objective)


def _with_filters(objective, components: list) -> Any:
    """The objective with extra hard-constraint components (lead similarity, scaffold)."""
    from .scoring import MultiObjective, Objective

    if not components:
        return objective
    if isinstance(objective, MultiObjective):
        return MultiObjective({n: _with_filters(o, components) for n, o in objective.objectives.items()})
    return Objective(list(objective.components) + components, aggregate=objective.aggregate,
                     infeasible_score=objective.infeasible_score if objective._explicit_infeasible else None,
                     source=objective.source, base_dir=objective.base_dir,
                     description=objective.description)


# ---------------------------------------------------------------------------- molecule log


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


class MoleculeLog:
    """The dedup cache and its append-only file: every unique molecule scored, in oracle order.

    ``path=None`` keeps it in memory only. With ``shared=True`` several processes append to
    one file under an exclusive lock, and each new molecule is first *claimed* (in
    ``claims.tsv``, with the claimant's pid) so that no other worker scores it meanwhile; the
    claims of dead processes are ignored.
    """

    INT_COLUMNS = ("oracle_call", "trial", "batch", "worker")

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
        fh = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

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
            if name == "smiles":
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


def _csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n\r') else text


def _coerce(column: str, value: Any) -> Any:
    if column == "smiles":
        return value
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


# ---------------------------------------------------------------------------- metrics


def top_k_auc(scores: Sequence[float], k: int = 10, budget: int | None = None, freq: int = 100,
              finish: bool = True) -> float:
    """PMO's area under the running top-``k`` mean curve (Gao et al. 2022, ``top_auc``).

    ``scores`` are in oracle-call order. The mean of the ``k`` best scores is taken every
    ``freq`` calls and at the end, integrated by the trapezoid rule from 0 (value 0 at call
    0), padded to ``budget`` with the last value when the run stopped early (``finish``),
    and divided by ``budget``: 1.0 means a top-``k`` mean of 1 from the first call on.
    """
    s = np.asarray(scores, dtype=float)
    n = len(s)
    budget = int(budget or n)
    if n == 0 or budget == 0:
        return 0.0
    total, prev, called = 0.0, 0.0, 0
    for idx in range(freq, min(n, budget), freq):
        now = float(np.mean(np.sort(s[:idx])[::-1][:k]))
        total += freq * (now + prev) / 2
        prev, called = now, idx
    now = float(np.mean(np.sort(s[: min(n, budget)])[::-1][:k]))
    total += (min(n, budget) - called) * (now + prev) / 2
    if finish and n < budget:
        total += (budget - n) * now
    return total / budget


def running_top_mean(scores: Sequence[float], k: int) -> np.ndarray:
    """Mean of the ``k`` best scores among the first ``i`` calls, for each ``i``."""
    import heapq

    heap: list[float] = []
    total = 0.0
    out = np.empty(len(scores))
    for i, s in enumerate(scores):
        s = float(s) if np.isfinite(s) else -np.inf
        if len(heap) < k:
            heapq.heappush(heap, s)
            total += s
        elif s > heap[0]:
            total += s - heapq.heapreplace(heap, s)
        out[i] = total / len(heap)
    return out


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """True for rows not dominated by any other row (all columns maximized)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominated = np.all(v >= v[i], axis=1) & np.any(v > v[i], axis=1)
        if dominated.any():
            mask[i] = False
    return mask


# ---------------------------------------------------------------------------- samplers


def make_sampler(name: str, seed: int, batch_size: int, multi: bool = False,
                 search_space: dict | None = None, stream: int = 0):
    """An Optuna sampler configured for batched latent search.

    ``tpe``: multivariate TPE with the constant liar, so one batch's asks spread out (MOTPE
    for a multi-objective); ``cmaes``: :class:`molvae.samplers.BatchCmaEsSampler` over
    ``search_space`` with one generation per batch (``stream`` tells workers apart); ``gp``:
    Optuna's GP-BO (logEI; batches by conditioning on the pending trials); ``random``:
    uniform in the box; ``nsga2``: NSGA-II with one generation per batch.
    """
    import optuna

    name = (name or "").lower()
    if name not in SAMPLERS:
        raise MolvaeError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if multi and name == "cmaes":
        raise MolvaeError("CMA-ES optimizes one objective; for several use nsga2, tpe, gp or random")
    if not multi and name == "nsga2":
        raise MolvaeError("nsga2 is for several objectives; for one use tpe, cmaes, gp or random")
    startup = max(10, min(batch_size, 100))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=startup)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise MolvaeError("the cmaes sampler needs the 'cmaes' package: pip install cmaes") from None
        if search_space is None:
            return None  # validation only: the caller passes the box to build one
        from .samplers import BatchCmaEsSampler

        # Starts from the box centre (the data mean, or the lead) with sigma0 = a sixth of
        # the box width: 1 sd of the encoded data in the default ±3 sd box.
        return BatchCmaEsSampler(search_space, popsize=max(batch_size, 2), seed=seed, stream=stream)
    if name == "gp":
        import warnings

        # Greedy decoding and RDKit scores are deterministic: no noise to model. (The option
        # is marked experimental, which is not news for the user of every run.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                             deterministic_objective=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(batch_size, 2))
    return optuna.samplers.RandomSampler(seed=seed)


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
    try:
        if spec.startswith("sqlite"):
            # Several worker processes may write at once: wait for the lock instead of failing.
            storage = optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 120}})
            _sqlite_wal(storage)
            return storage
        return optuna.storages.RDBStorage(spec)
    except (ImportError, ValueError) as exc:
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


# ---------------------------------------------------------------------------- the search loop


@dataclass
class _Settings:
    budget: int
    batch_size: int
    time_limit: float | None
    target: float | None
    patience: int | None
    show_progress: bool
    duplicates: str = "cached"


@dataclass
class _Stats:
    trials: int = 0
    invalid: int = 0
    duplicates: int = 0
    over_budget: int = 0
    new: int = 0
    storage_background: float = 0.0  # the study writer thread's busy time (overlaps the rest)
    batches: int = 0
    time: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("sampler", "decode", "score", "storage", "io"), 0.0))

    def merge(self, other: _Stats) -> None:
        for k in ("trials", "invalid", "duplicates", "over_budget", "new", "batches"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, v in other.time.items():
            self.time[k] += v
        self.storage_background += other.storage_background


class _Stopper:
    """The stop rules, read from the shared log so that every worker agrees."""

    def __init__(self, settings: _Settings, started: float):
        self.s = settings
        self.started = started
        self.best = -math.inf
        self.best_call = 0
        self.seen = 0

    def update(self, scores: list[float]) -> None:
        for i in range(self.seen, len(scores)):
            if scores[i] > self.best:
                self.best, self.best_call = scores[i], i + 1
        self.seen = len(scores)

    def reason(self, n_scored: int, stalled: int) -> str | None:
        s = self.s
        if n_scored >= s.budget:
            return "budget"
        if s.target is not None and self.best >= s.target:
            return "target"
        if s.patience is not None and n_scored - self.best_call >= s.patience and n_scored > 0:
            return "patience"
        if s.time_limit is not None and time.perf_counter() - self.started >= s.time_limit:
            return "time_limit"
        if stalled >= STALL_BATCHES:
            return "stalled"
        return None


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


class _OptunaProposer:
    """Asks and tells an Optuna study, optionally mirroring finished trials to a persistent
    one (write-behind: one write per batch instead of dozens of commits per trial)."""

    def __init__(self, study, space: SearchSpace, mirror: _Mirror | None = None):
        self.study = study
        self.space = space
        self.mirror = mirror
        self.distributions = space.distributions()

    def propose(self, n: int, stats: _Stats):
        t = time.perf_counter()
        trials = [self.study.ask(self.distributions) for _ in range(n)]
        coords = self.space.params_to_coords([tr.params for tr in trials])
        stats.time["sampler"] += time.perf_counter() - t
        return trials, [tr.number for tr in trials], self.space.to_latent(coords)

    def tell(self, trials, values: list[list[float] | None], smiles: list[str | None], stats: _Stats) -> None:
        from optuna.trial import TrialState

        t = time.perf_counter()
        finished = []
        for trial, v, s in zip(trials, values, smiles):
            # The decoded molecule, for anyone browsing the study (e.g. optuna-dashboard). In the
            # in-memory copy this costs nothing; it reaches the storage with the trial.
            trial.set_user_attr("smiles", s)
            if v is None:
                finished.append(self.study.tell(trial, state=TrialState.FAIL))
            else:
                finished.append(self.study.tell(trial, v if len(v) > 1 else v[0]))
        stats.time["sampler"] += time.perf_counter() - t
        if self.mirror is not None:
            self.mirror.put(finished)


class _PriorProposer:
    """Latent points drawn from the prior N(0, I): the baseline every optimizer must beat."""

    def __init__(self, latent_dim: int, rng: np.random.Generator):
        self.latent_dim = latent_dim
        self.rng = rng

    def propose(self, n: int, stats: _Stats):
        return None, [-1] * n, self.rng.standard_normal((n, self.latent_dim))

    def tell(self, trials, values, smiles, stats: _Stats) -> None:
        pass


def _decode(model, z: np.ndarray) -> list[str | None]:
    import torch

    smiles = model.decode(torch.as_tensor(z, dtype=torch.float32))
    # A decode with fewer than 2 heavy atoms is not a molecule worth a budget unit.
    return [s if s is not None and chem.is_valid_molecule(s) else None for s in smiles]


def _search(model, proposer, scorer: _Scorer, mlog: MoleculeLog, settings: _Settings,
            worker: int, time_offset: float, started: float) -> tuple[_Stats, str]:
    """The batched ask → decode → score → tell loop of one worker, until a stop rule fires."""
    stats = _Stats()
    stopper = _Stopper(settings, started)
    floor = [math.inf] * len(scorer.value_columns)  # lowest feasible value seen (unbounded objectives)
    stalled = 0
    bar = progress_bar(total=settings.budget, desc="optimize", disable=not settings.show_progress,
                       initial=min(len(mlog), settings.budget))
    reason = None
    batch = mlog.max_of("batch") + 1
    try:
        while True:
            with mlog.lock():
                mlog.sync()
                n_claimed = len(mlog.read_claims())
            stopper.update(mlog.scores)
            reason = stopper.reason(len(mlog) + n_claimed, stalled)
            if reason is not None:
                break
            trials, numbers, z = proposer.propose(settings.batch_size, stats)
            t = time.perf_counter()
            smiles = _decode(model, z)
            stats.time["decode"] += time.perf_counter() - t

            t = time.perf_counter()
            with mlog.lock():
                mlog.sync()
                claims = mlog.read_claims()
                room = settings.budget - len(mlog) - len(claims)
                new: dict[str, int] = {}  # smiles -> first position in this batch
                kinds = []                # per trial: invalid, new, repeat (already scored or
                for i, s in enumerate(smiles):  # being scored), over (budget reached first)
                    if s is None:
                        kinds.append("invalid")
                    elif s in mlog.index or s in claims or s in new:
                        kinds.append("repeat")
                    elif len(new) >= room:
                        kinds.append("over")
                    else:
                        new[s] = i
                        kinds.append("new")
                if new and mlog.shared:
                    claims.update(dict.fromkeys(new, os.getpid()))
                    mlog.write_claims(claims)
            stats.time["io"] += time.perf_counter() - t

            t = time.perf_counter()
            table = scorer.score(list(new)) if new else None
            stats.time["score"] += time.perf_counter() - t

            t = time.perf_counter()
            if table is not None:
                with mlog.lock():
                    mlog.sync()
                    pos = list(new.values())
                    mlog.append(table, {"trial": [numbers[i] for i in pos], "batch": batch,
                                        "worker": worker,
                                        "seconds": round(time_offset + time.perf_counter() - started, 3)})
                    if mlog.shared:
                        mlog.write_claims({s: p for s, p in mlog.read_claims().items() if p != os.getpid()})
            stats.time["io"] += time.perf_counter() - t

            values: list[list[float] | None] = []
            for s, kind in zip(smiles, kinds):
                if kind == "invalid" or (kind == "repeat" and settings.duplicates == "penalize"):
                    values.append(list(scorer.infeasible))
                elif s in mlog.index:
                    values.append(mlog.values(s))
                else:  # over budget, or another worker is scoring it and will tell its own trial
                    values.append(None)
            if not scorer.bounded:
                # An unbounded raw score (penalized logP) gives invalid molecules a value far
                # below any real one; a GP would spend its fit on that cliff. Tell them the
                # lowest feasible value seen instead: same ranking, no outlier.
                for row in (table.itertuples() if table is not None else ()):
                    if row.feasible and row.score < floor[0]:
                        floor[0] = row.score
                values = [None if v is None else [max(v[0], floor[0]) if math.isfinite(floor[0]) else v[0]]
                          for v in values]
            proposer.tell(trials, values, smiles, stats)

            stats.trials += len(smiles)
            stats.invalid += kinds.count("invalid")
            stats.duplicates += kinds.count("repeat")
            stats.over_budget += kinds.count("over")
            stats.new += len(new)
            stats.batches += 1
            stalled = 0 if new else stalled + 1
            batch += 1
            # The postfix first: update() draws the bar, so the last batch's best is shown.
            stopper.update(mlog.scores)
            if stopper.best > -math.inf:
                bar.set_postfix(best=f"{stopper.best:.3f}", refresh=False)
            bar.update(min(len(new), max(0, settings.budget - bar.n)))
    finally:
        bar.refresh()  # update() skips redraws within mininterval: show the final best
        bar.close()
    return stats, reason


# ---------------------------------------------------------------------------- outputs


def _summarize(mlog: MoleculeLog, scorer: _Scorer, stats: _Stats, wall: float, budget: int,
               reason: str, info: dict[str, Any]) -> dict[str, Any]:
    scores = np.asarray(mlog.scores, dtype=float)
    ranked = np.sort(scores)[::-1]

    def top(k):
        return float(ranked[:k].mean()) if len(ranked) else float("nan")

    time_split = {f"{k}_s": round(v, 3) for k, v in stats.time.items()}
    accounted = sum(stats.time.values())
    time_split["other_s"] = round(max(0.0, wall - accounted), 3)
    time_split["storage_background_s"] = round(stats.storage_background, 3)
    out = {
        **info,
        "objective": scorer.describe(),
        "budget": budget,
        "oracle_calls": len(mlog),
        "new_oracle_calls": stats.new,
        "stop_reason": reason,
        "top1": top(1), "top10_mean": top(10), "top100_mean": top(100),
        "auc_top1": top_k_auc(scores, 1, budget), "auc_top10": top_k_auc(scores, 10, budget),
        "auc_top100": top_k_auc(scores, 100, budget),
        "feasible_fraction": float(mlog.frame()["feasible"].mean()) if len(mlog) else float("nan"),
        "trials": stats.trials,
        "invalid_decodes": stats.invalid,
        "duplicate_decodes": stats.duplicates,
        "over_budget_decodes": stats.over_budget,
        "valid_fraction": 1 - stats.invalid / stats.trials if stats.trials else float("nan"),
        "new_fraction": stats.new / stats.trials if stats.trials else float("nan"),
        "wall_s": round(wall, 3),
        "wall_s_total": round(mlog.last_seconds(), 3),
        "calls_per_s": round(stats.new / wall, 2) if wall > 0 else float("nan"),
        "time": time_split,
        # Everything but scoring: what the optimizer adds on top of the oracle's own cost.
        "overhead_fraction": round(1 - stats.time["score"] / wall, 4) if wall > 0 else float("nan"),
    }
    if scorer.multi:
        values = mlog.frame()[scorer.value_columns].to_numpy() if len(mlog) else np.zeros((0, 1))
        out["pareto_size"] = int(pareto_mask(values).sum()) if len(values) else 0
        out["objectives"] = {c: {"top1": float(np.max(values[:, j])) if len(values) else float("nan"),
                                 "auc_top10": top_k_auc(values[:, j], 10, budget)}
                             for j, c in enumerate(scorer.value_columns)}
    return out


def _table(mlog: MoleculeLog, scorer: _Scorer) -> pd.DataFrame:
    df = mlog.frame()
    if scorer.multi and len(df):
        df["pareto"] = pareto_mask(df[scorer.value_columns].to_numpy())
    elif scorer.multi:
        df["pareto"] = pd.Series(dtype=bool)
    df["_rank"] = mlog.scores
    keys = ["pareto", "_rank"] if scorer.multi else ["_rank"]
    df = df.sort_values(keys + ["oracle_call"], ascending=[False] * len(keys) + [True], kind="stable")
    return df.drop(columns="_rank").reset_index(drop=True)


def _write_outputs(out: Path, table: pd.DataFrame, summary: dict[str, Any], mlog: MoleculeLog) -> None:
    top = table.head(TOP_N).copy()
    props = chem.properties_many(top["smiles"].tolist(), names=("qed", "logp", "sa", "mw", "tpsa",
                                                                "heavy_atoms"), progress=False)
    for c in props.columns:
        if c not in top.columns and f"{c}_raw" not in top.columns:
            top[c] = props[c].to_numpy()
    _atomic_csv(top, out / "top.csv")
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(_json_safe(summary), indent=1))
    os.replace(tmp, out / "summary.json")
    plot_curve(mlog.scores, out / "curve.png", title=summary.get("objective", ""),
               budget=summary.get("budget"))


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def plot_curve(scores: Sequence[float], path: str | os.PathLike, title: str = "",
               budget: int | None = None) -> None:
    """Best and top-10 mean score against oracle calls, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.asarray(scores, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if len(s):
        x = np.arange(1, len(s) + 1)
        ax.plot(x, np.maximum.accumulate(np.where(np.isfinite(s), s, -np.inf)), label="best")
        ax.plot(x, running_top_mean(s, 10), label="top-10 mean")
        ax.scatter(x, s, s=2, alpha=0.15, color="grey", label="each molecule")
    if budget:
        ax.set_xlim(0, budget)
    ax.set_xlabel("oracle calls (unique molecules scored)")
    ax.set_ylabel("score")
    ax.set_title(title[:80], fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- public API


def _read_start(start: str | os.PathLike | Sequence[str] | None) -> list[str]:
    if start is None:
        return []
    if isinstance(start, (str, os.PathLike)):
        p = Path(start)
        if isinstance(start, os.PathLike) or p.suffix.lower() in (".csv", ".tsv", ".smi", ".txt", ".gz") \
                or p.exists():
            from .data import read_smiles

            return read_smiles(p)
        return [s for s in str(start).replace(",", " ").split() if s]
    return [str(s) for s in start]


def _check_run(out: Path, settings: dict[str, Any]) -> bool:
    """Write ``run.json`` on the first run; on a resume, check the settings match. Returns
    whether this is a resume."""
    path = out / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise MolvaeError(f"{path}: not valid JSON; the run folder is damaged") from None
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            detail = "; ".join(f"{k}: was {old.get(k)!r}, now {settings[k]!r}" for k in diff)
            raise MolvaeError(f"{out} holds a run with other settings ({detail}). Resume with the "
                              "same settings, or use a new output folder.")
        return True
    tmp = path.with_name("run.json.tmp")
    tmp.write_text(json.dumps(_json_safe(settings), indent=1))
    os.replace(tmp, path)
    return False


def _numeric(name: str, value, minimum: float | None = None, integer: bool = False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or (integer and int(value) != value):
        raise MolvaeError(f"{name} must be a{'n integer' if integer else ' number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise MolvaeError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def optimize(model, objective, budget: int = 1000, sampler: str | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
             out_dir: str | os.PathLike | None = None,
             start: str | os.PathLike | Sequence[str] | None = None,
             lead: str | None = None, similarity_threshold: float | None = None,
             scaffold: str | None = None, storage: Any = None, workers: int = 1,
             time_limit: float | None = None, target: float | None = None,
             patience: int | None = None, n_components: int | None = None,
             bound: float = DEFAULT_BOUND, trust_radius: float = DEFAULT_TRUST_RADIUS,
             duplicates: str = "penalize", study_name: str | None = None,
             progress: bool = True) -> pd.DataFrame:
    """Search the model's latent space for molecules that maximize ``objective``.

    Args:
        model: a :class:`molvae.model.MolVAE`.
        objective: anything :func:`molvae.scoring.as_objective` accepts (an Objective, a
            preset name such as ``"qed"``, a TOML path, a dict, or a callable ``list[str] ->
            list[float]``), or a MultiObjective / list of objectives for a Pareto search.
        budget: unique valid molecules to score, in total over resumed runs.
        sampler: ``tpe``, ``cmaes``, ``gp``, ``random`` or (several objectives) ``nsga2``;
            default :data:`DEFAULT_SAMPLER` (``nsga2`` for several objectives).
        batch_size: trials asked, decoded and scored together.
        out_dir: run folder (see the module docstring); ``None`` keeps everything in memory.
        start: SMILES (list, or a file) whose encodings are enqueued as the first trials.
        lead: optimize around this molecule: the search is a trust region of ±``trust_radius``
            sd around its encoding, and molecules with Tanimoto similarity (Morgan radius 2,
            2048 bits) below ``similarity_threshold`` (default 0.4) are infeasible.
        scaffold: SMARTS every feasible molecule must contain.
        storage: Optuna storage (see :func:`open_storage`); default the journal file
            ``study.journal`` in ``out_dir``.
        workers: worker processes sharing the study and the molecule log (needs ``out_dir``).
        time_limit, target, patience: stop after this many seconds (this call), once the best
            score reaches ``target``, or after ``patience`` oracle calls without a new best.
        duplicates: what a trial whose molecule was already scored is told: ``"penalize"``
            (the infeasible score: nothing new was found there, so the sampler moves on) or
            ``"cached"`` (the molecule's score). Either way it costs no budget.
        n_components, bound: the search box: first ``n_components`` principal axes of the
            encoded training set (default :data:`DEFAULT_COMPONENTS`, at most the latent
            dimension), ±``bound`` sd.

    Returns:
        The molecules table (columns as ``molecules.csv``; ``pareto`` for several
        objectives), best first; ``table.attrs["summary"]`` holds the summary.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = _numeric("budget", budget, 1, integer=True)
    batch_size = _numeric("batch_size", batch_size, 1, integer=True)
    workers = _numeric("workers", workers, 1, integer=True)
    seed = _numeric("seed", seed, 0, integer=True)
    time_limit = _numeric("time_limit", time_limit, 0)
    target = _numeric("target", target)
    patience = _numeric("patience", patience, 1, integer=True)
    bound = _numeric("bound", bound, 1e-6)
    trust_radius = _numeric("trust_radius", trust_radius, 1e-6)

    if n_components is None:
        n_components = min(DEFAULT_COMPONENTS, model.latent_dim)
    obj = _resolve_objective(objective)
    from .scoring import Component, MultiObjective, Transform

    multi = isinstance(obj, MultiObjective)
    sampler = (sampler or (DEFAULT_MULTI_SAMPLER if multi else DEFAULT_SAMPLER)).lower()
    make_sampler(sampler, seed, batch_size, multi)  # validate the name early

    lead_std = None
    filters = []
    if lead is not None:
        lead_std, reason = chem.standardize(lead)
        if lead_std is None:
            raise MolvaeError(f"lead {lead!r}: {reason}")
        threshold = DEFAULT_SIMILARITY if similarity_threshold is None else similarity_threshold
        threshold = _numeric("similarity_threshold", threshold, 0.0)
        if threshold > 1:
            raise MolvaeError(f"similarity_threshold must be in [0, 1], got {threshold}")
        filters.append(Component("similarity", reference=lead_std, name="lead_similarity",
                                 transform=Transform("step", low=threshold), filter=True))
    elif similarity_threshold is not None:
        raise MolvaeError("similarity_threshold needs a lead molecule (lead=SMILES)")
    if scaffold is not None:
        filters.append(Component("substructure", smarts=scaffold, name="scaffold", filter=True))
    obj = _with_filters(obj, filters)
    scorer = _Scorer(obj)

    out = Path(out_dir) if out_dir is not None else None
    if workers > 1 and out is None:
        raise MolvaeError("workers > 1 share a molecule log in a run folder: give out_dir")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    start_smiles = _read_start(start)
    fp = model_fingerprint(model)
    run_settings = {
        "format": RUN_FORMAT, "model": fp, "sampler": sampler, "seed": seed,
        "n_components": n_components, "bound": bound if lead is None else None,
        "trust_radius": trust_radius if lead is not None else None,
        "lead": lead_std, "similarity_threshold": similarity_threshold if lead is None else threshold,
        "scaffold": scaffold, "columns": scorer.columns,
    }
    resumed = _check_run(out, run_settings) if out is not None else False

    # ---- the search region (reloaded on resume so the coordinates mean the same thing)
    space_file = out / "search_space.npz" if out is not None else None
    if space_file is not None and space_file.exists():
        space = SearchSpace.load(space_file)
    else:
        pca = fit_latent_pca(model)
        if lead_std is not None:
            mu, _, ok, reasons = model.try_encode([lead_std])
            if not ok[0]:
                raise MolvaeError(f"lead {lead!r} cannot be encoded by this model: {reasons[0]}")
            space = trust_region(pca, mu[0].detach().cpu().double().numpy(), n_components, trust_radius)
        else:
            space = pca_space(pca, n_components, bound)
        if space_file is not None:
            space.save(space_file)

    columns = _log_columns(scorer)
    mlog = MoleculeLog(out / MOLECULES_FILE if out else None, columns, scorer.value_columns,
                       shared=workers > 1)
    previous = len(mlog)
    if resumed:
        log.info("resuming %s: %d molecules already scored", out, previous)

    # ---- the study
    persistent = open_storage(storage, out)
    name = study_name or (out.name if out is not None else "molvae")
    started = time.perf_counter()
    time_offset = mlog.last_seconds()
    if duplicates not in ("penalize", "cached"):
        raise MolvaeError(f"duplicates must be 'penalize' or 'cached', got {duplicates!r}")
    settings = _Settings(budget, batch_size, time_limit, target, patience, progress, duplicates)
    stats = _Stats()
    enqueue = _start_coords(model, space, start_smiles, lead_std)
    n_trials_before = 0

    if persistent is not None:
        shared_study = optuna.create_study(storage=persistent, study_name=name, load_if_exists=True,
                                           directions=scorer.directions)
        _repair_running(shared_study, space, model, mlog, scorer)
        n_trials_before = len(shared_study.get_trials(deepcopy=False))
    if workers == 1:
        eff_seed = _resume_seed(seed, n_trials_before)
        study = optuna.create_study(sampler=make_sampler(sampler, eff_seed, batch_size, multi,
                                                              space.distributions()),
                                    directions=scorer.directions)
        if persistent is not None:
            _load_history(study, shared_study, mlog)
        for c in enqueue:
            study.enqueue_trial(dict(zip(space.names, map(float, c))), skip_if_exists=True)
        mirror = _Mirror(shared_study) if persistent is not None else None
        proposer = _OptunaProposer(study, space, mirror)
        try:
            stats, reason = _search(model, proposer, scorer, mlog, settings, 0, time_offset, started)
        finally:
            if mirror is not None:
                wait = mirror.close()
        if mirror is not None:
            stats.time["storage"] += wait
            stats.storage_background = mirror.busy
    else:
        for c in enqueue:
            shared_study.enqueue_trial(dict(zip(space.names, map(float, c))), skip_if_exists=True)
        stats, reason = _run_workers(workers, model, scorer, space, mlog, settings, storage, persistent, out,
                                     name, sampler, seed, n_trials_before, multi, time_offset, started)
        with mlog.lock():
            mlog.sync()
    wall = time.perf_counter() - started

    info = {"sampler": sampler, "seed": seed, "batch_size": batch_size, "workers": workers,
            "n_components": space.k, "search_region": space.kind,
            "region_bound_sd": space.bound, "explained_variance": space.explained,
            "lead": lead_std, "scaffold": scaffold, "resumed_from_calls": previous,
            "model": fp}
    summary = _summarize(mlog, scorer, stats, wall, budget, reason, info)
    table = _table(mlog, scorer)
    if out is not None:
        _write_outputs(out, table, summary, mlog)
    table.attrs["summary"] = summary
    return table


def _resume_seed(seed: int, n_trials: int) -> int:
    # A resumed sampler must not replay the first run's random draws (they would decode to
    # molecules already scored), yet stay reproducible: derive the seed from the history.
    return seed if n_trials == 0 else (seed * 1_000_003 + n_trials) % (2**31 - 1)


def _start_coords(model, space: SearchSpace, smiles: list[str], lead: str | None) -> np.ndarray:
    """Coordinates to enqueue: the lead (the box centre) and each start molecule's encoding."""
    coords = []
    if lead is not None:
        coords.append(np.zeros(space.k))
    if smiles:
        mu, _, ok, reasons = model.try_encode(smiles)
        bad = [f"{s!r} ({r})" for s, good, r in zip(smiles, ok, reasons) if not good]
        if bad:
            log.warning("%d start molecule(s) cannot be encoded and are skipped, e.g. %s", len(bad), bad[0])
        if not any(ok):
            raise MolvaeError("none of the start molecules can be encoded by this model: "
                              + "; ".join(bad[:3]))
        coords.extend(space.to_coords(mu.detach().cpu().double().numpy()))
    return np.array(coords).reshape(-1, space.k)


def _repair_running(study, space: SearchSpace, model, mlog: MoleculeLog, scorer: _Scorer) -> None:
    """Finish trials left RUNNING by a killed process: told the cached score when their
    molecule was scored before the kill, else failed. Never scores anything."""
    from optuna.trial import TrialState

    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if all(n in t.params for n in space.names)]
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if not all(n in t.params for n in space.names)]
    if running:
        smiles = _decode(model, space.to_latent(space.params_to_coords([t.params for t in running])))
        for t, s in zip(running, smiles):
            if s is None:
                study.tell(t.number, scorer.infeasible if scorer.multi else scorer.infeasible[0])
            elif s in mlog.index:
                v = mlog.values(s)
                study.tell(t.number, v if scorer.multi else v[0])
            else:
                study.tell(t.number, state=TrialState.FAIL)
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
    if running or stale:
        log.info("finished %d trial(s) left running by an interrupted run", len(running) + len(stale))


def _load_history(study, persistent, mlog: MoleculeLog) -> None:
    """Copy the persistent study's finished trials into the in-memory one, keeping trial
    numbers identical in both (and in molecules.csv)."""
    import optuna
    from optuna.trial import TrialState

    def placeholders(n: int) -> list:
        return [optuna.trial.create_trial(state=TrialState.FAIL, system_attrs={"molvae:placeholder": True})
                for _ in range(n)]

    trials = persistent.get_trials(deepcopy=False)
    for t in trials:
        if t.state.is_finished():
            study.add_trial(t)
        else:  # left WAITING (enqueued by a multi-worker run): keep its number taken here too
            study.add_trials(placeholders(1))
    # A run killed after writing molecules but before writing their trials: fill the gap so
    # new trials do not reuse the numbers molecules.csv already gives.
    missing = mlog.max_of("trial") + 1 - len(trials)
    if missing > 0:
        study.add_trials(placeholders(missing))
        persistent.add_trials(placeholders(missing))


# ---------------------------------------------------------------------------- worker processes

_WORKER_JOB: dict[str, Any] = {}  # set before forking; the workers inherit it


def _worker_main(index: int, queue) -> None:
    import optuna
    import torch

    job = _WORKER_JOB
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(max(1, chem.default_workers() // job["workers"]))
    try:
        storage = open_storage(job["storage"], job["out"])
        seed = _resume_seed(job["seed"] + 7919 * index, job["n_trials_before"])
        study = optuna.load_study(study_name=job["name"], storage=storage,
                                  sampler=make_sampler(job["sampler"], seed, job["settings"].batch_size,
                                                       job["multi"], job["space"].distributions(),
                                                       stream=index))
        mlog = MoleculeLog(job["out"] / MOLECULES_FILE, job["columns"], job["value_columns"], shared=True)
        settings = job["settings"]
        settings = _Settings(settings.budget, settings.batch_size, settings.time_limit, settings.target,
                             settings.patience, settings.show_progress and index == 0, settings.duplicates)
        stats, reason = _search(job["model"], _OptunaProposer(study, job["space"]), job["scorer"], mlog,
                                settings, index, job["time_offset"], job["started"])
        queue.put((index, stats, reason, None))
    except BaseException as exc:  # report, so the parent can raise it
        queue.put((index, None, None, f"{type(exc).__name__}: {exc}"))


def _run_workers(workers: int, model, scorer: _Scorer, space: SearchSpace, mlog: MoleculeLog,
                 settings: _Settings, storage, persistent, out: Path, name: str, sampler: str, seed: int,
                 n_trials_before: int, multi: bool, time_offset: float,
                 started: float) -> tuple[_Stats, str]:
    """Run ``workers`` forked processes on the shared study and molecule log."""
    if str(getattr(model, "device", "cpu")).startswith("cuda"):
        raise MolvaeError("workers > 1 fork processes, which CUDA does not survive; run one worker "
                          "per GPU process instead (same --out and --storage)")
    _WORKER_JOB.clear()
    _WORKER_JOB.update(model=model, scorer=scorer, space=space, settings=settings, storage=storage,
                       out=out, name=name, sampler=sampler, seed=seed, n_trials_before=n_trials_before,
                       multi=multi, columns=mlog.columns, value_columns=mlog.value_columns,
                       workers=workers, time_offset=time_offset, started=started)
    engine = getattr(persistent, "engine", None)
    if engine is not None:
        engine.dispose()  # forked children must not share the parent's database connections
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(i, queue), daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    total = _Stats()
    reasons, errors = [], []
    try:
        for _ in procs:
            _, stats, reason, error = queue.get()
            if error:
                errors.append(error)
            else:
                total.merge(stats)
                reasons.append(reason)
    finally:
        for p in procs:
            p.join(timeout=30)
        _WORKER_JOB.clear()
    if errors:
        raise MolvaeError(f"a worker failed: {errors[0]}")
    # The time split sums over workers; report it per worker so it compares with wall time.
    for k in total.time:
        total.time[k] /= workers
    return total, max(set(reasons), key=reasons.count) if reasons else "budget"


# ---------------------------------------------------------------------------- prior baseline


def sample_prior_baseline(model, objective, budget: int = 1000, seed: int = 0,
                          batch_size: int = 256, out_dir: str | os.PathLike | None = None,
                          time_limit: float | None = None, progress: bool = True) -> pd.DataFrame:
    """Score molecules decoded from prior samples z ~ N(0, I) until ``budget`` unique valid
    molecules are scored: the baseline an optimizer must beat. Same outputs and summary as
    :func:`optimize` (``sampler = "prior"``)."""
    budget = _numeric("budget", budget, 1, integer=True)
    seed = _numeric("seed", seed, 0, integer=True)
    obj = _resolve_objective(objective)
    scorer = _Scorer(obj)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _check_run(out, {"format": RUN_FORMAT, "model": model_fingerprint(model), "sampler": "prior",
                         "seed": seed, "columns": scorer.columns})
    columns = _log_columns(scorer)
    mlog = MoleculeLog(out / MOLECULES_FILE if out else None, columns, scorer.value_columns)
    previous = len(mlog)
    rng = np.random.default_rng([seed, previous])
    settings = _Settings(budget, batch_size, time_limit, None, None, progress)
    started = time.perf_counter()
    stats, reason = _search(model, _PriorProposer(model.latent_dim, rng), scorer, mlog, settings, 0,
                            mlog.last_seconds(), started)
    wall = time.perf_counter() - started
    summary = _summarize(mlog, scorer, stats, wall, budget, reason,
                         {"sampler": "prior", "seed": seed, "batch_size": batch_size, "workers": 1,
                          "search_region": "prior N(0, I)", "resumed_from_calls": previous})
    table = _table(mlog, scorer)
    if out is not None:
        _write_outputs(out, table, summary, mlog)
    table.attrs["summary"] = summary
    return table
