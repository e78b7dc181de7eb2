"""One optimization run: the public :func:`optimize` and :func:`sample_prior_baseline`.

Checks the settings, resumes a run folder (``run.json`` must match; the search region, the
ledger and the study are reloaded), starts the search in this process or in forked worker
processes that share the study and the ledger, and writes the outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import chem
from ..errors import MolvaeError
from .adapt import (ADDED_SETTINGS, AdaptConfig, Adapter, adapt_config, is_auto, read_donors,
                    search_with_adaptation, with_user_donors)
from .ledger import MOLECULES_FILE, MoleculeLog, open_ledger
from .loop import (DEFAULT_BATCH_SIZE, DEFAULT_MULTI_SAMPLER, DEFAULT_SAMPLER, MAX_BATCH_SIZE, _decode,
                   _OptunaProposer, _PriorProposer, _search, _Settings, _Stats, make_sampler)
from .objective import _log_columns, _resolve_objective, _Scorer, _with_filters
from .outputs import _json_safe, _summarize, _table, _write_outputs
from .region import (DEFAULT_BOUND, DEFAULT_COMPONENTS, DEFAULT_TRUST_RADIUS, SearchSpace, fit_latent_pca,
                     model_fingerprint, pca_space, trust_region)
from .storage import _Mirror, open_storage

log = logging.getLogger(__name__)

DEFAULT_SIMILARITY = 0.4
#: 2: molecules.csv has an ``error`` column (molecules the objective could not score).
RUN_FORMAT = 2
DONOR_REJECTS_FILE = "donor_rejects.csv"


def _read_start(start: str | os.PathLike | Sequence[str] | None) -> list[str]:
    if start is None:
        return []
    if isinstance(start, (str, os.PathLike)):
        p = Path(start)
        if isinstance(start, os.PathLike) or p.suffix.lower() in (".csv", ".tsv", ".smi", ".txt", ".gz") \
                or p.exists():
            from ..data import read_smiles

            return read_smiles(p)
        return [s for s in str(start).replace(",", " ").split() if s]
    return [str(s) for s in start]


def _resolve_donors(donors, adapting: AdaptConfig | None, seed: int) -> tuple[list[str] | None, list[dict]]:
    """The caller's donors, read and standardized (:func:`read_donors`), or ``(None, [])``."""
    if donors is None:
        return None, []
    if adapting is None or adapting.graph == 0:
        raise MolvaeError("donors feed the graph GA's crossovers, which only model adaptation runs: "
                          "use the default adapt (CMA-ES on one objective, no lead, one worker) or "
                          "adapt='retrain' with graph children")
    if isinstance(donors, str) and not donors.strip():
        raise MolvaeError("donors: empty; give SMILES or a file of them")
    raw = _read_start(donors)
    if not raw:
        raise MolvaeError(f"donors: no molecules in {donors if isinstance(donors, (str, os.PathLike)) else 'the list'}")
    kept, rejects = read_donors(raw, seed)
    source = f"donors {donors}" if isinstance(donors, os.PathLike) or (isinstance(donors, str) and Path(donors).exists()) \
        else "donors"
    if not kept:
        raise MolvaeError(f"{source}: none of the {len(raw):,} entries is a usable molecule, e.g. row "
                          f"{rejects[0]['row']}: {rejects[0]['reason']}")
    if rejects:
        log.warning("%s: %d entries left out (donor_rejects.csv), e.g. row %d: %s", source, len(rejects),
                    rejects[0]["row"], rejects[0]["reason"])
    return kept, rejects


def _digest(smiles: list[str]) -> dict:
    """What run.json records of a donor set, so a resume can tell it is the same one."""
    h = hashlib.sha256("\n".join(smiles).encode()).hexdigest()
    return {"molecules": len(smiles), "sha256": h[:16]}


def _check_run(out: Path, settings: dict[str, Any]) -> bool:
    """Write ``run.json`` on the first run; on a resume, check the settings match. Returns
    whether this is a resume."""
    path = out / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise MolvaeError(f"{path}: not valid JSON; the run folder is damaged") from None
        if isinstance(old.get("adapt"), dict):  # written before a setting existed: as it behaved then
            old["adapt"] = {**ADDED_SETTINGS, **old["adapt"]}
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


def _resumed_adapt(adapt, out: Path):
    """``adapt`` for a run in ``out``: a bare ``"auto"`` or ``"retrain"`` (what a command
    re-run after an upgrade says) resumes with the settings the run began with, so a change
    of defaults never strands a run; settings given explicitly are checked by _check_run."""
    bare = is_auto(adapt) or (isinstance(adapt, str) and adapt.strip().lower() == "retrain")
    try:
        old = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):  # no run yet; a damaged run.json is _check_run's error
        return adapt
    if not bare or not isinstance(old, dict):
        return adapt
    recorded = old.get("adapt")
    if recorded is None:
        return "none" if is_auto(adapt) else adapt  # begun unadapted (or before "auto" existed)
    if not isinstance(recorded, dict):
        return adapt
    try:
        config = AdaptConfig(**{**ADDED_SETTINGS, **recorded})
    except (TypeError, MolvaeError):  # unknown or bad keys: let _check_run name the difference
        return adapt
    if config != AdaptConfig(method=config.method, every=config.every, after_plateau=config.after_plateau):
        log.info("%s: resuming with the adaptation settings the run began with", out)
    return config


def _numeric(name: str, value, minimum: float | None = None, integer: bool = False,
             maximum: float | None = None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or (integer and int(value) != value):
        raise MolvaeError(f"{name} must be a{'n integer' if integer else ' number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise MolvaeError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise MolvaeError(f"{name} must be <= {maximum}, got {value!r}")
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
             progress: bool = True, adapt: str | AdaptConfig | None = None,
             adapt_every: int | None = None, adapt_after_plateau: int | None = None,
             donors: str | os.PathLike | Sequence[str] | None = None,
             allow_code: bool = False) -> pd.DataFrame:
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
        workers: worker processes sharing the study and the molecule log (needs ``out_dir``);
            more than the free CPU cores is warned about (:func:`oversubscription_warning`).
        time_limit, target, patience: stop after this many seconds (this call), once the best
            score reaches ``target``, or after ``patience`` oracle calls without a new best.
        duplicates: what a trial whose molecule was already scored is told: ``"penalize"``
            (the infeasible score: nothing new was found there, so the sampler moves on) or
            ``"cached"`` (the molecule's score). Either way it costs no budget.
        n_components, bound: the search box: first ``n_components`` principal axes of the
            encoded training set (default :data:`DEFAULT_COMPONENTS`, at most the latent
            dimension), ±``bound`` sd.
        adapt, adapt_every, adapt_after_plateau: ``"retrain"`` fine-tunes a copy of the
            model on the molecules scored so far every ``adapt_every`` calls, from the start
            (``adapt_after_plateau`` 0 or ``None``, the default of
            :attr:`AdaptConfig.after_plateau <molvae.optimize.adapt.AdaptConfig>`) or once the
            best has not improved for ``adapt_after_plateau`` oracle calls, and restarts the
            search around the best of them
            (:mod:`molvae.optimize.adapt`); ``"none"`` keeps the model. ``"auto"``
            (default, also ``None``) retrains where the PMO benchmark measured it: CMA-ES on
            one objective, without a lead, workers or a given storage. On resume, ``"auto"``
            and ``"retrain"`` continue with the settings the run began with (none, or the
            defaults of the molvae that began it). An
            :class:`~molvae.optimize.adapt.AdaptConfig`, or ``"retrain:lr=1e-3/molecules=768"``
            (:func:`~molvae.optimize.adapt.parse_adapt`), changes its settings.
        donors: SMILES (list, or a file: an in-house library, the model's own training set)
            that the graph GA's donor crossovers take their second parent from, instead of
            the bundled MOSES sample; never scored, so they cost no oracle calls. At most
            :data:`~molvae.optimize.adapt.DONORS` distinct ones, drawn by ``seed``; entries
            that are not usable molecules are left out, listed in ``donor_rejects.csv`` with
            the reason. Needs model adaptation with graph children (the default search); the
            donor share is the settings' ``donor``, or
            :data:`~molvae.optimize.adapt.USER_DONOR_SHARE` where that is 0. A resumed run
            must be given the same donors (``run.json`` records their count and digest).
        allow_code: let an objective file or dict run the ``module:function`` components it
            names (see :mod:`molvae.scoring`; a Python callable always runs).

    A molecule on which the objective raises, or returns no number (None, NaN, inf), has
    failed: it is recorded with its error (``molecules.csv`` column ``error``), infeasible,
    and never scored again, also not on resume. It counts against the budget: it was an
    oracle call (PMO counts calls, and a costly docking run spent its time on it), and a
    stream of failing molecules must not make a run endless. If the first
    :data:`~molvae.optimize.loop.FAILING_STOP` molecules all fail, the objective itself is
    broken: the run stops and raises after writing its outputs.

    Returns:
        The molecules table (columns as ``molecules.csv``; ``pareto`` for several
        objectives), best first; ``table.attrs["summary"]`` holds the summary.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = _numeric("budget", budget, 1, integer=True)
    batch_size = _numeric("batch_size", batch_size, 1, integer=True, maximum=MAX_BATCH_SIZE)
    workers = _numeric("workers", workers, 1, integer=True)
    warnings = [w for w in [oversubscription_warning(workers)] if w]
    for w in warnings:
        log.warning("warning: %s", w)
    seed = _numeric("seed", seed, 0, integer=True)
    time_limit = _numeric("time_limit", time_limit, 0)
    target = _numeric("target", target)
    patience = _numeric("patience", patience, 1, integer=True)
    bound = _numeric("bound", bound, 1e-6)
    trust_radius = _numeric("trust_radius", trust_radius, 1e-6)

    if n_components is None:
        n_components = min(DEFAULT_COMPONENTS, model.latent_dim)
    obj = _resolve_objective(objective, allow_code)
    from ..scoring import Component, MultiObjective, Transform

    multi = isinstance(obj, MultiObjective)
    sampler = (sampler or (DEFAULT_MULTI_SAMPLER if multi else DEFAULT_SAMPLER)).lower()
    make_sampler(sampler, seed, batch_size, multi)  # validate the name early
    if out_dir is not None:
        adapt = _resumed_adapt(adapt, Path(out_dir))
    adapting = adapt_config(adapt, adapt_every, sampler, multi, workers, adapt_after_plateau,
                            lead=lead is not None, shared=storage is not None)

    donor_smiles, donor_rejects = _resolve_donors(donors, adapting, seed)
    if donor_smiles is not None:
        adapting = with_user_donors(adapting)

    lead_std = None
    filters = []
    if lead is not None:
        lead_std, reason = chem.standardize(lead)
        if lead_std is None:
            raise MolvaeError(f"lead {chem.short(lead)}: {reason}")
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
    if workers > 1 and mp.current_process().daemon:
        raise MolvaeError(f"workers={workers} start processes, which this daemonic process (a "
                          "multiprocessing.Pool worker) may not: use workers=1 here, or run from a "
                          "concurrent.futures.ProcessPoolExecutor, whose workers may")
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
        **({"adapt": adapting.settings()} if adapting is not None else {}),
        "donors": _digest(donor_smiles) if donor_smiles is not None else None,
    }
    resumed = _check_run(out, run_settings) if out is not None else False
    if donor_rejects and out is not None:
        pd.DataFrame(donor_rejects, columns=["row", "smiles", "reason"]).to_csv(out / DONOR_REJECTS_FILE,
                                                                                index=False)

    # ---- the search region (reloaded on resume so the coordinates mean the same thing)
    space_file = out / "search_space.npz" if out is not None else None
    if space_file is not None and space_file.exists():
        space = SearchSpace.load(space_file)
    else:
        pca = fit_latent_pca(model)
        if lead_std is not None:
            mu, _, ok, reasons = model.try_encode([lead_std])
            if not ok[0]:
                raise MolvaeError(f"lead {chem.short(lead)} cannot be encoded by this model: {reasons[0]}")
            space = trust_region(pca, mu[0].detach().cpu().double().numpy(), n_components, trust_radius)
        else:
            space = pca_space(pca, n_components, bound)
        if space_file is not None:
            space.save(space_file)

    columns = _log_columns(scorer)
    persistent = open_storage(storage, out)
    name = study_name or (out.name if out is not None else "molvae")
    # An RDB storage holds the ledger too, shared by workers on any machines (ledger_db.py);
    # they must agree on what the study's coordinates and molecules mean.
    shared = {k: v for k, v in run_settings.items() if k not in ("seed", "sampler")}
    mlog = open_ledger(out / MOLECULES_FILE if out else None, columns, scorer.value_columns,
                       shared=workers > 1, storage=persistent, study=name, settings=shared)
    space = mlog.share_space(space)
    previous = len(mlog)
    if resumed:
        log.info("resuming %s: %d molecules already scored", out, previous)

    # ---- the study
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
    if workers == 1 and mlog.distributed:
        # Processes on other machines ask and tell this study too: work on it directly, as
        # one of its workers, with a CMA-ES stream of its own.
        if adapting is not None:
            raise MolvaeError("adapt: model adaptation runs in a single process, not among workers "
                              "sharing a database storage; use the default storage (a journal file)")
        for c in enqueue:
            shared_study.enqueue_trial(dict(zip(space.names, map(float, c))), skip_if_exists=True)
        index = mlog.worker_number(0)
        study = optuna.load_study(study_name=name, storage=persistent, sampler=make_sampler(
            sampler, _resume_seed(seed + 7919 * index, n_trials_before), batch_size, multi,
            space.distributions(), stream=index))
        try:
            stats, reason = _search(model, _OptunaProposer(study, space), scorer, mlog, settings, index,
                                    time_offset, started)
        finally:
            mlog.close()
    elif workers == 1:
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
            if adapting is None:
                stats, reason = _search(model, proposer, scorer, mlog, settings, 0, time_offset, started)
            else:  # rounds on an adapted copy of the model, each with a fresh sampler
                adapter = Adapter(model, adapting, out, seed, space.k, donors=donor_smiles)
                stats, reason = search_with_adaptation(
                    adapter, study, adapter.resume(space),
                    lambda region, rnd: make_sampler(sampler, eff_seed, batch_size, multi,
                                                     region.distributions(), stream=rnd),
                    scorer, mlog, settings, mirror, time_offset, started, first=space)
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
            "model": fp, **(adapter.info() if adapting is not None else {})}
    summary = _summarize(mlog, scorer, stats, wall, budget, reason, info)
    return _conclude(out, mlog, scorer, summary, warnings)


def _conclude(out: Path | None, mlog: MoleculeLog, scorer: _Scorer, summary: dict[str, Any],
              earlier_warnings: Sequence[str] = ()) -> pd.DataFrame:
    """Say what the scores hide (at the end, where it is read), write the outputs, and return
    the table (best first)."""
    for w in summary["warnings"]:
        log.warning("warning: %s", w)
    summary["warnings"] = [*earlier_warnings, *summary["warnings"]]
    table = _table(mlog, scorer)
    if out is not None:
        _write_outputs(out, table, summary, mlog)
    table.attrs["summary"] = summary
    if summary["stop_reason"] == "objective_failing":
        first = next((e for e in mlog.frame()["error"] if e), "")
        raise MolvaeError(f"the objective failed on every one of the first {len(mlog)} molecules "
                          f"(e.g. {first}); it looks broken rather than meeting odd molecules. Fix it "
                          f"and start a new run folder: this one records those molecules as failed "
                          f"and would not score them again")
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

    mine = mlog.orphans(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    running = [t for t in mine if all(n in t.params for n in space.names)]
    stale = [t for t in mine if not all(n in t.params for n in space.names)]

    def tell(number, *args, **kwargs):
        try:
            study.tell(number, *args, **kwargs)
        except ValueError as exc:  # finished meanwhile by another worker starting up with us
            if "Cannot tell a" not in str(exc):
                raise

    if running:
        smiles = _decode(model, space.to_latent(space.params_to_coords([t.params for t in running])))
        for t, s in zip(running, smiles):
            if s is None:
                tell(t.number, scorer.infeasible if scorer.multi else scorer.infeasible[0])
            elif s in mlog.index:
                v = mlog.values(s)
                tell(t.number, v if scorer.multi else v[0])
            else:
                tell(t.number, state=TrialState.FAIL)
    for t in stale:
        tell(t.number, state=TrialState.FAIL)
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


def oversubscription_warning(workers: int, cpus: int | None = None, load: float | None = None) -> str | None:
    """A warning when ``workers`` exceed the free CPU cores, else None.

    Free cores: the CPUs this process may use (``os.sched_getaffinity``) minus the 1-minute
    load average, rounded, at least 1. Each worker decodes on its own core; beyond the free
    ones they queue for the CPU: 2 workers on a busy 2-core machine ran 4.8x slower than one
    (400 molecules). The number asked for is kept: an objective that waits on another
    machine (docking on a cluster) uses no local core, and more workers then pay off.
    """
    if workers <= 1:
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            load = 0.0
    free = max(1, round(cpus - load))
    if workers <= free:
        return None
    return (f"{workers} workers but {free} free CPU core{'s' if free > 1 else ''} ({cpus} usable, load "
            f"{load:.1f}): workers beyond the free cores wait for the CPU and make the run slower, "
            f"not faster (2 workers on a busy 2-core machine: 4.8x slower than 1). Use "
            f"{free} worker{'s' if free > 1 else ''}, unless the objective waits on another machine")


def _worker_main(index: int, queue) -> None:
    import optuna
    import torch

    job = _WORKER_JOB
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(max(1, chem.default_workers() // job["workers"]))
    try:
        storage = open_storage(job["storage"], job["out"])
        mlog = open_ledger(job["out"] / MOLECULES_FILE, job["columns"], job["value_columns"], shared=True,
                           storage=storage, study=job["name"])
        stream = mlog.worker_number(index)
        seed = _resume_seed(job["seed"] + 7919 * stream, job["n_trials_before"])
        study = optuna.load_study(study_name=job["name"], storage=storage,
                                  sampler=make_sampler(job["sampler"], seed, job["settings"].batch_size,
                                                       job["multi"], job["space"].distributions(),
                                                       stream=stream))
        settings = job["settings"]
        settings = _Settings(settings.budget, settings.batch_size, settings.time_limit, settings.target,
                             settings.patience, settings.show_progress and index == 0, settings.duplicates)
        try:
            stats, reason = _search(job["model"], _OptunaProposer(study, job["space"]), job["scorer"], mlog,
                                    settings, stream, job["time_offset"], job["started"])
        finally:
            mlog.close()
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
    batch_size = _numeric("batch_size", batch_size, 1, integer=True, maximum=MAX_BATCH_SIZE)
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
    return _conclude(out, mlog, scorer, summary)
