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
crossover: a molecule between two good ones, as the medians and MPOs reward); with ``jitter``
> 0 each of these codes then gets Gaussian noise of that sd (latent units). The draws
are seeded by the run's seed, the adaptation round and the ledger's length, so a resumed run
proposes what the killed one would have. These molecules are not Optuna trials: the ledger records them with trial -1, and
only the sampler's own points are told to it.

With ``graph`` > 0 each batch also holds that many children of the pool made by graph
crossover and mutation (:mod:`molvae.optimize.mutate`), new to the ledger and within the
model's vocabulary and length; the ledger records them with trial -2 (:data:`GRAPH_TRIAL`).
With ``screen`` > 1 it makes that many times more children and keeps the ones a Gaussian
process fitted on the ledger ranks highest (:mod:`molvae.optimize.surrogate`). With
``policy_screen`` > 1 the policy's samples are screened by the same GP: that many times
``policy`` are decoded and the new ones it ranks highest are kept. With ``edits`` > 0 each
batch also holds that many SELFIES token edits of the pool (:func:`molvae.optimize.mutate.
selfies_edits`, ledger trial -3, :data:`EDIT_TRIAL`), screened like the graph children.

With ``flat_donors``, while every score so far is equal (:func:`no_signal`: a gated objective
such as valsartan's SMARTS scores 0 until its pattern appears) the pool carries no
information, so the GA breeds a fresh random ``pool`` of the donors each batch instead, and
makes the policy's share of the batch too: children of unrelated training molecules join
groups that no molecule scored so far has, the one way a blind search can meet the gate.
"""

from __future__ import annotations

import time

import numpy as np

from .ledger import MoleculeLog
from .loop import _decode, _Stats
from .mutate import offspring, selfies_edits
from .surrogate import TanimotoGP

POLICY_TRIAL = -1   # the ledger's trial number of a policy sample
GRAPH_TRIAL = -2    # ... and of a graph crossover/mutation child
EDIT_TRIAL = -3     # ... and of a SELFIES token edit


def no_signal(scores) -> bool:
    """Whether the objective has not told molecules apart yet: at least two finite scores and
    all of them equal, as a gated objective scores 0 until its gate is met. Ranking or
    learning from such scores would only follow the order they came in. (One score says
    nothing either way; a first batch that decoded to one molecule is no sign of a gate.)"""
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    return len(s) >= 2 and bool(np.all(s == s[0]))


def generic_framework(smiles: str) -> str:
    """Ring systems and the linkers between them, every atom a carbon and every bond single
    (Bemis-Murcko); "" for an acyclic molecule or one RDKit cannot read."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    from .. import chem

    mol = chem.to_mol(smiles)
    if mol is None or not mol.GetRingInfo().NumRings():
        return ""
    try:
        core = MurckoScaffold.MakeScaffoldGeneric(MurckoScaffold.GetScaffoldForMol(mol))
        return Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(core))
    except (ValueError, RuntimeError):  # RDKit's sanitization of odd valences
        return ""


class PolicyProposer:
    """Wraps a latent proposer (the round's CMA-ES) and adds ``config.policy`` sampled
    molecules to each of its batches."""

    def __init__(self, inner, model, mlog: MoleculeLog, policy: int, pool: int, temperature: float,
                 seed: int, round_: int, codes: dict[str, np.ndarray | None], crossover: float = 0.0,
                 graph: int = 0, encoded: dict[str, list[int] | None] | None = None,
                 parent_k: float = 0.0, mutation: float = 0.5, ring_crossover: float = 0.0,
                 niche: int = 0, frameworks: dict[str, str] | None = None, jitter: float = 0.0,
                 screen: int = 1, surrogate: TanimotoGP | None = None, policy_screen: int = 1,
                 donors: list | None = None, donor: float = 0.0, donor_top: int = 0, edits: int = 0,
                 flat_donors: bool = False):
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
        self.graph = graph            # graph crossover/mutation children per batch
        self.encoded = {} if encoded is None else encoded  # SMILES -> token ids (None: does not fit)
        self._n = 0                   # the sampler's share of the current batch
        self._children: list[str] = []  # the current batch's graph children
        self._decode_seed = 0
        self.parent_k = parent_k      # 0: parents uniform over the pool; > 0: rank-weighted
        self.mutation = mutation      # chance a graph child is mutated after its crossover
        self.ring_crossover = ring_crossover  # share of the graph crossovers made on rings
        self.niche = niche            # most pool members of one generic framework (0: no limit)
        self.frameworks = {} if frameworks is None else frameworks  # SMILES -> framework, cached
        self.jitter = jitter          # sd of the noise on the parents' codes (0: their means)
        self.screen = screen          # graph children made per child kept (1: all kept)
        self.surrogate = surrogate    # ranks them when screen > 1 (molvae.optimize.surrogate)
        self.policy_screen = policy_screen  # policy samples decoded per sample kept (1: all kept)
        self._fit = None              # the current batch's GP, fitted once for both screens
        self._sampled = 0             # policy rows decoded in the current batch
        self.donors = donors if donors is not None else []  # training molecules for donor crossovers (mutate.donor_parents)
        self.donor = donor            # share of the graph crossovers with a donor as second parent
        self.donor_top = donor_top    # > 0: only the donors the GP's mean ranks highest, this many
        self.edits = edits            # SELFIES token edits of the pool per batch
        self._edits: list[str] = []   # the current batch's
        self.flat_donors = flat_donors  # equal scores so far: the GA breeds random donors
        self._flat = False            # whether the current batch was made so

    def _top(self) -> list[str]:
        """The ``pool`` best molecules of the ledger with a finite score, best first."""
        scores = np.asarray(self.mlog.scores, dtype=float)
        if not len(scores):
            return []
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        order = np.argsort(-scores, kind="stable")
        col = self.mlog.columns.index("smiles")
        if not self.niche:
            return [self.mlog.rows[i][col] for i in order[:self.pool] if np.isfinite(scores[i])]
        top: list[str] = []
        count: dict[str, int] = {}
        for i in order:
            if len(top) >= self.pool or not np.isfinite(scores[i]):
                break
            smiles = self.mlog.rows[i][col]
            key = self._framework(smiles)
            if count.get(key, 0) < self.niche:
                count[key] = count.get(key, 0) + 1
                top.append(smiles)
        return top

    def _framework(self, smiles: str) -> str:
        """The generic Murcko framework of ``smiles`` ("" for acyclic or unreadable ones)."""
        if smiles not in self.frameworks:
            self.frameworks[smiles] = generic_framework(smiles)
        return self.frameworks[smiles]

    def _fits(self, smiles: str) -> bool:
        """Whether the model's vocabulary and length can write ``smiles`` (cached for the
        fine-tune, which learns only from such molecules)."""
        if smiles not in self.encoded:
            self.encoded[smiles] = self.model.vocab.try_encode(smiles)[0]
        return self.encoded[smiles] is not None

    def _weights(self, n: int) -> np.ndarray | None:
        """Draw probabilities of ``n`` parents, best first: None (uniform) when parent_k is 0,
        else proportional to 1 / (parent_k * pool + rank)."""
        if not self.parent_k or n < 1:
            return None
        w = 1.0 / (self.parent_k * self.pool + np.arange(n))
        return w / w.sum()

    def _parents(self, top: list[str]) -> np.ndarray | None:
        """Posterior means of the molecules ``top`` that encode (None: none)."""
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
        flat = self._flat = self.flat_donors and no_signal(self.mlog.scores) and bool(self.donors)
        top = self._flat_pool() if flat else self._top()
        # While flat the policy would only sample near the first molecules scored: its share
        # of the batch goes to the GA, and the parents are drawn uniformly (ranks mean nothing).
        parents = self._parents(top) if top and self.policy and not flat else None
        graph = self.graph + (self.policy if flat else 0)
        weights = None if flat else self._weights(len(top))
        self._children = []
        self._fit = None
        self._sampled = 0
        if graph and top:
            # Its own stream, so runs without graph children draw exactly as before.
            grng = np.random.default_rng([self.seed, self.round, len(self.mlog), 2])
            # While flat the GP's UCB is its sd alone: it would keep the children least like
            # the ledger, odd molecules, and drop the common groups a gate is built from
            # (biphenyl-CH2-N 3x rarer among the kept, docs/benchmarks.md), so none is screened.
            if self.screen > 1 and self.surrogate is not None and not flat:
                # Screened before the vocabulary check: SELFIES-encoding a child costs more
                # than making it, and only the ``graph`` kept need it.
                read: dict = {}
                made = offspring(top, graph * self.screen, grng, known=self.mlog.index,
                                 weights=weights, mutation=self.mutation,
                                 ring=self.ring_crossover, read=read, donors=self._donors(), donor=self.donor)
                ranked = made if len(made) < 2 or self._fitted() is None else self._fit.rank(made, read)
                for s in ranked:
                    if len(self._children) >= graph:
                        break
                    if self._fits(s):
                        self._children.append(s)
            else:
                self._children = offspring(top, graph, grng, known=self.mlog.index, accept=self._fits,
                                           weights=weights, mutation=self.mutation,
                                           ring=self.ring_crossover, donors=self.donors, donor=self.donor)
        self._edits = self._selfies_edits(top) if self.edits and top else []
        stats.time["sampler"] += time.perf_counter() - t
        extra = [POLICY_TRIAL] * (self.policy if parents is not None else 0) \
            + [GRAPH_TRIAL] * len(self._children) + [EDIT_TRIAL] * len(self._edits)
        made = len(self._children) + len(self._edits)
        if parents is None:
            zc = np.zeros((made, np.shape(z)[1]))  # placeholders: not decoded
            return list(trials) + [None] * len(extra), list(numbers) + extra, \
                np.concatenate([np.asarray(z, dtype=np.float64), zc])
        rng = np.random.default_rng([self.seed, self.round, len(self.mlog)])
        w = self._weights(len(parents))
        self._sampled = self.policy * (self.policy_screen if self.surrogate is not None else 1)
        zp = parents[rng.integers(len(parents), size=self._sampled) if w is None
                     else rng.choice(len(parents), size=self._sampled, p=w)]
        self._decode_seed = int(rng.integers(2**31 - 1))
        if self.crossover > 0 and len(parents) > 1:
            # Drawn after the decode seed, so runs without crossover draw exactly as before.
            cross = rng.random(self._sampled) < self.crossover
            mates = parents[rng.integers(len(parents), size=self._sampled)]
            u = rng.random((self._sampled, 1))
            zp = np.where(cross[:, None], zp + u * (mates - zp), zp)
        if self.jitter > 0:
            # Drawn last, so runs without jitter draw exactly as before.
            zp = zp + self.jitter * rng.standard_normal(zp.shape)
        zc = np.zeros((made, zp.shape[1]))  # placeholders: not decoded
        return list(trials) + [None] * len(extra), list(numbers) + extra, \
            np.concatenate([np.asarray(z, dtype=np.float64), zp.astype(np.float64), zc])

    def decode(self, model, z: np.ndarray) -> list[str | None]:
        # The sampler's points greedy and the policy's sampled, in one batch: a batch of 32
        # decodes ~1.4x faster per molecule than two of 16 on a CPU. The graph children
        # and the SELFIES edits (the last rows) are molecules already.
        z = z[:len(z) - len(self._children) - len(self._edits)]
        if len(z) == self._n:
            smiles = _decode(model, z) if len(z) else []
        else:
            greedy = np.arange(len(z)) < self._n
            smiles = _decode(model, z, temperature=self.temperature, seed=self._decode_seed, greedy=greedy)
            if self._sampled > self.policy:
                smiles = smiles[:self._n] + self._screen_samples(smiles[:self._n], smiles[self._n:])
        return list(smiles) + list(self._children) + list(self._edits)

    def _selfies_edits(self, top: list[str]) -> list[str]:
        """This batch's ``edits`` SELFIES token edits of the pool, new to the ledger and the
        graph children, that the model can write; with the screen on, made ``screen`` times
        over and the ones the GP ranks highest kept."""
        # Its own stream, so runs without edits draw exactly as before.
        erng = np.random.default_rng([self.seed, self.round, len(self.mlog), 4])
        screened = self.screen > 1 and self.surrogate is not None and not self._flat
        vocab = self.model.vocab
        made = selfies_edits(top, self.edits * (self.screen if screened else 1), erng,
                             alphabet=vocab.tokens[3:], known=self.mlog.index,
                             weights=self._weights(len(top)), max_tokens=vocab.max_len)
        taken = set(self._children)
        made = [s for s in made if s not in taken]
        ranked = made if not screened or len(made) < 2 or self._fitted() is None else self._fit.rank(made)
        out = []
        for s in ranked:
            if len(out) >= self.edits:
                break
            if self._fits(s):
                out.append(s)
        return out

    def _donor_smiles(self) -> list[str]:
        """The donors as SMILES (read once)."""
        if not hasattr(self, "_donor_smiles_cache"):
            from rdkit import Chem

            self._donor_smiles_cache = [Chem.MolToSmiles(m) for m, _ in self.donors]
        return self._donor_smiles_cache

    def _flat_pool(self) -> list[str]:
        """``pool`` donors drawn at random for this batch (its own stream, seeded like the rest)."""
        rng = np.random.default_rng([self.seed, self.round, len(self.mlog), 6])
        smiles = self._donor_smiles()
        return [smiles[i] for i in rng.permutation(len(smiles))[:self.pool]]

    def _donors(self) -> list:
        """The donors this batch's crossovers draw from: all, or with ``donor_top`` the ones
        whose GP mean is highest, the training molecules most like the best scored
        (retrieval, as f-RAG retrieves fragments of its best molecules)."""
        if not (self.donor and self.donor_top and self.donors) or self.surrogate is None or self._fitted() is None:
            return self.donors
        mean = self._fit.predict_mean(self._donor_smiles())
        best = np.argsort(-mean, kind="stable")[:self.donor_top]
        return [self.donors[i] for i in best]

    def _fitted(self):
        """The batch's GP on the ledger (None: too few scores), fitted on first use."""
        if self._fit is None:
            col = self.mlog.columns.index("smiles")
            srng = np.random.default_rng([self.seed, self.round, len(self.mlog), 3])
            self._fit = self.surrogate.fit_ledger([r[col] for r in self.mlog.rows], self.mlog.scores, srng) \
                or False
        return self._fit or None

    def _screen_samples(self, latent: list, sampled: list) -> list:
        """``policy`` of the ``sampled`` decodes: the new ones (not in the ledger, the batch
        or the graph children) the GP ranks highest, then, should too few be new, the others
        in their order, which the loop counts as repeats or invalid as before."""
        taken = set(self._children) | set(self._edits) | {s for s in latent if s is not None}
        new: list[str] = []
        for s in sampled:
            if s is not None and s not in taken and s not in self.mlog.index:
                taken.add(s)
                new.append(s)
        fitted = self._fitted() if len(new) > self.policy else None
        keep = (fitted.rank(new) if fitted is not None else new)[:self.policy]
        chosen = set(keep)
        return keep + [s for s in sampled if s not in chosen][:self.policy - len(keep)]

    def tell(self, trials, values, smiles, stats: _Stats) -> None:
        n = self._n
        self.inner.tell(trials[:n], values[:n], smiles[:n], stats)
