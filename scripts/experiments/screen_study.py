"""Experiment (not part of molvae): how well GP variants pick graph children, offline.

    [VARIANTS=base,bucb] [MADE=256] python scripts/experiments/screen_study.py LEDGER.csv TASK [CUTS]

LEDGER is a default search's ``molecules.csv`` on the PMO task TASK. At each cut (oracle
calls, default every 250 from 500), the molecules scored before it are the GP's training set
and their best 64 the parents: 128 children are made as the search makes them
(:func:`molvae.optimize.mutate.offspring`, rank-weighted parents), all 128 are scored by the
oracle (cheap for PMO tasks), and each variant's GP keeps 32. Printed per variant, summed
over the cuts: the mean true score of its 32, how many of them beat the ledger's 10th best
(what raises the AUC top-10), and the best of them; beside a random 32 and the oracle's own
best 32. The screen's job is the middle column.
"""
import os
import sys

import numpy as np
import pandas as pd
from rdkit.Chem import rdFingerprintGenerator

from molvae import chem, pmo
from molvae.optimize import surrogate
from molvae.optimize.mutate import offspring
from molvae.optimize.surrogate import TanimotoGP

KEEP, POOL = 32, 64
MADE = int(os.environ.get("MADE", 128))   # children made per cut: screen = MADE / KEEP


class VariantGP(TanimotoGP):
    """TanimotoGP with another fingerprint (radius, counts capped at ``cap``: MinMax kernel)."""

    def __init__(self, beta=1.0, radius=2, counts=False, cap=8, n_bits=2048):
        super().__init__(beta=beta, n_bits=n_bits)
        self.radius, self.counts, self.cap = radius, counts, cap
        self._gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)

    def _matrix(self, smiles, read=None):
        rows = []
        for s in smiles:
            if s not in self._fps:
                m = chem.to_mol(s)
                if m is None:
                    v = np.zeros(self.n_bits, np.uint8)
                elif self.counts:
                    v = np.minimum(self._gen.GetCountFingerprintAsNumPy(m), self.cap).astype(np.uint8)
                else:
                    v = self._gen.GetFingerprintAsNumPy(m).astype(np.uint8)
                self._fps[s] = v
            rows.append(self._fps[s])
        return np.stack(rows) if rows else np.zeros((0, self.n_bits), np.uint8)

    def _kernel(self, a, b):
        if not self.counts:
            return TanimotoGP._kernel(a, b)
        inter = sum(surrogate._common_bits((a >= t).astype(np.uint8), (b >= t).astype(np.uint8))
                    for t in range(1, self.cap + 1))
        union = a.sum(1, dtype=np.float32)[:, None] + b.sum(1, dtype=np.float32)[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, np.float32(1.0)), np.float32(1.0))


class _BatchFit(surrogate._Fit):
    """GP-BUCB (Desautels et al. 2014): take the best UCB, shrink the others' sd as if it had
    been scored at its mean, repeat; a batch then spreads over unlike children."""

    def rank(self, candidates, read=None):
        import torch

        candidates = list(candidates)
        xc = self.gp._matrix(candidates, read)
        ks = torch.from_numpy(self.gp._kernel(xc, self.x).astype(np.float64))
        mu = self.mean + self.sd * (ks @ self.alpha)[:, 0].numpy()
        v = torch.linalg.solve_triangular(self.chol, ks.T, upper=False).numpy()
        cov = self.gp._kernel(xc, xc).astype(np.float64) - v.T @ v
        order, left = [], np.ones(len(candidates), bool)
        for _ in candidates:
            ucb = np.where(left, mu + self.gp.beta * self.sd * np.sqrt(np.clip(np.diag(cov), 0, None)), -np.inf)
            j = int(np.argmax(ucb))
            order.append(j)
            left[j] = False
            cov = cov - np.outer(cov[:, j], cov[j, :]) / (cov[j, j] + surrogate.NOISE)
        return [candidates[i] for i in order]


class BatchGP(TanimotoGP):
    def fit(self, train, scores):
        f = super().fit(train, scores)
        return _BatchFit(f.gp, f.x, f.chol, f.alpha, f.mean, f.sd)


class DescGP(TanimotoGP):
    """Tanimoto on Morgan bits times an RBF on a few whole-molecule descriptors (aromatic
    rings, rings, heavy atoms / 5, TPSA / 20, logP), each in units where 1 is a real change:
    a product of valid kernels, which can learn what bits cannot count (perindopril's two
    aromatic rings)."""

    def __init__(self, beta=1.0, scale=1.0):
        super().__init__(beta=beta)
        self.scale = scale
        self._desc = {}

    def _matrix(self, smiles, read=None):
        from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors

        bits = super()._matrix(smiles, read).astype(np.float32)
        rows = []
        for s in smiles:
            if s not in self._desc:
                m = chem.to_mol(s)
                self._desc[s] = np.zeros(5, np.float32) if m is None else np.array([
                    rdMolDescriptors.CalcNumAromaticRings(m), rdMolDescriptors.CalcNumRings(m),
                    m.GetNumHeavyAtoms() / 5, Descriptors.TPSA(m) / 20, Crippen.MolLogP(m)], np.float32)
            rows.append(self._desc[s])
        d = np.stack(rows) if rows else np.zeros((0, 5), np.float32)
        return np.concatenate([bits, d / self.scale], axis=1)

    def _kernel(self, a, b):
        n = a.shape[1] - 5
        t = TanimotoGP._kernel(a[:, :n].astype(np.uint8), b[:, :n].astype(np.uint8))
        d2 = ((a[:, None, n:] - b[None, :, n:]) ** 2).sum(-1)
        return t * np.exp(-0.5 * d2).astype(np.float32)


def variants():
    return {
        "base": lambda: TanimotoGP(),
        "bucb": lambda: BatchGP(),
        "desc": lambda: DescGP(),
        "desc2": lambda: DescGP(scale=2.0),
        "bucb_b2": lambda: BatchGP(beta=2.0),
        "beta0": lambda: TanimotoGP(beta=0.0),
        "beta05": lambda: TanimotoGP(beta=0.5),
        "beta2": lambda: TanimotoGP(beta=2.0),
        "counts": lambda: TanimotoGP(counts=True),
        "counts_r3": lambda: VariantGP(counts=True, radius=3, cap=255),
        "r3": lambda: VariantGP(radius=3),
        "r1": lambda: VariantGP(radius=1),
    }


def ledger_cuts(argv):
    """The ledger's SMILES and scores in oracle order, and the cuts (argv[3] or every 250 from 500)."""
    led = pd.read_csv(argv[1]).sort_values("oracle_call")
    smiles, scores = led["smiles"].tolist(), led["score"].to_numpy(float)
    cuts = [int(x) for x in argv[3].split(",")] if len(argv) > 3 else list(range(500, len(led), 250))
    return smiles, scores, cuts


def parents_at(smiles, scores, cut):
    """At ``cut``: the molecules scored so far, their scores, the best POOL as parents with
    the search's rank weights, and the ledger's 10th best score."""
    s, y = smiles[:cut], scores[:cut]
    ok = np.isfinite(y)
    top = [s[i] for i in np.argsort(-np.where(ok, y, -np.inf), kind="stable")[:POOL]]
    w = 1.0 / (0.01 * POOL + np.arange(len(top)))
    return s, y, top, w / w.sum(), np.sort(y[ok])[-10]


def main():
    task = sys.argv[2]
    smiles, scores, cuts = ledger_cuts(sys.argv)
    oracle = pmo.oracle(task)
    only = os.environ.get("VARIANTS")  # e.g. VARIANTS=base,bucb: a comma list of variants() keys
    gps = {k: f() for k, f in variants().items() if not only or k in only.split(",")}
    tot: dict[str, np.ndarray] = {}
    for cut in cuts:
        s, y, top, w, tenth = parents_at(smiles, scores, cut)
        kids = offspring(top, MADE, np.random.default_rng([cut, 1]), known=set(s), weights=w)
        truth = dict(zip(kids, np.asarray(oracle(kids), dtype=float)))

        def rec(name, chosen):
            v = np.array([truth[c] for c in chosen[:KEEP]])
            tot[name] = tot.get(name, 0) + np.array([v.mean(), (v > tenth).sum(), v.max()])

        rec("random", kids)
        rec("oracle", sorted(kids, key=lambda c: -truth[c]))
        for name, gp in gps.items():
            fit = gp.fit_ledger(s, y, np.random.default_rng([cut, 3]))
            rec(name, fit.rank(kids))
    n = len(cuts)
    print(f"{task}: {n} cuts, children {MADE} -> {KEEP}")
    print("| variant | mean score of the 32 | beat the 10th best (per cut) | best of the 32 |")
    for name, (m, beat, best) in tot.items():
        print(f"| {name} | {m / n:.4f} | {beat / n:.2f} | {best / n:.4f} |")


if __name__ == "__main__":
    main()
