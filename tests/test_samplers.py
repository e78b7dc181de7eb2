"""The batched CMA-ES sampler: it optimizes, stays in the box, rebuilds its exact state from a
study file without unpickling anything, and copes with failed and enqueued trials."""

from __future__ import annotations

import pickle

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from molvae.errors import MolvaeError
from molvae.samplers import ATTR, BatchCmaEsSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {f"x{i}": optuna.distributions.FloatDistribution(-3, 3) for i in range(6)}
OPTIMUM = np.array([1.0, -1.0, 0.5, 2.0, 0.0, -2.5])


def _value(params) -> float:
    x = np.array([params[f"x{i}"] for i in range(6)])
    return -float(((x - OPTIMUM) ** 2).sum())


def _run(study, batches: int, batch: int = 8, fail_every: int = 0, start: int = 0) -> list[np.ndarray]:
    points = []
    for b in range(batches):
        trials = [study.ask(SPACE) for _ in range(batch)]
        for j, t in enumerate(trials):
            points.append(np.array([t.params[f"x{i}"] for i in range(6)]))
            if fail_every and (start + b * batch + j) % fail_every == 0:
                study.tell(t, state=TrialState.FAIL)
            else:
                study.tell(t, _value(t.params))
    return points


def _state(sampler: BatchCmaEsSampler):
    cma = sampler._cma
    return cma.generation, cma.mean.copy(), cma._sigma, cma._C.copy()


def test_it_optimizes_inside_the_box():
    sampler = BatchCmaEsSampler(SPACE, popsize=8, seed=3)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    points = np.array(_run(study, 40, fail_every=13))
    assert np.all(points >= -3) and np.all(points <= 3)
    assert sampler.generation == 40
    assert study.best_value > -0.05   # the optimum is 0 at OPTIMUM
    first_batch = max(_value(t.params) for t in study.trials[:8] if t.state == TrialState.COMPLETE)
    assert study.best_value > first_batch + 1


def test_same_seed_same_points_and_minimize_is_mirrored():
    a = _run(optuna.create_study(sampler=BatchCmaEsSampler(SPACE, 8, seed=1), direction="maximize"), 5)
    b = _run(optuna.create_study(sampler=BatchCmaEsSampler(SPACE, 8, seed=1), direction="maximize"), 5)
    c = _run(optuna.create_study(sampler=BatchCmaEsSampler(SPACE, 8, seed=2), direction="maximize"), 5)
    assert np.array_equal(np.array(a), np.array(b)) and not np.array_equal(np.array(a), np.array(c))
    # Minimizing the negated objective is the same search.
    study = optuna.create_study(sampler=BatchCmaEsSampler(SPACE, 8, seed=1), direction="minimize")
    points = []
    for _ in range(5):
        trials = [study.ask(SPACE) for _ in range(8)]
        for t in trials:
            points.append(np.array([t.params[f"x{i}"] for i in range(6)]))
            study.tell(t, -_value(t.params))
    assert np.array_equal(np.array(points), np.array(a))


def test_resume_from_a_study_file_rebuilds_the_state_without_unpickling(tmp_path, monkeypatch):
    from molvae.optimize import open_storage

    storage = open_storage(f"journal:{tmp_path / 'study.journal'}", None)
    live = BatchCmaEsSampler(SPACE, popsize=8, seed=5)
    study = optuna.create_study(study_name="s", storage=storage, sampler=live, direction="maximize")
    _run(study, 12, fail_every=7)
    assert live.generation == 12

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled while resuming")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    resumed = BatchCmaEsSampler(SPACE, popsize=8, seed=5)
    storage2 = open_storage(f"journal:{tmp_path / 'study.journal'}", None)
    study2 = optuna.load_study(study_name="s", storage=storage2, sampler=resumed)
    resumed._start(study2)
    g1, m1, s1, c1 = _state(live)
    g2, m2, s2, c2 = _state(resumed)
    assert g1 == g2 == 12 and np.array_equal(m1, m2) and s1 == s2 and np.array_equal(c1, c2)
    # Only small JSON tags went into the study.
    attrs = study2.trials[0].system_attrs
    assert set(attrs) == {ATTR} and attrs[ATTR] == [0, 0, 0]


def test_a_generation_cut_short_is_left_out_on_resume():
    live = BatchCmaEsSampler(SPACE, popsize=8, seed=0)
    study = optuna.create_study(sampler=live, direction="maximize")
    _run(study, 3)
    trials = [study.ask(SPACE) for _ in range(8)]   # generation 3 asked ...
    for t in trials[:5]:                            # ... and killed after 5 results
        study.tell(t, _value(t.params))
    for t in trials[5:]:
        study.tell(t, state=TrialState.FAIL)        # what _repair_running may do
    resumed = BatchCmaEsSampler(SPACE, popsize=8, seed=0)
    resumed._start(study)
    assert resumed.generation == 4  # the repaired generation is complete (3 failed) and counts
    # Now one that really stayed short: 5 of 8 finished.
    study_b = optuna.create_study(sampler=BatchCmaEsSampler(SPACE, 8, seed=0), direction="maximize")
    _run(study_b, 3)
    trials = [study_b.ask(SPACE) for _ in range(8)]
    for t in trials[:5]:
        study_b.tell(t, _value(t.params))
    resumed_b = BatchCmaEsSampler(SPACE, popsize=8, seed=0)
    resumed_b._start(study_b)
    assert resumed_b.generation == 3
    # The resumed search goes on with a complete new generation, tagged apart from the short one.
    study_b.sampler = resumed_b
    _run(study_b, 2)
    assert resumed_b.generation == 5


def test_enqueued_trials_and_asks_beyond_the_population():
    sampler = BatchCmaEsSampler(SPACE, popsize=8, seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for k in range(3):
        study.enqueue_trial({f"x{i}": float(OPTIMUM[i]) * k / 3 for i in range(6)})
    # Batches of 10 with generations of 8: the 3 enqueued trials and 7 points, then the 8th
    # point of generation 0 and 9 more drawn before it was told (left out of it), then one
    # generation per batch with 2 extra points each.
    points = _run(study, 6, batch=10)
    assert len({tuple(p) for p in points}) == len(points)          # no point drawn twice
    assert all(ATTR not in t.system_attrs for t in study.trials[:3])  # enqueued: outside generations
    assert sampler.generation == 5
    resumed = BatchCmaEsSampler(SPACE, popsize=8, seed=0)
    resumed._start(study)
    assert np.array_equal(resumed._cma.mean, sampler._cma.mean)


def test_bad_spaces_are_refused():
    with pytest.raises(MolvaeError, match="continuous"):
        BatchCmaEsSampler({"n": optuna.distributions.IntDistribution(0, 3)}, popsize=4)
    with pytest.raises(MolvaeError, match="population"):
        BatchCmaEsSampler(SPACE, popsize=1)
