"""Policy proposals: molecules *sampled* from the (adapted) decoder at the codes of the best
molecules found so far, beside each batch of the latent search.

Greedy decoding maps a whole neighbourhood of latent points to one molecule, so CMA-ES reaches
only the molecules that are some point's most likely decode. Sampling the decoder at a good
molecule's code gives its near variants instead (on the shipped model at temperature 1, from
the codes of 32 MOSES molecules: 60 % come back unchanged, the rest at Tanimoto 0.77 on
average), and after a round of weighted retraining the decoder's samples lean towards what
scored well: a mutation operator learned from the objective, as GAs and REINVENT-style
policies use, driven from the latent search's own ledger.

Each batch draws ``policy`` parents uniformly from the ``pool`` best molecules of the ledger
and decodes their posterior means at ``temperature``; with ``crossover`` > 0 that share of
the parents is replaced by a random point on the segment between two of the pool (a latent
crossover: a molecule between two good ones, as the medians and MPOs reward). The draws
are seeded by the run's seed, the adaptation round and the ledger's length, so a resumed run
proposes what the killed one would have. These molecules are not Optuna trials: the ledger records them with trial -1, and
only the sampler's own points are told to it.
"""

from __future__ import annotations

import time

import numpy as np

from .ledger import MoleculeLog
from .loop import _decode, _Stats


class PolicyProposer:
    """Wraps a latent proposer (the round's CMA-ES) and adds ``config.policy`` sampled
    molecules to each of its batches."""

    def __init__(self, inner, model, mlog: MoleculeLog, policy: int, pool: int, temperature: float,
                 seed: int, round_: int, codes: dict[str, np.ndarray | None], crossover: float = 0.0):
        self.inner = inner
        self.model = model
        self.mlog = mlog
        self.policy = policy
        self.pool = pool
        self.temperature = temperature
        self.crossover = crossover    # share of parents replaced by a point between two of the pool
        self.seed = seed
        self.round = round_
        self.codes = codes            # SMILES -> posterior mean (None: does not encode); the caller's
        self._n = 0                   # the sampler's share of the current batch
        self._decode_seed = 0

    def _parents(self) -> np.ndarray | None:
        """Posterior means of the ``pool`` best molecules that encode (None: none yet)."""
        scores = np.asarray(self.mlog.scores, dtype=float)
        if not len(scores):
            return None
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        order = np.argsort(-scores, kind="stable")
        col = self.mlog.columns.index("smiles")
        top = [self.mlog.rows[i][col] for i in order[:self.pool] if np.isfinite(scores[i])]
        missing = [s for s in top if s not in self.codes]
        if missing:
            mu, _, ok, _ = self.model.try_encode(missing)
            rows = iter(mu.detach().cpu().numpy())
            for s, good in zip(missing, ok):
                self.codes[s] = next(rows) if good else None
        found = [self.codes[s] for s in top if self.codes[s] is not None]
        return np.stack(found) if found else None

    def propose(self, n: int, stats: _Stats):
        trials, numbers, z = self.inner.propose(n, stats)
        self._n = len(z)
        t = time.perf_counter()
        parents = self._parents()
        stats.time["sampler"] += time.perf_counter() - t
        if parents is None:
            return trials, numbers, z
        rng = np.random.default_rng([self.seed, self.round, len(self.mlog)])
        zp = parents[rng.integers(len(parents), size=self.policy)]
        self._decode_seed = int(rng.integers(2**31 - 1))
        if self.crossover > 0 and len(parents) > 1:
            # Drawn after the decode seed, so runs without crossover draw exactly as before.
            cross = rng.random(self.policy) < self.crossover
            mates = parents[rng.integers(len(parents), size=self.policy)]
            u = rng.random((self.policy, 1))
            zp = np.where(cross[:, None], zp + u * (mates - zp), zp)
        return list(trials) + [None] * self.policy, list(numbers) + [-1] * self.policy, \
            np.concatenate([np.asarray(z, dtype=np.float64), zp.astype(np.float64)])

    def decode(self, model, z: np.ndarray) -> list[str | None]:
        # The sampler's points greedy and the policy's sampled, in one batch: a batch of 32
        # decodes ~1.4x faster per molecule than two of 16 on a CPU.
        greedy = np.arange(len(z)) < self._n
        return _decode(model, z, temperature=self.temperature, seed=self._decode_seed, greedy=greedy)

    def tell(self, trials, values, smiles, stats: _Stats) -> None:
        n = self._n
        self.inner.tell(trials[:n], values[:n], smiles[:n], stats)
