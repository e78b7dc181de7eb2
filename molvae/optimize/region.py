"""The search region: where in the latent space the search looks.

Coordinates live in a box of ``k`` principal axes of the encodings of training molecules
(:func:`fit_latent_pca`), each in units of the encoded data's standard deviation along it,
bounded by ±``bound`` (3 by default): the decoder is only trustworthy where training
molecules were encoded, so the region is derived from the data, not an arbitrary box. With a
lead molecule the box is a trust region centred on the lead's own encoding
(:func:`trust_region`; its residual outside the ``k`` axes is kept), ±``trust_radius`` sd wide.
The box is saved in the run folder (``search_space.npz``) so that a resumed run searches
exactly the same one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MolvaeError

log = logging.getLogger(__name__)

DEFAULT_COMPONENTS = 16
DEFAULT_BOUND = 3.0
DEFAULT_TRUST_RADIUS = 1.0
PCA_MOLECULES = 5000


def model_fingerprint(model) -> str:
    """A short hash of the model's weights: keys the PCA cache and ties a run to its model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LatentPCA:
    """Principal axes of the posterior means of encoded training molecules."""

    mean: np.ndarray        # (d,)
    axes: np.ndarray        # (d, d), rows = principal directions, largest variance first
    sd: np.ndarray          # (d,) standard deviation of the encodings along each axis
    n_molecules: int

    def explained(self, k: int) -> float:
        """Fraction of the encodings' variance that the first ``k`` axes carry."""
        var = self.sd ** 2
        return float(var[:k].sum() / max(var.sum(), 1e-12))


def fit_latent_pca(model, smiles: Sequence[str] | None = None, n_molecules: int | None = None,
                   seed: int = 0, cache: bool = True) -> LatentPCA:
    """PCA of the encodings (posterior means) of ``n_molecules`` (default
    :data:`PCA_MOLECULES`) training molecules.

    ``smiles`` defaults to the bundled MOSES training sample. The result is cached under
    ``$MOLVAE_CACHE/latent_pca/`` keyed by the model's weights, so it is computed once per
    model (about 10 s on a CPU).
    """
    from ..data import bundled, cache_dir

    n_molecules = PCA_MOLECULES if n_molecules is None else int(n_molecules)
    path = None
    if cache and smiles is None:
        path = cache_dir() / "latent_pca" / f"{model_fingerprint(model)}_{n_molecules}_{seed}.npz"
        if path.exists():
            try:
                with np.load(path) as f:
                    return LatentPCA(f["mean"], f["axes"], f["sd"], int(f["n_molecules"]))
            except (OSError, KeyError, ValueError):
                log.warning("%s: unreadable PCA cache, recomputing", path)
    pool = list(bundled("train") if smiles is None else smiles)
    rng = np.random.default_rng(seed)
    if len(pool) > n_molecules:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), n_molecules, replace=False))]
    mu, _, ok, _ = model.try_encode(pool)
    x = mu.detach().to("cpu").double().numpy()
    if len(x) < 2:
        raise MolvaeError("fitting the search region needs at least 2 molecules the model can encode")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    sd = s / math.sqrt(len(x) - 1)
    if vt.shape[0] < x.shape[1]:  # fewer molecules than latent dimensions
        extra = np.linalg.svd(np.eye(x.shape[1]) - vt.T @ vt)[0][:, : x.shape[1] - vt.shape[0]].T
        vt = np.vstack([vt, extra])
        sd = np.concatenate([sd, np.zeros(extra.shape[0])])
    pca = LatentPCA(mean, vt, sd, len(x))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, mean=mean, axes=vt, sd=sd, n_molecules=len(x))
        os.replace(tmp, path)
    return pca


@dataclass
class SearchSpace:
    """A box in ``k`` latent directions: ``z = center + (coords * scale) @ axes``, with every
    coordinate in ``[-bound, bound]`` (units: standard deviations of the encoded data)."""

    center: np.ndarray      # (d,)
    axes: np.ndarray        # (k, d), orthonormal rows
    scale: np.ndarray       # (k,)
    bound: float
    kind: str = "pca"       # "pca" (around the data's mean) or "trust_region" (around a lead)
    explained: float = float("nan")

    @property
    def k(self) -> int:
        return int(self.axes.shape[0])

    @property
    def names(self) -> list[str]:
        return [f"x{i:02d}" for i in range(self.k)]

    def distributions(self) -> dict:
        from optuna.distributions import FloatDistribution

        return {n: FloatDistribution(-self.bound, self.bound) for n in self.names}

    def to_latent(self, coords: np.ndarray) -> np.ndarray:
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        return self.center + (coords * self.scale) @ self.axes

    def to_coords(self, z: np.ndarray) -> np.ndarray:
        """Coordinates of latent points (projected on the axes, clipped into the box)."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        c = ((z - self.center) @ self.axes.T) / np.where(self.scale > 0, self.scale, 1.0)
        return np.clip(c, -self.bound, self.bound)

    def params_to_coords(self, params: Sequence[dict]) -> np.ndarray:
        return np.array([[p[n] for n in self.names] for p in params], dtype=np.float64).reshape(-1, self.k)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, center=self.center, axes=self.axes, scale=self.scale, bound=self.bound,
                 kind=self.kind, explained=self.explained)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SearchSpace:
        try:
            with np.load(path) as f:
                return cls(f["center"], f["axes"], f["scale"], float(f["bound"]), str(f["kind"]),
                           float(f["explained"]))
        except (OSError, KeyError, ValueError) as exc:
            raise MolvaeError(f"{path}: unreadable search region ({exc}); delete it to refit, "
                              "or use a new output folder") from None


def pca_space(pca: LatentPCA, n_components: int = DEFAULT_COMPONENTS,
              bound: float = DEFAULT_BOUND) -> SearchSpace:
    """The box of ±``bound`` sd along the first ``n_components`` axes, around the data mean."""
    k = _check_components(n_components, len(pca.mean))
    return SearchSpace(pca.mean.copy(), pca.axes[:k].copy(), pca.sd[:k].copy(), float(bound), "pca",
                       pca.explained(k))


def trust_region(pca: LatentPCA, center: np.ndarray, n_components: int = DEFAULT_COMPONENTS,
                 radius: float = DEFAULT_TRUST_RADIUS) -> SearchSpace:
    """A box of ±``radius`` sd along the first ``n_components`` axes around ``center`` (an
    encoding): the neighbourhood of a lead molecule, LOL-BO style."""
    k = _check_components(n_components, len(pca.mean))
    return SearchSpace(np.asarray(center, dtype=np.float64).copy(), pca.axes[:k].copy(),
                       pca.sd[:k].copy(), float(radius), "trust_region", pca.explained(k))


def _check_components(k: int, d: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise MolvaeError(f"n_components must be a positive integer, got {k!r}")
    if k > d:
        raise MolvaeError(f"n_components {k} exceeds the model's latent dimension {d}")
    return int(k)
