"""CMA-ES for batched latent search: an Optuna sampler that asks a whole generation at once
and keeps its state in memory, rebuilt from the study's parameters and values on resume.

Why not Optuna's ``CmaEsSampler``: it stores its optimizer as a pickle in the trials' system
attributes, so resuming a study file means unpickling data from that file (and a run folder
from someone else could run code on load); and every ask scans, filters and re-transforms the
current generation's trials and unpickles the optimizer again, ~2 ms per trial, which at
10,000 cheap oracle calls costs more than scoring them.

Here a trial carries one JSON system attribute, ``molvae:cma = [stream, generation, first]``
(the generation's CMA-ES index and the number of its first trial). A new process replays
the complete generations, in order, into a fresh ``cmaes.CMA`` with the same settings: the
state after a resume equals the state the interrupted run had (``tests/test_samplers.py``).
Failed trials (invalid decodes) rank below every value told in their generation. Enqueued
trials (``--start`` molecules, the lead) are asked with fixed parameters and do not enter
a generation.

Several worker processes each run their own CMA-ES (``stream`` = the worker index) on the
shared study and molecule log: independent searches that never score a molecule twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import MolvaeError

ATTR = "molvae:cma"


def _told_value(state, values: Sequence[float] | None) -> float | None:
    """What a finished trial tells CMA-ES: its value, or ``None`` (failed, or not finite).
    Live runs and replays both go through here, so a resume rebuilds the same state."""
    from optuna.trial import TrialState

    ok = state == TrialState.COMPLETE and values is not None and bool(np.isfinite(values[0]))
    return float(values[0]) if ok else None


def _optuna_base():
    import optuna

    return optuna.samplers.BaseSampler


class BatchCmaEsSampler(_optuna_base()):
    """CMA-ES over a fixed box of float parameters, one generation of ``popsize`` trials.

    Args:
        search_space: the parameters, ``{name: FloatDistribution}``, all searched jointly.
        popsize: trials per generation (the optimizer's batch size).
        seed: seeds each generation's draws (with ``stream`` and the generation index).
        sigma0: initial step size; default a sixth of the narrowest parameter range (Optuna's
            default: 1 sd of the encoded data in molvae's ±3 sd box).
        x0: initial mean, ``{name: value}``; default the centre of the box.
        stream: tells apart the searches of several workers on one study.
    """

    def __init__(self, search_space: dict, popsize: int, seed: int = 0, sigma0: float | None = None,
                 x0: dict[str, float] | None = None, stream: int = 0) -> None:
        import optuna

        if not search_space:
            raise MolvaeError("CMA-ES needs at least one parameter")
        bad = [n for n, d in search_space.items()
               if not isinstance(d, optuna.distributions.FloatDistribution) or d.log or d.step is not None]
        if bad:
            raise MolvaeError(f"CMA-ES searches continuous linear parameters only, not {', '.join(bad)}")
        if popsize < 2:
            raise MolvaeError(f"CMA-ES needs a population of at least 2, got {popsize}")
        self._space = dict(search_space)
        self._names = list(search_space)
        self._bounds = np.array([[d.low, d.high] for d in search_space.values()], dtype=float)
        self._popsize = int(popsize)
        self._seed = int(seed)
        self._stream = int(stream)
        width = self._bounds[:, 1] - self._bounds[:, 0]
        self._sigma0 = float(sigma0) if sigma0 is not None else float(width.min() / 6)
        centre = self._bounds.mean(1)
        self._x0 = np.array([x0[n] for n in self._names], dtype=float) if x0 else centre
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._cma = None
        self._queue: list[np.ndarray] = []
        self._tag: list[int] | None = None           # [stream, generation, first trial number]
        self._members: dict[int, np.ndarray] = {}    # trial number -> point, current generation
        self._results: list[tuple[np.ndarray, float | None]] = []
        self._sign = 1.0

    # ---------------------------------------------------------------- Optuna's interface

    def infer_relative_search_space(self, study, trial) -> dict:
        return dict(self._space)

    def sample_relative(self, study, trial, search_space: dict) -> dict[str, Any]:
        if not search_space:
            return {}
        if self._cma is None:
            self._start(study)
        if not self._queue:
            g = self._cma.generation
            if self._tag is None or self._tag[1] != g:
                # A new generation: its draws depend on (seed, stream, generation) only.
                self._cma.reseed_rng(int(np.random.SeedSequence([self._seed, self._stream, g]).generate_state(1)[0]))
                self._tag = [self._stream, g, trial.number]
            # (Asked beyond its population before it was told, a generation draws more
            # points from the same distribution; the first popsize results count.)
            self._queue = [self._cma.ask() for _ in range(self._popsize)]
        x = self._queue.pop(0)
        self._members[trial.number] = x
        study._storage.set_trial_system_attr(trial._trial_id, ATTR, self._tag)
        return {n: float(v) for n, v in zip(self._names, x)}

    def sample_independent(self, study, trial, param_name: str, param_distribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values: Sequence[float] | None) -> None:
        x = self._members.pop(trial.number, None)
        if x is None:  # an enqueued trial, or one of a generation already abandoned
            return
        self._results.append((x, _told_value(state, values)))
        if len(self._results) == self._popsize:
            self._tell(self._results)
            # Points drawn from the old distribution but not yet asked are stale now.
            self._results, self._queue = [], []
            self._members.clear()

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    # ---------------------------------------------------------------- state

    @property
    def generation(self) -> int:
        """Generations told so far (0 before the first)."""
        return 0 if self._cma is None else self._cma.generation

    def _new_cma(self):
        from cmaes import CMA

        return CMA(mean=self._x0.copy(), sigma=self._sigma0, bounds=self._bounds, seed=self._seed,
                   population_size=self._popsize)

    def _tell(self, results: list[tuple[np.ndarray, float | None]]) -> None:
        # cmaes minimizes; a failed trial ranks below the worst value of its generation.
        costs = [None if v is None else -self._sign * v for _, v in results]
        finite = [c for c in costs if c is not None]
        worst = (max(finite) + 1.0) if finite else 0.0
        self._cma.tell([(x, worst if c is None else c) for (x, _), c in zip(results, costs)])

    def _start(self, study) -> None:
        """A fresh optimizer, then every complete generation of this stream replayed in order."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        if len(study.directions) != 1:
            raise MolvaeError("CMA-ES optimizes one objective; for several use nsga2, tpe, gp or random")
        self._sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        self._cma = self._new_cma()
        groups: dict[tuple[int, int], list] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            tag = t.system_attrs.get(ATTR)
            if not isinstance(tag, list) or len(tag) != 3 or tag[0] != self._stream:
                continue
            if not all(n in t.params for n in self._names):
                continue
            x = np.array([t.params[n] for n in self._names], dtype=float)
            groups.setdefault((int(tag[2]), int(tag[1])), []).append((t.number, x, _told_value(t.state, t.values)))
        for (_, g), members in sorted(groups.items()):
            # A generation cut short by a kill is left out; the run went on with a new one.
            if g == self._cma.generation and len(members) >= self._popsize:
                # Trials are told in number order, so the first popsize are the ones told.
                self._tell([(x, v) for _, x, v in sorted(members, key=lambda m: m[0])[:self._popsize]])
