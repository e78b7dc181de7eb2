"""Experiment (not part of molvae): where CMA-ES in latent space stops climbing, and two ways
tried to keep it climbing.

    python scripts/experiments/cmaes_plateau.py curve   celecoxib_rediscovery 10000
    python scripts/experiments/cmaes_plateau.py mutate  celecoxib_rediscovery 2000 0.5
    python scripts/experiments/cmaes_plateau.py restart celecoxib_rediscovery 10000 80 best

``curve``: the default search (seed 0), with the running top-10 mean at 10 %..100 % of the
budget. ``mutate SHARE``: a share of each batch are SELFIES mutations (1-3 token
replacements, insertions or deletions, tokens from the model's vocabulary; STONED-like) of
parents drawn by rank from the 32 best molecules so far; the rest are CMA-ES's latent points.
``restart PATIENCE MODE``: CMA-ES restarts (new seed, sigma0) once its best has not improved
for PATIENCE generations, around the best point seen (``best``) or the box centre
(``centre``); a decision from told values only, so it would replay on resume.

Figures and what they showed: docs/benchmarks.md, "Where CMA-ES stops climbing".
"""
import sys
import time

import numpy as np

import molvae
import molvae.optimize.loop as loop
import molvae.optimize.run as run
from molvae import chem, pmo
from molvae.model import load_model
from molvae.samplers import BatchCmaEsSampler
from molvae.tokens import SPECIALS, selfies_to_smiles, smiles_to_selfies, split_selfies


# ------------------------------------------------------------------ SELFIES mutants

def mutate_selfies(tokens, alphabet, rng, max_ops=3):
    out = list(tokens)
    for _ in range(int(rng.integers(1, max_ops + 1))):
        op = rng.integers(3) if len(out) > 1 else rng.integers(2)
        if op == 0:
            out[int(rng.integers(len(out)))] = alphabet[int(rng.integers(len(alphabet)))]
        elif op == 1:
            out.insert(int(rng.integers(len(out) + 1)), alphabet[int(rng.integers(len(alphabet)))])
        else:
            del out[int(rng.integers(len(out)))]
    return out


class MutatingProposer(loop._OptunaProposer):
    """CMA-ES's points plus mutants, which travel as NaN rows that the patched decode fills."""

    pending: list = []

    def __init__(self, study, space, mirror=None, *, mlog, model, seed, share, parents=32):
        super().__init__(study, space, mirror)
        self.mlog, self.seed, self.share, self.parents = mlog, seed, share, parents
        self.max_len = model.vocab.max_len
        self.alphabet = [t for t in model.vocab.tokens if t not in SPECIALS]

    def mutants(self, k):
        scores = np.asarray(self.mlog.scores, dtype=float)
        if k <= 0 or len(scores) < self.parents:
            return []
        rng = np.random.default_rng([self.seed, len(scores), 17])
        top = np.argsort(-scores, kind="stable")[: self.parents]
        w = 1.0 / (np.arange(len(top)) + self.parents / 4)
        col = self.mlog._col["smiles"]
        pool = [self.mlog.rows[i][col] for i in top]
        out = []
        for _ in range(8 * k):
            if len(out) >= k:
                break
            toks = split_selfies(smiles_to_selfies(pool[int(rng.choice(len(pool), p=w / w.sum()))]))
            child = mutate_selfies(toks, self.alphabet, rng)
            s = chem.canonical(selfies_to_smiles("".join(child))) if len(child) <= self.max_len else None
            if s and s not in out and s not in self.mlog.index and chem.is_valid_molecule(s):
                out.append(s)
        return out

    def propose(self, n, stats):
        extra = self.mutants(int(self.share * n))
        trials, numbers, z = super().propose(n - len(extra), stats)
        MutatingProposer.pending = extra
        nan = np.full((len(extra), z.shape[1]), np.nan)
        return trials, list(numbers) + [-1] * len(extra), np.vstack([z, nan])


_plain_decode = loop._decode


def _decode_with_mutants(model, z):
    latent = ~np.isnan(z).any(1)
    out = _plain_decode(model, z[latent]) if latent.any() else []
    return list(out) + list(MutatingProposer.pending[: int((~latent).sum())])


# ------------------------------------------------------------------ restarts

class RestartingCmaEs(BatchCmaEsSampler):
    def __init__(self, *a, patience, mode, **kw):
        super().__init__(*a, **kw)
        self._patience, self._mode = patience, mode
        self._restarts = 0
        self._best = None
        self._run_best, self._run_best_gen = np.inf, 0

    def _tell(self, results):
        super()._tell(results)
        costs = [-self._sign * v for _, v in results if v is not None]
        for (x, v) in results:
            if v is not None and (self._best is None or -self._sign * v < self._best[0]):
                self._best = (-self._sign * v, x)
        gen = self._cma.generation
        if costs and min(costs) < self._run_best - 1e-12:
            self._run_best, self._run_best_gen = min(costs), gen
        if gen - self._run_best_gen >= self._patience:
            from cmaes import CMA

            self._restarts += 1
            mean = self._best[1] if self._mode == "best" and self._best else self._x0
            self._cma = CMA(mean=mean.copy(), sigma=self._sigma0, bounds=self._bounds,
                            seed=self._seed + 1_000_003 * self._restarts, population_size=self._popsize)
            self._run_best, self._run_best_gen = np.inf, 0


def main(argv):
    what, task, budget = argv[0], argv[1], int(argv[2])
    model = load_model()
    if what == "mutate":
        share = float(argv[3])
        loop._decode = _decode_with_mutants
        run._decode = _decode_with_mutants
        holder = {}
        real_open = run.open_ledger

        def open_ledger(*a, **kw):
            holder["mlog"] = real_open(*a, **kw)
            return holder["mlog"]

        run.open_ledger = open_ledger
        run._OptunaProposer = lambda study, space, mirror=None: MutatingProposer(
            study, space, mirror, mlog=holder["mlog"], model=model, seed=0, share=share)
    elif what == "restart":
        patience, mode = int(argv[3]), argv[4]
        plain = run.make_sampler

        def make_sampler(name, seed, batch_size, multi=False, search_space=None, stream=0):
            if search_space is None:
                return plain(name, seed, batch_size, multi, search_space, stream)
            return RestartingCmaEs(search_space, popsize=max(batch_size, 2), seed=seed, stream=stream,
                                   patience=patience, mode=mode)

        run.make_sampler = make_sampler
    t = time.perf_counter()
    table = molvae.optimize(model, pmo.objective(task), budget=budget, seed=0, progress=False)
    wall = time.perf_counter() - t
    scores = table.sort_values("oracle_call")["score"].to_numpy()
    at = [int(budget * f) for f in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)]
    curve = {n: round(float(np.sort(scores[:n])[-10:].mean()), 3) for n in at}
    top = table.sort_values("score", ascending=False).head(10)
    print(what, task, budget, argv[3:], "AUC top-10", round(table.attrs["summary"]["auc_top10"], 4),
          "top-10 mean by calls", curve, "mutants scored", int((table["trial"] == -1).sum()), "in top-10", int((top["trial"] == -1).sum()),
          "wall s", round(wall, 1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
