"""A surrogate of the objective that screens candidates before they cost an oracle call.

The graph GA makes children for about a millisecond each with no decoding, and the oracle call
is what the budget counts. With ``screen`` = s > 1 the policy makes s times the children it
needs and keeps those a Gaussian process on the ledger ranks highest (GP-BO with a graph GA as
its acquisition optimizer, as Tripp et al. 2021 built it and PMO benchmarked it as "GP BO"). Scored molecules
are the training set; the kernel is the Tanimoto similarity of Morgan bits (ECFP4, 2048),
which is a valid kernel on bit vectors, and the acquisition is the upper confidence bound
``mean + beta * sd``. With ``counts=True`` the fingerprints count each environment and the
kernel is their Tanimoto (MinMax) similarity, sum(min) / sum(max), also a valid kernel: it sees
how many rings or amide groups a molecule has, which bits cannot (the PMO similarities are
Tanimoto on count fingerprints). With ``descriptors=True`` the kernel is the fingerprints'
Tanimoto times a Gaussian (RBF) kernel on a few whole-molecule descriptors (:data:`DESCRIPTORS`:
aromatic rings, rings, size, polarity, logP), a product of valid kernels: two molecules alike
by their bits but a ring apart are no longer taken for one, which objectives that score ring
counts, TPSA or logP (most MPOs, drug-likeness) depend on.

The GP is refitted for each batch on at most ``MAX_TRAIN`` molecules: the best three quarters
of them and a seeded draw of the rest, so its cost stays fixed (a 1,024 x 1,024 Cholesky, tens
of milliseconds) however long the run. Everything is a function of the ledger and the seed,
so a resumed run screens as the killed one would have.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from .. import chem

MAX_TRAIN = 1024      # molecules the GP is fitted on
TOP_SHARE = 0.75      # ... of them the best scored, the rest drawn from the others
NOISE = 0.05          # noise variance, in units of the scores' variance
MIN_TRAIN = 16        # fewer scored molecules: no screening (the candidates keep their order)
#: The descriptor kernel's features, each divided by the change that counts as one length
#: scale: a ring, five heavy atoms, 20 Å² of TPSA, one logP unit (then by DESCRIPTOR_SCALE).
DESCRIPTORS = ("aromatic_rings", "rings", "heavy_atoms / 5", "tpsa / 20", "logp")
DESCRIPTOR_SCALE = 2.0


class TanimotoGP:
    """Fingerprints cached by SMILES; :meth:`rank` orders candidates by the GP's UCB."""

    def __init__(self, beta: float = 1.0, n_bits: int = 2048, counts: bool = False, descriptors: bool = False):
        self.beta = beta
        self.n_bits = n_bits
        self.counts = counts
        self.descriptors = descriptors
        self._fps: dict[str, np.ndarray] = {}
        self._desc: dict[str, np.ndarray] = {}

    def _features(self, smiles: Sequence[str], read: Mapping[str, Any] | None = None):
        """What :meth:`kernel` compares: the fingerprints, with ``descriptors`` a pair of
        them and the scaled descriptors."""
        fps = self._matrix(smiles, read)
        return (fps, self._descriptor_matrix(smiles, read)) if self.descriptors else fps

    def _descriptor_matrix(self, smiles: Sequence[str], read: Mapping[str, Any] | None = None) -> np.ndarray:
        """:data:`DESCRIPTORS` of ``smiles`` in length scales, float32, one row each (zeros for
        a molecule RDKit cannot read)."""
        from rdkit.Chem import Crippen, rdMolDescriptors

        for s in smiles:
            if s not in self._desc:
                m = read.get(s) if read else None
                m = m if m is not None and not isinstance(m, str) else chem.to_mol(s)
                v = np.zeros(len(DESCRIPTORS), np.float32)
                if m is not None:
                    v[:] = (rdMolDescriptors.CalcNumAromaticRings(m), rdMolDescriptors.CalcNumRings(m),
                            m.GetNumHeavyAtoms() / 5, rdMolDescriptors.CalcTPSA(m) / 20, Crippen.MolLogP(m))
                self._desc[s] = v / DESCRIPTOR_SCALE
        return np.stack([self._desc[s] for s in smiles]) if smiles else np.zeros((0, len(DESCRIPTORS)), np.float32)

    def kernel(self, a, b) -> np.ndarray:
        """The GP's kernel between two :meth:`_features` results (float32)."""
        if not self.descriptors:
            return self._kernel(a, b)
        d2 = ((a[1][:, None, :] - b[1][None, :, :]) ** 2).sum(-1)
        return self._kernel(a[0], b[0]) * np.exp(-0.5 * d2, dtype=np.float32)

    def _matrix(self, smiles: Sequence[str], read: Mapping[str, Any] | None = None) -> np.ndarray:
        """Bits (0/1) or counts (0-255) of ``smiles``, uint8, one row each; ``read``: molecules
        already parsed."""
        missing = [s for s in smiles if s not in self._fps]
        if missing:
            given = [read.get(s, s) for s in missing] if read else missing
            for s, row in zip(missing, chem.fingerprint_matrix(given, n_bits=self.n_bits, counts=self.counts)):
                self._fps[s] = row if self.counts else np.packbits(row)   # bits: 256 bytes, not 2,048
        if self.counts:
            return np.stack([self._fps[s] for s in smiles]) if smiles else np.zeros((0, self.n_bits), np.uint8)
        bits = np.stack([self._fps[s] for s in smiles]) if smiles else np.zeros((0, self.n_bits // 8), np.uint8)
        return np.unpackbits(bits, axis=1, count=self.n_bits)

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Tanimoto similarities (float32) of the rows of ``a`` and ``b``: bits, or counts
        (MinMax), which are the same where every count is 0 or 1."""
        inter = _common_counts(a, b)
        union = a.sum(1, dtype=np.float32)[:, None] + b.sum(1, dtype=np.float32)[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, np.float32(1.0)), np.float32(1.0))

    def fit(self, train: Sequence[str], scores: np.ndarray) -> "_Fit":
        """The GP conditioned on the scored molecules ``train`` (its Cholesky factor), to
        predict at any number of candidate sets."""
        y = np.asarray(scores, dtype=np.float64)
        mean, sd = float(y.mean()), float(y.std()) or 1.0
        train = list(train)
        x = self._features(train)
        import torch  # its triangular solves: numpy's general solve took 5x as long

        k = torch.from_numpy(self.kernel(x, x).astype(np.float64) + NOISE * np.eye(len(train)))
        chol = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(torch.from_numpy((y - mean) / sd)[:, None], chol)
        return _Fit(self, x, chol, alpha, mean, sd)

    def predict(self, train: Sequence[str], scores: np.ndarray, candidates: Sequence[str]):
        """The GP's mean and sd at ``candidates`` (in the scores' units) given ``train``."""
        return self.fit(train, scores).predict(candidates)

    def fit_ledger(self, smiles: Sequence[str], scores: np.ndarray, rng: np.random.Generator) -> "_Fit | None":
        """The GP on at most :data:`MAX_TRAIN` of the scored ``smiles`` (the ledger): the best
        :data:`TOP_SHARE` of them and a draw from ``rng`` of the rest; ``None`` with fewer than
        :data:`MIN_TRAIN` finite scores."""
        s = np.asarray(scores, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(s))
        if len(ok) < MIN_TRAIN:
            return None
        if len(ok) > MAX_TRAIN:
            order = ok[np.argsort(-s[ok], kind="stable")]
            top = int(MAX_TRAIN * TOP_SHARE)
            ok = np.concatenate([order[:top], rng.choice(order[top:], MAX_TRAIN - top, replace=False)])
        return self.fit([smiles[i] for i in ok], s[ok])

    def rank(self, smiles: Sequence[str], scores: np.ndarray, candidates: Sequence[str],
             rng: np.random.Generator) -> list[str]:
        """``candidates`` best first by UCB, fitted on the scored ``smiles`` (the ledger)."""
        if len(candidates) < 2:
            return list(candidates)
        fitted = self.fit_ledger(smiles, scores, rng)
        return list(candidates) if fitted is None else fitted.rank(candidates)


def _common_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The bits each row of ``a`` shares with each row of ``b`` (0/1 uint8; float32, exact
    counts): an int8 product (AMX or VNNI on CPUs that have it) where torch's checks out, else
    float32."""
    if a.shape[1] >= INT_MM_MIN_COLUMNS and _int_mm_works():
        import torch

        counts = torch._int_mm(torch.from_numpy(a).view(torch.int8), torch.from_numpy(b).view(torch.int8).T)
        return counts.numpy().astype(np.float32)
    return a.astype(np.float32) @ b.astype(np.float32).T


#: torch._int_mm (2.13, CPU) returns garbage for one column; a product this narrow is cheap anyway.
INT_MM_MIN_COLUMNS = 16


@lru_cache(maxsize=1)
def _int_mm_works() -> bool:
    """Whether this torch build has an int8 product that gives exact counts (checked once)."""
    try:
        import torch

        rng = np.random.default_rng(0)
        a, b = (rng.random((37, 2048)) < 0.05).astype(np.uint8), (rng.random((19, 2048)) < 0.05).astype(np.uint8)
        got = torch._int_mm(torch.from_numpy(a).view(torch.int8), torch.from_numpy(b).view(torch.int8).T).numpy()
        return bool(np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64).T))
    except (AttributeError, RuntimeError, TypeError):  # no integer matmul in this torch build
        return False


def _common_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum(min(a_k, b_k)) of each row of ``a`` with each row of ``b`` (uint8 counts), exact:
    min(x, y) is the number of levels t >= 1 that both reach, so it is a sum of products of
    0/1 matrices, the t-th over the columns where both sides have a count of t or more (few
    past t = 2). Bits take one product."""
    inter = _common_bits(np.minimum(a, 1), np.minimum(b, 1))
    cols = np.flatnonzero((a.max(0, initial=0) >= 2) & (b.max(0, initial=0) >= 2))
    t = 2
    while len(cols):
        aa, bb = a[:, cols], b[:, cols]
        inter += _common_bits((aa >= t).view(np.uint8), (bb >= t).view(np.uint8))
        t += 1
        keep = (aa.max(0) >= t) & (bb.max(0) >= t)
        cols = cols[keep]
    return inter


class _Fit:
    """A fitted :class:`TanimotoGP`: :meth:`predict` and :meth:`rank` candidates."""

    def __init__(self, gp: TanimotoGP, x: np.ndarray, chol, alpha, mean: float, sd: float):
        self.gp, self.x, self.chol, self.alpha, self.mean, self.sd = gp, x, chol, alpha, mean, sd

    def predict(self, candidates: Sequence[str],
                read: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The mean and sd at ``candidates``, in the scores' units (``read``: molecules of
        them already parsed)."""
        import torch

        xc = self.gp._features(list(candidates), read)
        ks = torch.from_numpy(self.gp.kernel(xc, self.x).astype(np.float64))
        mu = (ks @ self.alpha)[:, 0].numpy()
        v = torch.linalg.solve_triangular(self.chol, ks.T, upper=False)
        var = np.clip(1.0 - (v * v).sum(0).numpy(), 0.0, None)
        return self.mean + self.sd * mu, self.sd * np.sqrt(var)

    def predict_mean(self, candidates: Sequence[str]) -> np.ndarray:
        """The mean alone at ``candidates``: no triangular solve, so thousands cost little."""
        xc = self.gp._features(list(candidates))
        return self.mean + self.sd * (self.gp.kernel(xc, self.x).astype(np.float64) @ self.alpha.numpy())[:, 0]

    def rank(self, candidates: Sequence[str], read: Mapping[str, Any] | None = None) -> list[str]:
        """``candidates`` best first by the upper confidence bound ``mean + beta * sd``."""
        if len(candidates) < 2:
            return list(candidates)
        mu, sd = self.predict(candidates, read)
        ucb = mu + self.gp.beta * sd
        return [candidates[i] for i in np.argsort(-ucb, kind="stable")]
