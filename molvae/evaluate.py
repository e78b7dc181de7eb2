"""Evaluate a trained model: MOSES metrics of prior samples, reconstruction, active units.

``evaluate_model`` samples the prior, computes the MOSES metric set against the MOSES test
and scaffold-test sets (``molvae.metrics``), and adds the whole-molecule reconstruction rate
and the number of active latent units measured on MOSES test molecules.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from .data import bundled
from .generate import reconstruct, reconstruction_rate, sample
from .model import MolVAE

log = logging.getLogger(__name__)


def active_units(model: MolVAE, smiles: list[str], threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across molecules: Cov_x(E[z|x]) > threshold
    (Burda et al. 2016). Collapsed dimensions carry no information about the molecule."""
    mu, _, _, _ = model.try_encode(smiles)
    if len(mu) < 2:
        return 0
    return int((mu.float().var(dim=0) > threshold).sum())


def evaluate_model(model: MolVAE, n_samples: int = 30000, train: list[str] | None = None,
                   seed: int = 0, temperature: float = 1.0, reconstruction_molecules: int = 1000,
                   out_dir: str | os.PathLike | None = None, test="test", test_scaffolds="test_scaffolds",
                   n_jobs: int | None = None, device: str | None = "auto",
                   samples_csv: str | os.PathLike | None = None, prior: str = "auto") -> dict:
    """MOSES metrics of ``n_samples`` prior samples plus reconstruction and active units.

    ``train`` (SMILES) is the novelty reference (default: the bundled 100k MOSES sample; pass
    the model's full training set for the MOSES novelty figure). ``test``/``test_scaffolds``,
    ``n_jobs`` and ``device`` go to :func:`molvae.metrics.moses_metrics`; reconstruction and
    active units are measured on ``reconstruction_molecules`` molecules of ``test`` (the
    bundled MOSES test set unless a list of SMILES is given). Writes ``metrics.json`` and
    ``samples.csv`` into ``out_dir`` when given, and the samples to ``samples_csv``.
    """
    from .metrics import moses_metrics

    t0 = time.perf_counter()
    train = train if train is not None else bundled("train")
    table = sample(model, n_samples, seed=seed, temperature=temperature, training=None, properties=False,
                   prior=prior)
    generated = [s if v else None for s, v in zip(table["smiles"], table["valid"])]
    metrics = moses_metrics(generated, train=train, test=test, test_scaffolds=test_scaffolds,
                            n_jobs=n_jobs, device=device)
    pool = list(test) if isinstance(test, (list, tuple)) else bundled("test")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=g)[:reconstruction_molecules].tolist()
    subset = [pool[i] for i in pick]
    rec = reconstruct(model, subset)
    metrics["reconstruction"] = reconstruction_rate(rec)
    metrics["active_units"] = active_units(model, subset)
    metrics["latent_dim"] = model.latent_dim
    metrics["prior"] = ("fitted" if model.prior is not None and prior != "normal" else "normal")
    metrics["n_samples"] = n_samples
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    if samples_csv is not None:
        Path(samples_csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(samples_csv, index=False)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "samples.csv", index=False)
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=1))
        os.replace(tmp, out / "metrics.json")
    return metrics


def compare_priors(model: MolVAE, n_samples: int = 5000, seed: int = 0, temperature: float = 1.0,
                   train: list[str] | None = None, test="test", n_jobs: int | None = None,
                   device: str | None = "auto", priors: tuple[str, ...] = ("normal", "fitted")
                   ) -> dict[str, dict[str, float]]:
    """MOSES metrics of samples from each latent prior, in one run (same decoder, same seed).

    ``{prior: metrics}`` for ``'normal'`` (N(0, I)) and ``'fitted'`` (the density in
    ``prior.json``): validity, uniqueness, FCD/Test, Filters, IntDiv, novelty
    (:func:`molvae.metrics.quick_metrics`; SNN and the scaffold metrics are left to
    :func:`evaluate_model`). This is the measurement that decides whether a model ships its
    fitted prior.
    """
    from .metrics import quick_metrics

    train = train if train is not None else bundled("train")
    out = {}
    for name in priors:
        t0 = time.perf_counter()
        z = model.sample_prior(n_samples, seed=seed, prior=name)
        smiles = model.decode(z, greedy=False, temperature=temperature, seed=seed)
        metrics = quick_metrics(smiles, train=train, test=test, n_jobs=n_jobs, device=device)
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = metrics
        log.info("prior %s: FCD/Test %.3f, valid %.4f, novelty %.3f", name,
                 metrics.get("FCD/Test", float("nan")), metrics["valid"], metrics.get("Novelty", float("nan")))
    return out
