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

*Failures.* A molecule on which the objective raises, or returns no number (None, NaN, inf),
has failed (:meth:`molvae.scoring.Objective.score` retries a batch that raised one molecule
at a time): it is recorded with its ``error``, infeasible, told the infeasible score, and
never scored again, also not on resume. It counts against the budget: it was an oracle call
(PMO counts calls; a docking run spent its time on it), and hostile molecules must not make
a run endless. When the first :data:`~molvae.optimize.loop.FAILING_STOP` molecules all fail,
the objective itself is broken and the run stops with an error.

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
                      feasible, error (why the objective could not score it; empty when
                      it could), every component's <name>_raw and <name> column from the
                      objective's score table, trial (the Optuna trial number that first
                      decoded it), batch, worker, seconds (wall seconds into the run)
    top.csv           the 100 best molecules with RDKit properties (multi-objective: the
                      Pareto set first)
    summary.json      top-1/10/100, PMO AUCs, counts (n_feasible, n_failed, ...), wall time
                      and its split, stop reason, warnings (e.g. no feasible molecule found)
    curve.png         best and top-10 mean score against oracle calls
    study.journal     the Optuna study (a JournalStorage file, the default storage; load it with
                      optuna.load_study(study_name=<folder name>, storage=JournalStorage(
                      JournalFileBackend("study.journal"))), or open it in optuna-dashboard)
    search_space.npz  the search region, so a resumed run searches exactly the same box
    run.json          the settings a resumed run must share
    donor_rejects.csv with ``donors=``: the entries that could not be donors (row, smiles, reason)

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

*Where each part lives*::

    region.py     the search region: LatentPCA, fit_latent_pca, SearchSpace, pca_space, trust_region
    objective.py  the objective as the search sees it (one or several), and the hard filters
    ledger.py     the molecule ledger: MoleculeLog (molecules.csv, the dedup cache), claims, locks
    storage.py    the Optuna study's storage (journal file, RDB URL) and its background writer
    loop.py       the samplers (make_sampler), the ask -> decode -> score -> tell loop, stop rules
    adapt.py      model adaptation (AdaptConfig, weighted retraining between rounds, its run files)
    policy.py     molecules sampled from the adapted decoder at the best codes, beside each batch
    outputs.py    PMO scores (top_k_auc), the summary, top.csv, summary.json, curve.png
    run.py        optimize() and sample_prior_baseline(): settings, resume, worker processes

The names below are re-exported for ``from molvae.optimize import ...``; a module constant is
read where it is defined (set ``molvae.optimize.region.PCA_MOLECULES``, not a copy here).
"""

from .adapt import ADAPT_CHOICES, ADAPT_METHODS, DEFAULT_ADAPT, AdaptConfig
from .ledger import MOLECULES_FILE, MoleculeLog
from .loop import (DEFAULT_BATCH_SIZE, DEFAULT_MULTI_SAMPLER, DEFAULT_SAMPLER, FAILING_STOP, SAMPLERS,
                   STALL_BATCHES, make_sampler)
from .outputs import TOP_N, pareto_mask, plot_curve, running_top_mean, top_k_auc
from .region import (DEFAULT_BOUND, DEFAULT_COMPONENTS, DEFAULT_TRUST_RADIUS, PCA_MOLECULES, LatentPCA,
                     SearchSpace, fit_latent_pca, model_fingerprint, pca_space, trust_region)
from .run import DEFAULT_SIMILARITY, RUN_FORMAT, optimize, oversubscription_warning, sample_prior_baseline
from .storage import open_storage

__all__ = [
    "optimize", "sample_prior_baseline", "fit_latent_pca", "LatentPCA", "SearchSpace", "pca_space",
    "trust_region", "model_fingerprint", "make_sampler", "open_storage", "MoleculeLog", "top_k_auc",
    "running_top_mean", "pareto_mask", "plot_curve", "SAMPLERS", "DEFAULT_SAMPLER",
    "DEFAULT_MULTI_SAMPLER", "DEFAULT_BATCH_SIZE", "DEFAULT_COMPONENTS", "DEFAULT_BOUND",
    "DEFAULT_TRUST_RADIUS", "DEFAULT_SIMILARITY", "PCA_MOLECULES", "STALL_BATCHES", "TOP_N",
    "RUN_FORMAT", "MOLECULES_FILE", "FAILING_STOP", "oversubscription_warning", "AdaptConfig",
    "ADAPT_METHODS", "ADAPT_CHOICES", "DEFAULT_ADAPT",
]
