"""Model adaptation: the search moves the model, not only the point.

CMA-ES in a fixed box converges, and the decoder it searches stays the one trained on MOSES.
With ``adapt="retrain"`` the search runs in rounds; between rounds the model learns from the
molecules scored so far (weighted retraining, Tripp et al. 2020) and the search region moves
to where the best of them now encode::

    round r:  CMA-ES (stream r) in region r ──► every ``every`` oracle calls (or a stall) ──┐
        ▲                                                                                   │
        │   region r+1: a trust region of ±``radius`` sd around the best molecule's code     │
        └── fine-tune on the ledger: molecules drawn with weight 1/(k·N + rank), ELBO ◄─────┘

*When it starts.* By default (``after_plateau=None``) the first adaptation comes after
``every`` calls, and the graph GA beside CMA-ES (below) does the early climbing. With
``after_plateau=N``, round 0 is the plain search on the shipped model, and it lasts until its
best has not improved for N oracle calls (or it stalls). That was the default while CMA-ES
searched alone: it climbs fastest on the unadapted decoder, and adapting from the start
restarted its climb every ``every`` calls (celecoxib 0.505). Beside the GA the plateau came
late (median call 3,056), and adapting from call 250 was ahead on every seed (below).

*When a round runs dry.* An adapted round whose sampler stalls (25 batches without a new
molecule) before it found any new molecule has a decoder, or a region, that collapsed onto
molecules already scored; the next round goes back to the shipped weights and the run's first
region (``"reset": true`` in the history) instead of ending the search with budget left. A
second dry round in a row ends it.

*Fine-tuning.* ``molecules`` draws (with replacement) from the ledger, each molecule weighted
by ``1 / (rank_k * N + rank)`` (rank 0 = the best of the N scored; ``rank_k`` = 1e-3 as in
Tripp et al.), one pass in batches of ``batch_size`` with AdamW at ``lr``: the
reconstruction loss of each molecule from a code drawn from its (fixed) posterior, or the
model's whole β-ELBO with ``decoder_only=False``. Only the decoder learns by default: the
encoder, hence the principal axes of the search region and every encoding, stays fixed, so
no PCA has to be re-fitted (re-fitting it on 2,000 encodings after a full fine-tune cost more
than the fine-tune itself on the 2-core CPU) and the encoder needs no backward pass.

*Run folder.* Each round writes ``adapt/round_NNN.safetensors`` (the adapted weights,
safetensors, no pickles) and ``adapt/round_NNN.npz`` (its search region), then
``adapt/state.json`` naming them with the oracle call at which they were made; each file is
written to a temporary name and renamed, and ``state.json`` last, so a kill at any moment
leaves the last complete round. A resumed run loads that round's weights and region and
restarts its CMA-ES from the trials of that round (``molvae:cma`` stream = the round), so it
continues as the killed run would have, and the ledger keeps every molecule scored once.

The caller's model is never changed: the adapted weights live in a copy.

*Measured* (shipped model, seeds 0-2, same run and seeds for both, AUC top-10 at 1,000
calls; the defaults below, a round every 250 calls; 2-core CPU under a load of ~10; each
run ``optimize(load_model(), task, budget=1000, seed=s, adapt=a)`` with ``task`` a preset or
``molvae.pmo.objective(name)``)::

    task                  CMA-ES          CMA-ES + retrain   wall s (of it adapting)
    celecoxib             0.370 ± 0.020   0.380 ± 0.023       75 -> 158 (72)
    penalized logP        3.17  ± 0.16    4.15  ± 0.43        77 -> 153 (67)
    osimertinib MPO       0.735 ± 0.016   0.742 ± 0.009       71 -> 134 (55)
    sitagliptin MPO       0.261 ± 0.032   0.305 ± 0.044       54 ->  92 (43)
    zaleplon MPO          0.413 ± 0.011   0.426 ± 0.005       51 -> 117 (54)

(These runs adapted from the start: ``after_plateau=None``.) Adaptation is ahead on every
task's mean: by far on penalized logP (+31 %, top-1 6.68 vs
4.50) and sitagliptin (+17 %), within about one sd of the seeds on the similarity tasks; the
four PMO tasks sum 1.779 -> 1.853 (+4 %), far from the +25 % that would make it the default,
at twice the wall time with a cheap oracle. At 10,000 calls (celecoxib, seed 0) it ends with
a better top-10 (0.555 vs 0.512) but a lower AUC (0.480 vs 0.491), in 1,932 s against
1,106 s (its 39 rounds took 1,071 s). So the default stays ``"none"``; with an expensive oracle
(docking) the fine-tune's cost (20-40 s a round here) hardly counts. A prototype that also
fine-tuned the encoder (and so re-fitted the PCA) and one that only re-centred the region
without fine-tuning were no better on celecoxib (1 seed: 0.386 and 0.368 vs 0.373 for the
decoder, 0.350 for CMA-ES), the former at twice the adaptation time.

*After the plateau* (the default since): PMO-20 at 10,000 calls, seeds 0-2, ``molvae bench
optimize --suite pmo --samplers cmaes,cmaes+retrain --seeds 3 --budgets 10000``.

    sum of 20 (mean ± sd)   CMA-ES 10.819 ± 0.149    CMA-ES + retrain 12.037 ± 0.166 (+11.3 %)    REINVENT 11.59
    wall s (20 runs, seed 2)  3,448                  7,062

It is ahead on 18 tasks, level on qed, and both score 0 on valsartan (table in
docs/benchmarks.md). The gain is short of the +25 % issue 11 asks of a new default, but the
issue has the default chosen by this table, so since 2026-12-03 ``adapt="auto"`` (the default)
retrains the search the table measured: CMA-ES on one objective, one worker, no lead.

*A graph GA beside CMA-ES from the start* (the default since 2026-12-04, ``graph=32``,
``graph_from_start``): each batch also holds up to 32 children of the 64 best, made by graph
crossover and mutation (:mod:`molvae.optimize.mutate`), from the first batch on. CMA-ES
proposes exactly the points it would alone; a child needs no decoding. PMO-20 sums, 3 seeds,
against 8 children from the first adaptation on (the default before; docs/benchmarks.md)::

    AUC top-10 at       2,500 calls     5,000 calls      10,000 calls     wall s (20 tasks, one seed)
    graph=8, late       9.878 ± 0.107   11.052 ± 0.264   12.600 ± 0.508   ~3,640
    graph=32, start     10.038 ± 0.106  11.281 ± 0.148   12.643 ± 0.313   ~2,330

Ahead early on every seed, level at 10,000 calls, in 0.64x the time.

*Adapting from call 250 beside the GA* (the default since 2026-12-04, fourth session,
``after_plateau=None``): the same, with the first adaptation, and the policy's samples, at
call 250 instead of at the plateau. PMO-20 sums, same seeds::

    AUC top-10 at       2,500 calls     5,000 calls      10,000 calls     wall s (20 tasks, one seed)
    after the plateau   10.038 ± 0.106  11.281 ± 0.148   12.643 ± 0.313   ~2,330
    from call 250       10.756 ± 0.292  12.092 ± 0.395   13.304 ± 0.449   ~3,790

+23.0 % over plain CMA-ES (10.819), ahead of the plateau default on every seed and 17 tasks;
valsartan 0.488 (two seeds of three find it). QED at 10,000 calls: 150 s against 138 s.

*Parents drawn by rank* (the default since 2026-12-04, fifth session, ``parent_k=0.01``):
the policy's and the GA's parents are drawn from the 64 best with weight 1 / (0.64 + rank)
instead of uniformly, as Genetic GFN's GA draws them, so the best few breed most. PMO-20
sums, same seeds::

    AUC top-10 at       2,500 calls     5,000 calls      10,000 calls     wall s (20 tasks, one seed)
    uniform parents     10.756 ± 0.292  12.092 ± 0.395   13.304 ± 0.449   ~3,790
    by rank             11.416 ± 0.416  12.496 ± 0.484   13.483 ± 0.399   ~3,310

+24.6 % over plain CMA-ES (10.819); ahead on every seed at 2,500 calls and, but for valsartan
(found later on seed 2), at 10,000; 15 tasks ahead, celecoxib behind on one seed in three.

*A Gaussian-process screen of the graph children* (the default since 2026-12-06,
``screen=4``): each batch makes 128 children and scores the 32 a GP on the ledger ranks
highest (:mod:`molvae.optimize.surrogate`). On the 19 PMO tasks without valsartan, seeds 0-2:
13.46 / 13.80 / 13.59 against 13.24 / 13.06 / 13.02 (+0.51 a seed, paired t 3.34).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ..errors import MolvaeError
from .ledger import MoleculeLog
from .loop import MAX_BATCH_SIZE, _OptunaProposer, _search, _Settings, _Stats
from .policy import PolicyProposer, no_signal
from .region import SearchSpace, fit_latent_pca, trust_region
from .storage import _Mirror
from .surrogate import TanimotoGP

log = logging.getLogger(__name__)

ADAPT_METHODS = ("none", "retrain")
#: ``"auto"``: retrain where the PMO table measured it (CMA-ES on one objective, one worker,
#: no lead), none elsewhere; ``adapt=`` also takes ``"auto"`` (see :func:`auto_adapts`).
DEFAULT_ADAPT = "auto"
ADAPT_CHOICES = ("auto",) + ADAPT_METHODS
ADAPT_DIR = "adapt"
STATE_FILE = "state.json"
STATE_VERSION = 1
#: Settings added to AdaptConfig after runs were recorded (benchmark runs files, run.json),
#: with the values that reproduce the runs made before them: a record without one of them
#: was made with this value.
ADDED_SETTINGS = {"policy": 0, "pool": 64, "temperature": 1.0, "policy_from_start": True,
                  "crossover": 0.0, "restart": True, "backoff": None, "graph": 0,
                  "graph_from_start": False, "parent_k": 0.0, "mutation": 0.5,
                  "ring_crossover": 0.0, "niche": 0, "jitter": 0.0, "screen": 1,
                  "policy_screen": 1, "gp_counts": False, "donor": 0.0, "donor_top": 0,
                  "gp_descriptors": False, "edits": 0, "flat_donors": False}
#: Settings that take a whole number of oracle calls or ``none`` (off).
CALL_SETTINGS = ("after_plateau", "backoff")
#: A round counts as progress when the running top-10 mean rose by more than this (relative
#: to its size, at least 1): QED's top-10 creeps up in the fourth decimal long after it is done.
PROGRESS_TOL = 1e-3
BACKOFF_DOUBLINGS = 3   # the gap between rounds grows to at most 2**3 = 8 times ``every``
MAX_JITTER = 10.0        # latent sd of the policy parents' noise: the prior's sd is 1
MAX_SCREEN = 64          # children made per child scored: more would make each batch crawl
MAX_MOLECULES = 100_000  # fine-tuning draws per round: more would stall every round for hours
DONORS = 4096            # training molecules the donor crossovers draw from (read in ~1 s)
#: The donor share a run takes when the caller gives its own donors and the settings leave
#: ``donor`` at 0: giving donors means wanting them used (the share measured in the sweep).
USER_DONOR_SHARE = 0.25


@dataclass
class AdaptConfig:
    """How the model adapts to the objective during a search (see the module docstring)."""

    method: str = "retrain"
    every: int = 250              # oracle calls between adaptations
    molecules: int = 256          # rank-weighted draws from the ledger per fine-tune
    lr: float = 3e-4              # 1e-3: level on the PMO-20 sum over 3 seeds (docs/benchmarks.md)
    batch_size: int = 32
    rank_k: float = 1e-3          # Tripp et al.'s k in 1 / (k N + rank)
    radius: float = 2.0           # half-width of the next region, sd of the encoded data
    decoder_only: bool = True
    # None (the default): the first adaptation comes after ``every`` calls. A number: the
    # unadapted search runs until its best has not improved for that many calls (or it
    # stalls), and adaptation starts there. With the graph GA beside CMA-ES the plateau comes
    # late, and adapting from call 250 summed 13.30 on the PMO-20 against 12.64 for 1000
    # (seeds 0-2, ahead on every seed and on 17 tasks; docs/benchmarks.md).
    after_plateau: int | None = None
    # Molecules per batch sampled from the adapted decoder at the codes of the ``pool`` best
    # so far, at ``temperature`` (molvae.optimize.policy; 0: the latent search alone), in
    # every round, or from the first adaptation on with policy_from_start=false. 16 from the
    # first adaptation: PMO-20 sums 12.02 / 12.51 / 12.17 on seeds 0-2 against 11.97 / 12.23 /
    # 11.91 without (+1.6 %); from the start it cut the climb short (docs/benchmarks.md).
    # temperature 1.3: +0.095 on the 19 PMO tasks without valsartan over seeds 0-5 (paired t
    # 1.25; thiothixene up, celecoxib and the hops down), under the rule that would have made
    # it the default (docs/benchmarks.md). 24 with a CMA-ES population of 8 (batch_size=8), the
    # batch's 64 calls kept: -0.063 / -0.376 on the 19 tasks, seeds 0-1 (docs/benchmarks.md).
    policy: int = 16
    pool: int = 64
    temperature: float = 1.0
    policy_from_start: bool = False
    # Share of the policy's parents replaced by a random point on the segment between two
    # of the pool (a latent crossover, as GAs recombine two good molecules).
    crossover: float = 0.0
    # The sd of the Gaussian noise added to each policy parent's code before it is decoded
    # (latent units; the shipped model's posterior sd on its informative axes is about 0.2):
    # near neighbours of a good molecule in latent space besides the decoder's own sampling
    # around it; 0.1 leaves 40 % of the samples unchanged against 44 % at 0 (512 MOSES
    # molecules, scripts/experiments/policy_novelty.py). On the 19 PMO tasks without valsartan,
    # seeds 0-1: -0.143 at 10,000 calls (docs/benchmarks.md). 0: the posterior means, as before.
    jitter: float = 0.0
    # Children per batch made from the pool by graph crossover and mutation
    # (molvae.optimize.mutate), in the rounds that have the policy's samples, and from the
    # first batch on with graph_from_start=true (a graph GA beside CMA-ES from the start).
    # 32 from the start: PMO-20 sums 12.32 / 12.95 / 12.66 on seeds 0-2 against 12.21 / 13.18 /
    # 12.41 for 8 from the first adaptation, +1.6 % at 2,500 calls, in 0.64x the wall time
    # (docs/benchmarks.md). 0: the policy and the latent search alone.
    graph: int = 32
    graph_from_start: bool = True
    # How the policy's parents and the graph children's parents are drawn from the pool:
    # 0 uniformly; k > 0 with weight 1 / (k * pool + rank), rank 0 the best (Tripp et al.'s
    # rank weighting, as Genetic GFN's GA selects its parents), so the best few breed most.
    # 0.01 (the best of 64 drawn 28 % of the time, the top 10 two thirds of the time): PMO-20
    # sums 13.48 against 13.30 for uniform parents (seeds 0-2, docs/benchmarks.md).
    parent_k: float = 0.01
    # The chance that a graph child is also mutated after its crossover (always when the
    # crossover fails): 0.5 since graph children began. 0.85: +0.10 on the 19 PMO tasks
    # without valsartan over seeds 0-6 (ahead on five, paired t 1.8), valsartan found on 5
    # seeds of 18 by both but later, level in expectation; with temperature=1.3 as well, -0.04
    # over seeds 0-2, below either alone (docs/benchmarks.md). With the screen (screen=4):
    # 0.85 with temperature=1.3 lost 0.547 a seed, and 0.25 lost 0.19 / 0.33 on seeds 0-1
    # (thiothixene -0.16 on both), so 0.5 stays.
    mutation: float = 0.5
    # The share of graph crossovers that cut a ring of each parent at two bonds and join the
    # parts by two bonds (molvae.optimize.mutate.ring_crossover; GB-GA makes half its
    # crossovers so); the rest cut an acyclic bond. 0: acyclic cuts only, as before. On the
    # PMO tasks (seed 0) 0.5 lost 0.21 on ten (new ring systems lose the rediscoveries' and
    # hops' fingerprint bits) and 0.15 was level on the 19 without valsartan (docs/benchmarks.md).
    ring_crossover: float = 0.0
    # At most this many of the pool share one generic Murcko framework (ring systems and
    # linkers, atoms and bonds made generic); the next best of other frameworks take their
    # places. 0: the pool is the plain top ``pool``. A search that converged on one framework
    # (celecoxib's seeds that end near 0.5) keeps breeding from the others too. niche=8 on
    # celecoxib, seeds 0-4: 0.666 against 0.676, rescuing weak seeds and costing strong ones
    # (docs/benchmarks.md), so it is off.
    niche: int = 0
    # false: CMA-ES keeps its state and region across adaptations (only the decoder under it
    # changes) and restarts around the best only when it stalls. Measured far worse (celecoxib
    # 0.494 vs 0.570, seed 0; docs/benchmarks.md): the converged search needs the fresh start.
    restart: bool = True
    # Once the running top-10 mean has not risen for ``backoff`` oracle calls, the gap
    # between rounds doubles for each further ``backoff`` calls without progress, up to 8x
    # ``every``; progress brings the gap back to ``every``. None: a round every ``every``.
    # A saturated task (QED) then stops paying for fine-tuning rounds that change nothing:
    # backoff=1000 kept QED's AUC at 0.67x the wall time, but cost the isomer tasks 0.02 on one
    # seed of two, where the top-10 still crept up (docs/benchmarks.md), so it is off.
    backoff: int | None = None
    # Graph children made for each one scored: with s > 1 the GA makes s times ``graph``
    # children and a Gaussian process on the ledger (Tanimoto kernel on Morgan bits, UCB)
    # keeps the ``graph`` it ranks highest (molvae.optimize.surrogate). 1: every child scored.
    # 4: +0.51 a seed on the 19 PMO tasks without valsartan, seeds 0-2 (13.46 / 13.80 / 13.59
    # against 13.24 / 13.06 / 13.02, paired t 3.34), at about 1.7x the wall time (docs/benchmarks.md).
    screen: int = 4
    # The same screen for the policy's samples: s > 1 decodes s times ``policy`` samples a
    # batch and keeps the ``policy`` new ones the GP ranks highest (the one fitted for the
    # graph children). Sampling at a good molecule's code gives it back unchanged about half
    # the time, so the kept ones are also new ones. 1: every sample kept, as before.
    # 4: -0.107 and -0.072 on the 19 PMO tasks without valsartan, seeds 0-1 (docs/benchmarks.md).
    policy_screen: int = 1
    # The screens' GP kernel: false, Tanimoto on Morgan bits; true, Tanimoto on Morgan counts
    # (MinMax), which sees how often a group occurs (rings, amides). Offline, on 128 children
    # of a search's best 64 scored by the oracle, the 32 the counts GP kept scored higher
    # than the 32 the bits GP kept: amlodipine 0.478 against 0.153 (a random 32: 0.251),
    # troglitazone 0.369 against 0.349 (scripts/experiments/screen_study.py, docs/benchmarks.md).
    # The search did not gain from it on seed 0 of the 19 PMO tasks without valsartan: -0.129.
    gp_counts: bool = False
    # The screens' GP kernel times an RBF on five descriptors (aromatic rings, rings, heavy
    # atoms, TPSA, logP; molvae.optimize.surrogate.DESCRIPTORS), so it can learn what the
    # bits cannot count. Offline (screen_study.py), the 32 of 128 children it kept scored
    # 0.52 on perindopril's MPO against the bits GP's 0.19 (random 0.26, the oracle's own
    # best 32 0.53), and no lower on troglitazone or median2. In the search it lost: -0.138
    # on the 19 PMO tasks without valsartan over seeds 0-1 (+0.090 / -0.367, paired t -0.61;
    # thiothixene -0.17 and -0.23), so it is off (docs/benchmarks.md).
    gp_descriptors: bool = False
    # The share of graph crossovers whose second parent is a training molecule rather than
    # one of the pool: DONORS molecules of the bundled MOSES sample, drawn by the run's seed,
    # never scored. They bring in groups (a tetrazole, a sulfonamide) that no molecule scored
    # so far has, as f-RAG's fragment vocabulary does, without spending oracle calls; with
    # ``screen`` the GP keeps the children worth scoring. 0: crossovers within the pool only.
    # 0.25: +0.001 on the 19 PMO tasks without valsartan over seeds 0-3 (+0.433 / -0.028 /
    # -0.065 / -0.337, paired t 0.01; troglitazone up and thiothixene down on every seed), so
    # it is off (docs/benchmarks.md).
    # ``optimize(donors=...)`` takes the donors from the caller's molecules instead, and sets
    # this to USER_DONOR_SHARE where it is 0.
    donor: float = 0.0
    # With ``donor`` > 0 and the GP screen on: each batch draws its donors from only the
    # ``donor_top`` whose GP mean is highest (the training molecules most like the best scored,
    # as f-RAG retrieves fragments of its best molecules). 0: from all DONORS.
    donor_top: int = 0
    # SELFIES token edits of the pool a batch (STONED's mutants: one token of a parent's
    # SELFIES replaced, inserted or deleted), made ``screen`` times over and screened by the GP
    # like the graph children, beside them. Offline (scripts/experiments/operator_study.py) the
    # GP's 32 of 128 edits beat the ledger's 10th best more often than its 32 of 128 graph
    # children on the MPOs (amlodipine 3.8 against 1.8, sitagliptin 4.6 against 2.6), less
    # often on median2, celecoxib and troglitazone. In the search, 16 a batch: +0.302 and
    # -0.431 on the 19 PMO tasks without valsartan, seeds 0-1 (paired t -0.18; thiothixene
    # -0.18 and -0.22, sitagliptin +0.05 and +0.08; docs/benchmarks.md). 0: none.
    edits: int = 0
    # While every score so far is equal (a gated objective: valsartan's SMARTS scores 0 until
    # its pattern appears), the GA breeds a fresh random ``pool`` of the donors each batch
    # instead of the first molecules scored, takes the policy's share of the batch too, and
    # the rounds neither fine-tune nor move the region (equal scores teach nothing). Once
    # scores differ, the search is the default's (an objective that tells molecules apart
    # runs exactly as without it). Valsartan SMARTS, seeds 0-29: found on 16 against the
    # default's 6, AUC 0.256 against 0.116 (+0.141, paired t 1.69); on the fresh seeds 14-29
    # alone +0.112, t 1.08, short of the t 2 set for a default (docs/benchmarks.md). The one
    # to turn on for a gated objective. False: the first ``pool`` molecules scored breed.
    flat_donors: bool = False

    def __post_init__(self):
        if self.method not in ADAPT_METHODS:
            raise MolvaeError(f"adapt must be one of {', '.join(ADAPT_METHODS)}, got {self.method!r}")
        for name in ("every", "molecules", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MolvaeError(f"adapt {name} must be a positive integer, got {v!r}")
        for name, most in (("molecules", MAX_MOLECULES), ("batch_size", MAX_BATCH_SIZE)):
            if getattr(self, name) > most:
                raise MolvaeError(f"adapt {name} must be at most {most:,}, got {getattr(self, name):,}")
        if isinstance(self.policy, bool) or not isinstance(self.policy, int) or not 0 <= self.policy <= MAX_BATCH_SIZE:
            raise MolvaeError(f"adapt policy must be a whole number from 0 to {MAX_BATCH_SIZE:,}, got {self.policy!r}")
        for name in ("graph", "edits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_BATCH_SIZE:
                raise MolvaeError(f"adapt {name} must be a whole number from 0 to {MAX_BATCH_SIZE:,}, got {v!r}")
        if isinstance(self.screen, bool) or not isinstance(self.screen, int) or not 1 <= self.screen <= MAX_SCREEN:
            raise MolvaeError(f"adapt screen must be a whole number from 1 (off) to {MAX_SCREEN}, got {self.screen!r}")
        if isinstance(self.policy_screen, bool) or not isinstance(self.policy_screen, int) \
                or not 1 <= self.policy_screen <= MAX_SCREEN:
            raise MolvaeError(f"adapt policy_screen must be a whole number from 1 (off) to {MAX_SCREEN}, "
                              f"got {self.policy_screen!r}")
        for name in ("decoder_only", "policy_from_start", "graph_from_start", "restart", "gp_counts",
                     "gp_descriptors", "flat_donors"):
            if not isinstance(getattr(self, name), bool):
                raise MolvaeError(f"adapt {name} must be true or false, got {getattr(self, name)!r}")
        if self.flat_donors and self.graph == 0:
            raise MolvaeError("adapt flat_donors breeds the graph GA's children: it needs graph > 0")
        if isinstance(self.niche, bool) or not isinstance(self.niche, int) or not 0 <= self.niche <= MAX_MOLECULES:
            raise MolvaeError(f"adapt niche must be a whole number from 0 (off) to {MAX_MOLECULES:,}, got {self.niche!r}")
        if isinstance(self.donor_top, bool) or not isinstance(self.donor_top, int) or not 0 <= self.donor_top <= DONORS:
            raise MolvaeError(f"adapt donor_top must be a whole number from 0 (all) to {DONORS:,}, got {self.donor_top!r}")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or not 1 <= self.pool <= MAX_MOLECULES:
            raise MolvaeError(f"adapt pool must be a whole number from 1 to {MAX_MOLECULES:,}, got {self.pool!r}")
        from ..model import MAX_TEMPERATURE, MIN_TEMPERATURE

        v = self.temperature
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not MIN_TEMPERATURE <= v <= MAX_TEMPERATURE:
            raise MolvaeError(f"adapt temperature must be a number from {MIN_TEMPERATURE:g} to "
                              f"{MAX_TEMPERATURE:g}, got {v!r}")
        v = self.crossover
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise MolvaeError(f"adapt crossover must be a number from 0 to 1, got {v!r}")
        for name in ("mutation", "ring_crossover", "donor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise MolvaeError(f"adapt {name} must be a number from 0 to 1, got {v!r}")
        v = self.jitter
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_JITTER:
            raise MolvaeError(f"adapt jitter must be a number from 0 to {MAX_JITTER:g} (latent units), got {v!r}")
        v = self.parent_k
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise MolvaeError(f"adapt parent_k must be a number >= 0 (0: uniform), got {v!r}")
        for name in CALL_SETTINGS:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise MolvaeError(f"adapt {name} must be a positive integer or None, got {v!r}")
        for name in ("lr", "rank_k", "radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise MolvaeError(f"adapt {name} must be a positive number, got {v!r}")

    def settings(self) -> dict[str, Any]:
        """What run.json records: a resumed run must adapt the same way."""
        return dataclasses.asdict(self)


def parse_adapt(spec: str) -> str | AdaptConfig:
    """``"retrain"`` or ``"none"`` as given; ``"retrain:lr=1e-3/molecules=768"`` -> an
    :class:`AdaptConfig` with those settings changed from the defaults.

    One spelling for the API's ``adapt=``, ``molvae optimize --adapt`` and a benchmark
    method (``cmaes+retrain:lr=1e-3``), so a candidate setting is measured by name. Values
    are parsed as the setting's type (``none`` for ``after_plateau``, ``true``/``false`` for
    ``decoder_only``); nothing is evaluated.
    """
    method, sep, rest = str(spec).partition(":")
    method = method.strip().lower()
    if method not in ADAPT_CHOICES:
        raise MolvaeError(f"adapt must be one of {', '.join(ADAPT_CHOICES)}, optionally "
                          f"retrain:KEY=VALUE/KEY=VALUE, got {_short(spec)!r}")
    if not sep:
        return method
    if method != "retrain":
        raise MolvaeError(f"adapt {method!r} takes no settings; settings go with retrain:KEY=VALUE")
    fields = {f.name: f for f in dataclasses.fields(AdaptConfig) if f.name != "method"}
    changes: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in rest.split("/"))):
        key, eq, value = (x.strip() for x in item.partition("="))
        if key not in fields:
            raise MolvaeError(f"unknown adapt setting {_short(key)!r}; valid: {', '.join(fields)}")
        if not eq or not value:
            raise MolvaeError(f"adapt setting {key!r} needs a value ({key}=VALUE)")
        if key in changes:
            raise MolvaeError(f"adapt setting {key!r} is given twice")
        changes[key] = _setting_value(key, fields[key].default, value)
    return AdaptConfig(method=method, **changes)


def _short(text: str, most: int = 40) -> str:
    text = str(text)
    return text if len(text) <= most else text[:most] + "..."


def _setting_value(key: str, default: Any, value: str) -> Any:
    """``value`` as the type of the setting's default (every setting is a number or a flag)."""
    low = value.lower()
    if isinstance(default, bool):
        if low not in ("true", "false"):
            raise MolvaeError(f"adapt setting {key} must be true or false, got {_short(value)!r}")
        return low == "true"
    if key in CALL_SETTINGS and low == "none":
        return None
    if isinstance(default, int) or key in CALL_SETTINGS:
        try:
            return int(value)
        except ValueError:
            raise MolvaeError(f"adapt setting {key} must be a whole number, got {_short(value)!r}") from None
    try:
        return float(value)
    except ValueError:
        raise MolvaeError(f"adapt setting {key} must be a number, got {_short(value)!r}") from None


def rank_weights(scores: np.ndarray, k: float) -> np.ndarray:
    """Tripp et al.'s weights ``1 / (k N + rank)``, rank 0 for the best score."""
    s = np.asarray(scores, dtype=float)
    s = np.where(np.isfinite(s), s, -np.inf)
    order = np.argsort(-s, kind="stable")
    rank = np.empty(len(s))
    rank[order] = np.arange(len(s))
    return 1.0 / (k * len(s) + rank)


def finetune(model, smiles: list[str], scores: np.ndarray, config: AdaptConfig, seed: int,
             encoded: dict[str, list[int] | None] | None = None, bf16: bool = False) -> dict[str, float]:
    """Fine-tune ``model`` (a MolVAE, in place) on rank-weighted draws from scored molecules;
    returns the mean loss and the molecules per second.

    ``bf16``: mixed precision (:meth:`~molvae.model.SequenceVAE.bf16_rnns`; fp32 weights and
    optimizer), what a search does where the model decodes in bf16 (``MolVAE.finetune_bf16``).

    ``encoded`` (SMILES -> token ids, ``None`` where it does not fit the vocabulary) is filled
    and reused: a search's ledger only grows, and SELFIES-encoding all of it again each round
    made a late round (8,250 molecules) 1.6-1.7x slower: 4.4-5.3 s against 2.7-3.1 s with
    the cache on an idle 2-core AMD EPYC.
    """
    import torch

    module, vocab = model.module, model.vocab
    encoded = {} if encoded is None else encoded
    ids, keep = [], []
    for i, s in enumerate(smiles):
        if s not in encoded:         # a decoded molecule can still fail (length, new token)
            encoded[s] = vocab.try_encode(s)[0]
        x = encoded[s]
        if x is not None:
            ids.append(x)
            keep.append(i)
    if not ids:
        return {"loss": float("nan"), "molecules_per_s": 0.0}
    w = rank_weights(np.asarray(scores, dtype=float)[keep], config.rank_k)
    trained = [p for n, p in module.named_parameters()
               if not config.decoder_only or n.split(".")[0] in ("latent_to_hidden", "decoder", "output")]
    frozen = [p for p in module.parameters() if all(p is not q for q in trained)]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.0)
    losses = []
    t = time.perf_counter()
    module.train()
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[]), module.bf16_rnns(bf16):
            torch.manual_seed(seed)
            pick = torch.multinomial(torch.as_tensor(w), config.molecules, replacement=True)
            # Only the drawn rows become a tensor: a late round's ledger holds ~10,000.
            data = vocab.to_tensor([ids[j] for j in pick.tolist()])
            for i in range(0, len(pick), config.batch_size):
                batch = data[i:i + config.batch_size]
                width = int((batch != vocab.pad_id).sum(1).max())
                batch = batch[:, :max(width, 2)].to(module.device)
                if config.decoder_only:
                    loss = _decoder_loss(module, batch)
                else:
                    logits, mu, logvar = module(batch)
                    loss = module.loss_terms(batch, logits, mu, logvar, step=10**9)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 10.0)
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        for p in frozen:
            p.requires_grad_(True)
        module.eval()
    dt = time.perf_counter() - t
    return {"loss": float(np.mean(losses)), "molecules_per_s": config.molecules / dt if dt > 0 else float("nan")}


def _decoder_loss(module, ids):
    """The reconstruction term with the encoder fixed: codes from the frozen posterior, word
    dropout as in training (the KL term has no gradient in the decoder)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        mu, logvar = module.encode(ids)
        z = module.reparameterize(mu, logvar)
    inputs = ids[:, :-1]
    if module.config.word_dropout > 0:
        drop = torch.rand(inputs.shape, device=inputs.device) < module.config.word_dropout
        drop[:, 0] = False
        inputs = inputs.masked_fill(drop, module.pad_id)
    logits = module.decode_logits(z, inputs)
    ce = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], ignore_index=module.pad_id,
                         reduction="none")
    return ce.sum(1).mean()


def benchmark_finetuning(model, smiles: list[str], scores: np.ndarray, molecules: int = 256,
                         repeats: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """One adaptation round's fine-tuning (``molecules`` rank-weighted draws, the search's
    settings otherwise) timed in fp32 and in mixed bf16 on copies of ``model``, same draws,
    alternating, the fastest of ``repeats`` counting. Each row: molecules per second, the
    training loss, and the reconstruction NLL (fp32, nats per molecule) of the 32 best
    molecules before and after the round: what the round taught, in either precision.
    ``bf16_speedup`` (on the bf16 row) is fp32's time over bf16's, both measured here."""
    import torch


    if isinstance(molecules, bool) or not isinstance(molecules, (int, np.integer)) or not 1 <= molecules <= MAX_MOLECULES:
        raise MolvaeError(f"molecules (--molecules) must be a whole number from 1 to {MAX_MOLECULES:,}, got {molecules!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or not 1 <= repeats <= 100:
        raise MolvaeError(f"repeats (--repeats) must be a whole number from 1 to 100, got {repeats!r}")
    scores = np.asarray(scores, dtype=float)
    encoded = {s: model.vocab.try_encode(s)[0] for s in smiles}
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    best = [encoded[smiles[i]] for i in order if encoded[smiles[i]] is not None][:32]
    if not best:
        raise MolvaeError("benchmark_finetuning: none of the molecules fits the model's vocabulary and length")
    best_ids = model.vocab.to_tensor(best).to(model.module.device)

    def nll(m) -> float:
        with torch.no_grad():
            module = m.module.eval()
            mu, _ = module.encode(best_ids)
            logits = module.decode_logits(mu, best_ids[:, :-1])
            ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), best_ids[:, 1:],
                                                   ignore_index=module.pad_id, reduction="none")
            return float(ce.sum(1).mean())

    config = AdaptConfig(molecules=int(molecules))
    before = nll(model)
    rows = {}
    for _ in range(int(repeats)):
        for bf16 in (False, True):
            m = _copy_model(model)
            fit = finetune(m, smiles, scores, config, seed=seed, encoded=encoded, bf16=bf16)
            row = rows.setdefault(bf16, {"precision": "bf16" if bf16 else "fp32", "molecules": int(molecules),
                                         "molecules_per_s": 0.0})
            if fit["molecules_per_s"] > row["molecules_per_s"]:
                row.update(molecules_per_s=round(fit["molecules_per_s"], 1), loss=round(fit["loss"], 3),
                           nll_best_before=round(before, 3), nll_best_after=round(nll(m), 3))
    rows[True]["bf16_speedup"] = round(rows[True]["molecules_per_s"] / rows[False]["molecules_per_s"], 2)
    return [rows[False], rows[True]]


class Adapter:
    """The adapted model (a copy of the caller's), its current search region and round, and
    their files in the run folder (``out=None``: memory only)."""

    def __init__(self, model, config: AdaptConfig, out: Path | None, seed: int, n_components: int,
                 donors: list[str] | None = None):
        self.config = config
        self.model = _copy_model(model)
        self.base_model = model
        self.dir = out / ADAPT_DIR if out is not None else None
        self.seed = seed
        self.n_components = n_components
        self.round = 0
        self.stream = 0                # the round whose region and CMA-ES the search is in
        self.calls: list[int] = []     # the oracle call of each round's adaptation
        self.history: list[dict] = []
        self._pca = None
        self._encoded: dict[str, list[int] | None] = {}  # the ledger's token ids, for finetune
        self._codes: dict[str, np.ndarray | None] = {}    # posterior means, for the policy's parents
        self._frameworks: dict[str, str] = {}              # generic Murcko frameworks, for niche
        self._surrogate = TanimotoGP(counts=config.gp_counts, descriptors=config.gp_descriptors)  # cached all run
        # The caller's own (read_donors), else the bundled MOSES sample; read when first bred
        # from, as most runs never are (no donor share, and scores that differ from the start).
        if config.donor > 0 or config.flat_donors:
            if donors is not None:
                from .mutate import donor_parents

                self._donors: Any = LazyDonors(lambda: donor_parents(donors))
            else:
                self._donors = LazyDonors(lambda: donor_set(seed))
        else:
            self._donors = []
        self._progress = TopProgress()

    def proposer(self, inner, mlog: MoleculeLog):
        """The round's proposer: ``inner`` (the latent sampler), with the policy's samples
        beside it when the settings ask for them in this round."""
        c = self.config
        early = self.round == 0
        policy = c.policy if not early or c.policy_from_start else 0
        graph = c.graph if not early or c.policy_from_start or c.graph_from_start else 0
        edits = c.edits if not early or c.policy_from_start or c.graph_from_start else 0
        if policy == 0 and graph == 0 and edits == 0:
            return inner
        return PolicyProposer(inner, self.model, mlog, policy, c.pool, c.temperature, self.seed,
                              self.round, self._codes, c.crossover, graph, self._encoded, c.parent_k,
                              c.mutation, c.ring_crossover, c.niche, self._frameworks, c.jitter,
                              c.screen, self._surrogate if c.screen > 1 or c.policy_screen > 1 else None,
                              c.policy_screen, self._donors, c.donor, c.donor_top, edits, c.flat_donors)

    # ---------------------------------------------------------------- files

    def resume(self, space: SearchSpace) -> SearchSpace:
        """Load the last complete round from the run folder, if any; returns its region (or
        ``space``, round 0's)."""
        if self.dir is None or not (self.dir / STATE_FILE).exists():
            return space
        f = self.dir / STATE_FILE
        try:
            state = json.loads(f.read_text())
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}, expected {STATE_VERSION}")
            rnd, calls = int(state["round"]), [int(c) for c in state["oracle_calls"]]
            weights, region = self.dir / str(state["weights"]), self.dir / str(state["space"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MolvaeError(f"{f}: unreadable adaptation state ({exc}); delete {self.dir} to "
                              "restart adaptation from the shipped model, or use a new output folder") from None
        _load_weights(self.model, weights)
        self.round, self.calls = rnd, calls
        self.stream = int(state.get("stream", rnd))  # runs from before restart=false restarted every round
        self.history = list(state.get("history", []))
        log.info("resuming adaptation round %d (made at oracle call %d)", rnd, calls[-1] if calls else 0)
        return SearchSpace.load(region)

    def _save(self, space: SearchSpace) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"round_{self.round:03d}"
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.module.state_dict().items()}
        tmp = self.dir / f"{stem}.safetensors.tmp"
        save_file(state, str(tmp), metadata={"round": str(self.round), "oracle_call": str(self.calls[-1])})
        _fsync(tmp)
        os.replace(tmp, self.dir / f"{stem}.safetensors")
        space.save(self.dir / f"{stem}.npz")
        doc = {"version": STATE_VERSION, "round": self.round, "oracle_calls": self.calls,
               "weights": f"{stem}.safetensors", "space": f"{stem}.npz", "history": self.history,
               "stream": self.stream}
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        _fsync(tmp)
        os.replace(tmp, self.dir / STATE_FILE)
        for old in self.dir.glob("round_*"):  # earlier rounds are no longer needed
            if not old.name.startswith(stem):
                old.unlink(missing_ok=True)

    # ---------------------------------------------------------------- one adaptation

    def next_call(self, budget: int, scores: list[float] | None = None) -> int:
        """The oracle call at which the next adaptation is due (with ``after_plateau``, the
        first one is due at the plateau: the budget bounds round 0). With ``backoff``, the gap
        follows the progress in ``scores`` (oracle order) up to the last round, which the
        ledger holds after a resume too, so a resumed run spaces its rounds as the killed one."""
        if not self.calls and self.config.after_plateau is not None:
            return budget
        last = self.calls[-1] if self.calls else 0
        return min(budget, last + self.gap(scores, last))

    def gap(self, scores: list[float] | None, last: int) -> int:
        """Oracle calls from the round at call ``last`` to the next (see ``backoff``)."""
        every, backoff = self.config.every, self.config.backoff
        if backoff is None or not scores or last == 0:
            return every
        stale = last - self._progress.last_gain(scores, last)
        return every * 2 ** min(BACKOFF_DOUBLINGS, stale // backoff)

    def adapt(self, mlog: MoleculeLog, space: SearchSpace, restart: bool = True,
              stalled: bool = False) -> SearchSpace:
        """Fine-tune on the ledger, move the region to the best molecule (``restart``), save;
        returns the new region (``space``, the current one, when it stays or no scored
        molecule can be encoded). ``stalled``: the round ended early, its sampler stalled
        (recorded in the history, which says why a round came before its time)."""
        t = time.perf_counter()
        df = mlog.frame()
        smiles = df["smiles"].tolist()
        scores = np.asarray(mlog.scores, dtype=float)
        self.round += 1
        self.calls.append(len(mlog))
        bf16 = bool(getattr(self.model, "finetune_bf16", False))
        flat = self.config.flat_donors and no_signal(scores)
        if flat:
            # Rank weights over equal scores would teach the decoder the first molecules
            # scored, and the region would close on the first of them: nothing to learn yet.
            fit = {"loss": float("nan"), "molecules_per_s": 0.0}
        else:
            fit = finetune(self.model, smiles, scores, self.config, seed=_round_seed(self.seed, self.round),
                           encoded=self._encoded, bf16=bf16)
        if not self.config.decoder_only:
            self._codes.clear()  # the encoder learned too: the policy's parents encode anew
        if restart:
            if not flat:
                space = self._region(smiles, scores, space)
            self.stream = self.round
        self.history.append({"round": self.round, "oracle_call": len(mlog),
                             "loss": fit["loss"] if math.isfinite(fit["loss"]) else None,
                             "molecules_per_s": round(fit["molecules_per_s"], 1),
                             "seconds": round(time.perf_counter() - t, 2),
                             **({"bf16": True} if bf16 and not flat else {}),
                             **({"flat": True} if flat else {}),
                             **({"after_stall": True} if stalled else {})})
        if self.dir is not None:
            self._save(space)
        if flat:
            log.info("adaptation round %d at oracle call %d: every score so far is equal, weights and "
                     "region unchanged", self.round, len(mlog))
        elif math.isfinite(fit["loss"]):
            log.info("adaptation round %d at oracle call %d: loss %.2f, %.0f mol/s, %.1f s", self.round,
                     len(mlog), fit["loss"], fit["molecules_per_s"], time.perf_counter() - t)
        else:
            log.info("adaptation round %d at oracle call %d: no scored molecule fits the model's "
                     "vocabulary and length, weights unchanged", self.round, len(mlog))
        return space

    def reset(self, mlog: MoleculeLog, space: SearchSpace) -> SearchSpace:
        """A round of its own back on the shipped weights and ``space`` (the run's first
        region), after an adapted round stalled without a new molecule: the fine-tuned decoder
        (or its narrow region) had collapsed onto molecules already scored. Saved like an
        adaptation, so a resumed run continues from it; returns ``space``."""
        self.model.module.load_state_dict(self.base_model.module.state_dict())
        self._codes.clear()  # the encoder may have learned (decoder_only=False)
        self.round += 1
        self.stream = self.round
        self.calls.append(len(mlog))
        self.history.append({"round": self.round, "oracle_call": len(mlog), "reset": True})
        if self.dir is not None:
            self._save(space)
        log.warning("adaptation round %d found no new molecule; round %d searches the shipped model's "
                    "region again from oracle call %d", self.round - 1, self.round, len(mlog))
        return space

    @property
    def was_reset(self) -> bool:
        """Whether the current round is a :meth:`reset` (a second stall then ends the search)."""
        return bool(self.history) and bool(self.history[-1].get("reset"))

    def _region(self, smiles: list[str], scores: np.ndarray, space: SearchSpace) -> SearchSpace:
        if self._pca is None:
            # The encoder is unchanged with decoder_only, so the base model's (cached) axes hold.
            self._pca = fit_latent_pca(self.base_model if self.config.decoder_only else self.model)
        order = [i for i in np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")]
        for start in range(0, len(order), 16):
            chunk = [smiles[i] for i in order[start:start + 16]]
            mu, _, ok, _ = self.model.try_encode(chunk)
            if any(ok):
                center = mu[0].detach().cpu().double().numpy()
                return trust_region(self._pca, center, self.n_components, self.config.radius)
        return space

    def info(self) -> dict[str, Any]:
        return {"adapt": self.config.method, "adapt_rounds": self.round, "adapt_oracle_calls": list(self.calls),
                "adapt_resets": sum(1 for h in self.history if h.get("reset"))}


class TopProgress:
    """The oracle call at which the running top-``k`` mean last rose by more than
    :data:`PROGRESS_TOL` (relative, at least 1) above its value at the previous such call
    (or the top-``k`` gained a member), read incrementally: the ledger only grows."""

    def __init__(self, k: int = 10):
        self.k = k
        self._top: list[float] = []   # a min-heap of the k best so far
        self._seen = 0
        self._anchor = -math.inf
        self._gain = 0

    def last_gain(self, scores: list[float], upto: int) -> int:
        import heapq

        upto = min(upto, len(scores))
        if upto < self._seen:  # another ledger (not expected): start over
            self.__init__(self.k)
        for i in range(self._seen, upto):
            v = float(scores[i])
            if not math.isfinite(v):
                continue
            filling = len(self._top) < self.k
            if filling:
                heapq.heappush(self._top, v)
            elif v > self._top[0]:
                heapq.heapreplace(self._top, v)
            else:
                continue
            mean = sum(self._top) / len(self._top)
            # Until there are k scores, each one fills the top-k: that is progress too.
            if filling or mean > self._anchor + PROGRESS_TOL * max(1.0, abs(self._anchor)):
                self._anchor, self._gain = mean, i + 1
        self._seen = max(self._seen, upto)
        return self._gain


class LazyDonors(Sequence):
    """A donor set (:func:`molvae.optimize.mutate.donor_parents`) read on first use: reading
    the bundled 4,096 takes about a second, which a run that never breeds a donor should not
    pay. Callers test ``donor > 0`` or a flat ledger before its length, which reads it."""

    def __init__(self, load: Callable[[], list]):
        self._load: Callable[[], list] | None = load
        self._items: list = []

    def _read(self) -> list:
        if self._load is not None:
            self._items, self._load = self._load(), None
        return self._items

    @property
    def read(self) -> bool:
        """Whether the donors have been read."""
        return self._load is None

    def __len__(self) -> int:
        return len(self._read())

    def __getitem__(self, i):
        return self._read()[i]


def donor_set(seed: int, n: int = DONORS) -> list:
    """``n`` molecules of the bundled MOSES training sample, drawn by ``seed``, read for the
    graph GA's donor crossovers (:func:`molvae.optimize.mutate.donor_parents`)."""
    from ..data import bundled
    from .mutate import donor_parents

    smiles = bundled("train")
    rng = np.random.default_rng([seed, 5])
    pick = rng.choice(len(smiles), size=min(n, len(smiles)), replace=False)
    return donor_parents([smiles[i] for i in sorted(pick)])


def with_user_donors(config: AdaptConfig) -> AdaptConfig:
    """The settings a search given its own donors runs with: ``donor`` as set, or
    :data:`USER_DONOR_SHARE` where the settings leave it at 0."""
    return config if config.donor > 0 else dataclasses.replace(config, donor=USER_DONOR_SHARE)


def read_donors(smiles: list[str], seed: int, n: int = DONORS) -> tuple[list[str], list[dict]]:
    """A caller's donor molecules (their own library, a model's training set) for the donor
    crossovers: at most ``n`` distinct entries drawn by ``seed`` (so a library of millions
    costs what the bundled set does), each standardized as training data is.

    Returns ``(donors, rejects)``: the canonical SMILES kept, in input order, and one
    ``{"row", "smiles", "reason"}`` per drawn entry that cannot be one (``row`` is 1-based:
    the line below a file's header, or the position in a list)."""
    from .. import chem
    from .mutate import MAX_PARENT_ATOMS

    first: dict[str, int] = {}
    for i, s in enumerate(smiles):
        first.setdefault(str(s).strip(), i)
    rows = sorted(first.values())
    if len(rows) > n:
        rng = np.random.default_rng([seed, 6])
        rows = sorted(rng.choice(rows, size=n, replace=False).tolist())
    kept, rejects, seen = [], [], set()
    for i in rows:
        std, reason = chem.standardize(smiles[i])
        if std is not None:
            atoms = chem.to_mol(std).GetNumAtoms()
            if atoms > MAX_PARENT_ATOMS:
                std, reason = None, f"too large to cut into fragments: {atoms} heavy atoms > {MAX_PARENT_ATOMS}"
            elif std in seen:
                continue  # two spellings of one molecule
        if std is None:
            text = str(smiles[i])
            rejects.append({"row": i + 1, "smiles": text if len(text) <= 200 else text[:200] + "...",
                            "reason": reason})
        else:
            seen.add(std)
            kept.append(std)
    return kept, rejects


def _round_seed(seed: int, rnd: int) -> int:
    return (seed * 1_000_003 + rnd * 7_919) % (2**31 - 1)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _copy_model(model):
    new = copy.copy(model)
    new.module = copy.deepcopy(model.module)
    return new


def _load_weights(model, path: Path) -> None:
    """Adapted weights into ``model``'s module: safetensors only, checked name by name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MolvaeError(f"{path}: cannot read adapted weights ({exc}); delete {path.parent} to restart "
                          "adaptation, or use a new output folder") from None
    expected = model.module.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise MolvaeError(f"{path}: adapted weights do not match this model's architecture; the run "
                          "folder belongs to another model")
    model.module.load_state_dict({k: v.to(expected[k].device) for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------------------- the rounds


def search_with_adaptation(adapter: Adapter, study, space: SearchSpace,
                           new_sampler: Callable[[SearchSpace, int], Any], scorer, mlog: MoleculeLog,
                           settings: _Settings, mirror: _Mirror | None, time_offset: float,
                           started: float, first: SearchSpace | None = None) -> tuple[_Stats, str]:
    """:func:`~molvae.optimize.loop._search` in rounds, adapting the model between them.

    One in-memory study carries all rounds (trial numbers continue, the mirror writes them
    all); each round gets a fresh sampler on its own region (``new_sampler(space, round)``),
    whose CMA-ES stream is the round, so a resumed sampler replays only its round's trials.
    With ``restart=false`` the sampler and region carry on across adaptations (the stream
    stays that of the last restart) and are renewed only after a stall.
    A round ends at the next adaptation's oracle call or when its sampler stalls. An adapted
    round that stalls without finding a new molecule is followed by a round on the shipped
    weights in ``first`` (the run's first region; :meth:`Adapter.reset`); a stall without a
    new molecule in round 0 or in such a round ends the search.
    """
    first = space if first is None else first
    total = _Stats()
    total.time["adapt"] = 0.0
    if adapter.round > 0:
        study.sampler = new_sampler(space, adapter.stream)
    plateau = adapter.config.after_plateau
    while True:
        until = adapter.next_call(settings.budget, mlog.scores)
        waiting = adapter.round == 0 and plateau is not None
        patience = settings.patience
        if waiting:  # round 0 ends at the plateau (the user's patience, if shorter, ends the run)
            patience = plateau if patience is None else min(patience, plateau)
        stats, reason = _search(adapter.model, adapter.proposer(_OptunaProposer(study, space, mirror), mlog),
                                scorer, mlog,
                                dataclasses.replace(settings, budget=until, patience=patience), 0,
                                time_offset, started)
        total.merge(stats)
        if len(mlog) >= settings.budget:
            return total, "budget"
        # What the whole round found, from its first call: a resumed round's search counts only
        # what it scored after the kill, and a round that scored molecules before a kill is
        # not a dry one (it used to be reset, unlike the same round run without the kill).
        found = len(mlog) - (adapter.calls[-1] if adapter.calls else 0)
        at_plateau = waiting and reason == "patience" and (settings.patience is None or plateau < settings.patience)
        if reason == "stalled" and found == 0 and adapter.round > 0 and not adapter.was_reset:
            space = adapter.reset(mlog, first)
            study.sampler = new_sampler(space, adapter.round)
            continue
        if not (reason == "budget" or at_plateau or (reason == "stalled" and found > 0)):
            return total, reason
        t = time.perf_counter()
        restart = adapter.config.restart or reason == "stalled"
        space = adapter.adapt(mlog, space, restart, stalled=reason == "stalled")
        if restart:
            study.sampler = new_sampler(space, adapter.round)
        total.time["adapt"] += time.perf_counter() - t


def auto_adapts(sampler: str, multi: bool, workers: int, lead: bool = False, shared: bool = False) -> bool:
    """Whether ``adapt="auto"`` (the default) retrains: where the PMO table measured it,
    CMA-ES on one objective (12.04 against 10.82 for CMA-ES alone, sum of 20 tasks at 10,000
    calls, 3 seeds; docs/benchmarks.md). A lead's trust region, other samplers, several
    objectives, several workers or a shared storage search unadapted."""
    return sampler == "cmaes" and not multi and workers <= 1 and not lead and not shared


def is_auto(adapt) -> bool:
    return adapt is None or (isinstance(adapt, str) and adapt.strip().lower() == "auto")


def adapt_config(adapt: str | AdaptConfig | None, every: int | None, sampler: str, multi: bool,
                 workers: int, after_plateau: int | None = None, lead: bool = False,
                 shared: bool = False) -> AdaptConfig | None:
    """The adaptation settings of an ``optimize`` call (``None``: no adaptation), checked
    against the search they go with. ``every`` and ``after_plateau`` (0: adapt from the
    start) replace the config's values unless ``None``. ``None`` or ``"auto"`` adapts where
    :func:`auto_adapts` says."""
    if is_auto(adapt):
        if not auto_adapts(sampler, multi, workers, lead, shared):
            if every is not None or after_plateau is not None:
                raise MolvaeError("adapt_every / adapt_after_plateau: this search does not adapt "
                                  "(adapt 'auto' retrains CMA-ES on one objective, without a lead or "
                                  "workers); give adapt='retrain' or remove them")
            return None
        adapt = "retrain"
    changes: dict[str, Any] = {} if every is None else {"every": every}
    if after_plateau is not None:
        if isinstance(after_plateau, bool) or not isinstance(after_plateau, int) or after_plateau < 0:
            raise MolvaeError(f"adapt_after_plateau must be a whole number of oracle calls (0: adapt "
                              f"from the start), got {after_plateau!r}")
        changes["after_plateau"] = after_plateau or None
    if isinstance(adapt, str) and ":" in adapt:
        adapt = parse_adapt(adapt)
    if isinstance(adapt, AdaptConfig):
        config = dataclasses.replace(adapt, **changes)
    elif isinstance(adapt, str) and adapt.lower() in ADAPT_METHODS:
        if adapt.lower() == "none":
            return None
        config = AdaptConfig(method=adapt.lower(), **changes)
    else:
        raise MolvaeError(f"adapt must be one of {', '.join(ADAPT_CHOICES)}, got {_short(repr(adapt))}")
    if config.method == "none":
        return None
    if multi or sampler not in ("cmaes", "random"):
        raise MolvaeError(f"adapt={config.method!r} restarts the sampler on a new region each round, "
                          f"which suits cmaes and random, not {sampler!r}; use --sampler cmaes, or "
                          "--adapt none")
    if workers > 1:
        raise MolvaeError("adapt with workers > 1 is not supported: the workers would each need the "
                          "adapted model; use one worker, or --adapt none")
    return config
