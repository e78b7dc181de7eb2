"""The search loop: ask a batch of points, decode them, score the new molecules, tell the
values (see the journey of one batch in :mod:`molvae.optimize`), and the stop rules.

A proposer gives the batch's latent points: :class:`_OptunaProposer` asks an Optuna study
whose sampler :func:`make_sampler` builds, :class:`_PriorProposer` draws from N(0, I) for the
baseline. :func:`_search` runs the loop of one worker against the shared ledger.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .. import chem
from ..errors import MolvaeError
from ..progress import progress as progress_bar
from .ledger import MoleculeLog
from .objective import _Scorer
from .region import SearchSpace
from .storage import _Mirror

SAMPLERS = ("tpe", "cmaes", "gp", "random", "nsga2")
#: The winner of ``molvae bench optimize`` (see :mod:`molvae.optimize`).
DEFAULT_SAMPLER = "cmaes"
DEFAULT_MULTI_SAMPLER = "nsga2"
DEFAULT_BATCH_SIZE = 16
#: The most latent points one batch may hold: a batch is asked, decoded and held in memory at
#: once (and is CMA-ES's population), so 10**8 would be a run that never comes back.
MAX_BATCH_SIZE = 4096
#: Batches in a row without a new molecule before the search counts as converged.
STALL_BATCHES = 25
#: When the first this-many molecules all failed to score, the objective is broken (a wrong
#: path, a missing licence), not meeting hostile molecules: stop instead of spending the
#: budget on failures.
FAILING_STOP = 32


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
        from ..samplers import BatchCmaEsSampler

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

    def reason(self, n_scored: int, stalled: int, all_failed: bool = False) -> str | None:
        s = self.s
        if all_failed:
            return "objective_failing"
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


def _decode(model, z: np.ndarray, temperature: float | None = None, seed: int | None = None,
            greedy: np.ndarray | None = None) -> list[str | None]:
    """Greedy decodes of ``z`` (sampled at ``temperature`` with ``seed`` when given, except
    the rows where ``greedy`` is true), with the molecules not worth a budget unit as ``None``."""
    import torch

    z = torch.as_tensor(z, dtype=torch.float32)
    if temperature is None:
        smiles = model.decode(z)
    else:
        rows = False if greedy is None else torch.as_tensor(np.asarray(greedy, dtype=bool))
        smiles = model.decode(z, greedy=rows, temperature=temperature, seed=seed)
    # A decode with fewer than 2 heavy atoms is not a molecule worth a budget unit.
    return [s if s is not None and _is_valid_decode(s) else None for s in smiles]


@lru_cache(maxsize=1 << 16)
def _is_valid_decode(smiles: str) -> bool:
    # Cached like the decode itself (molvae.tokens.selfies_to_canonical): a converged search
    # meets the same molecules again and again, and each check parses the SMILES.
    return chem.is_valid_molecule(smiles)


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
            reason = stopper.reason(len(mlog) + n_claimed, stalled,
                                    all_failed=FAILING_STOP <= mlog.n_failed == len(mlog))
            if reason == "budget" and len(mlog) < settings.budget:
                # The rest of the budget is claimed by other workers: wait until they record it
                # (or their lease runs out, if they died), so this run ends with the whole
                # ledger; unless another stop rule fires meanwhile.
                reason = stopper.reason(len(mlog), stalled)
                if reason is None:
                    time.sleep(0.5)
                    continue
            if reason is not None:
                break
            trials, numbers, z = proposer.propose(settings.batch_size, stats)
            t = time.perf_counter()
            # A proposer may decode its own points (PolicyProposer samples some of them).
            smiles = proposer.decode(model, z) if hasattr(proposer, "decode") else _decode(model, z)
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
                if mlog.shared:
                    mlog.claim(list(new), numbers)
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
                        mlog.release()
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
