"""Generation with a trained model: prior samples, the prototype, reconstructions,
interpolations and analogs around a lead.

The network decodes whole batches on the model's device; SELFIES -> SMILES, RDKit
canonicalization and properties run in a process pool over all cores (see
``MolVAE.ids_to_smiles`` and ``chem.properties_many``). Every function returns a pandas
DataFrame that the CLI writes as CSV. Counts are checked here, not only in the CLI, so
pipelines get the same errors: ``n`` up to :data:`MAX_SAMPLES` (sampled in chunks of
:data:`SAMPLE_CHUNK`, so memory does not grow with it), analogs up to
:data:`MAX_NEIGHBORS`, paths up to :data:`MAX_STEPS` steps. A user's molecule goes through
``chem.standardize`` first, which refuses giant or malformed SMILES before RDKit sees them.

Output columns of :func:`sample`:
    ``smiles`` canonical SMILES ('' when invalid), ``selfies`` as decoded, ``valid`` (RDKit
    parses it and it has >= 2 heavy atoms), ``unique`` (first occurrence among valid
    molecules), ``novel`` (valid and not in the training set; empty when no training set was
    given), ``qed``, ``logp``, ``sa``, ``mw``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from . import chem
from .errors import MolvaeError
from .model import MolVAE
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

#: Most molecules one :func:`sample` call returns: the table holds ~350 bytes per molecule
#: (1M: ~350 MB); for more, call it again with another seed.
MAX_SAMPLES = 1_000_000
#: Molecules decoded, converted and scored at once, so memory stays bounded whatever ``n``
#: (the ids of 10M molecules alone were 8 GB). A sample no larger than one chunk gives the
#: same molecules as one undivided decode; 50,000 keeps the 30,000-sample MOSES runs so.
SAMPLE_CHUNK = 50_000
#: Most analogs :func:`neighbors` returns (each try decodes 2n points).
MAX_NEIGHBORS = 10_000
#: Most steps of an :func:`interpolate` path.
MAX_STEPS = 10_000


def _whole(value, name: str, flag: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or a MolvaeError naming the argument and flag."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise MolvaeError(f"{name} ({flag}) must be a whole number from {low:,} to {high:,}, got {value!r}")
    return int(value)


def _chunk_seed(seed: int | None, k: int) -> int | None:
    # chunk 0 keeps the caller's seed (so a one-chunk sample is what it always was);
    # later chunks get independent streams derived from (seed, k)
    if seed is None or k == 0:
        return seed
    return int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])


def _flags(smiles: Sequence[str | None], training: set[str] | None) -> pd.DataFrame:
    valid = [s is not None and chem.is_valid_molecule(s) for s in smiles]
    seen: set[str] = set()
    unique = []
    for s, v in zip(smiles, valid):
        first = v and s not in seen
        unique.append(first)
        if v:
            seen.add(s)
    novel = [v and s not in training for s, v in zip(smiles, valid)] if training is not None else [None] * len(smiles)
    return pd.DataFrame({"valid": valid, "unique": unique, "novel": novel})


def with_properties(table: pd.DataFrame, smiles_column: str = "smiles", progress: bool = True) -> pd.DataFrame:
    """Add the main properties (QED, logP, SA, MW) as columns; NaN for invalid molecules."""
    props = chem.properties_many(table[smiles_column].fillna("").tolist(), progress=progress)
    return pd.concat([table.reset_index(drop=True), props], axis=1)


def sample(
    model: MolVAE,
    n: int,
    greedy: bool = False,
    temperature: float = 1.0,
    seed: int | None = 0,
    training: Iterable[str] | None = None,
    properties: bool = True,
    progress: bool = True,
    prior: str = "auto",
) -> pd.DataFrame:
    """``n`` molecules decoded from prior samples of z, 1 <= n <= :data:`MAX_SAMPLES`.

    ``prior``: ``'auto'`` draws z from the model's fitted latent prior when it has one
    (:mod:`molvae.prior`: where the training molecules were encoded), else N(0, I);
    ``'normal'`` always N(0, I); ``'fitted'`` requires the fitted one.
    ``greedy=False`` (the default, as in MOSES) samples each token at ``temperature``;
    ``greedy=True`` takes the most likely token. ``training`` (SMILES) sets the ``novel``
    column. See the module docstring for the columns. Work proceeds in chunks of
    :data:`SAMPLE_CHUNK` molecules (a progress bar counts them when there are several).
    """
    n = _whole(n, "number of samples n", "-n", 1, MAX_SAMPLES)
    train = None if training is None else (training if isinstance(training, set) else set(training))
    starts = range(0, n, SAMPLE_CHUNK)
    parts = []
    with progress_bar(total=n, desc="sample", disable=not progress or len(starts) == 1) as bar:
        for k, start in enumerate(starts):
            m = min(SAMPLE_CHUNK, n - start)
            chunk_seed = _chunk_seed(seed, k)
            z = model.sample_prior(m, seed=chunk_seed, prior=prior)
            ids = model.decode_ids(z, greedy=greedy, temperature=temperature, seed=chunk_seed)
            smiles = model.ids_to_smiles(ids)
            part = pd.DataFrame({"smiles": [s or "" for s in smiles],
                                 "selfies": [model.vocab.decode_selfies(r) for r in ids.tolist()]})
            del ids, z
            if properties:
                part = with_properties(part, progress=progress)
            parts.append(part)
            bar.update(m)
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    flags = _flags([s or None for s in table["smiles"]], train)
    return pd.concat([table[["smiles", "selfies"]], flags, table.drop(columns=["smiles", "selfies"])], axis=1)


def prototype(model: MolVAE) -> str | None:
    """The molecule decoded (greedily) from the prior's mean, z = 0."""
    return model.decode(torch.zeros(1, model.latent_dim))[0]


def reconstruct(model: MolVAE, smiles: Sequence[str], greedy: bool = True,
                use_mean: bool = True, seed: int = 0) -> pd.DataFrame:
    """Encode then decode each molecule.

    Columns: ``input``, ``encoded`` (False when the molecule cannot be encoded: invalid, or
    outside the vocabulary), ``reason``, ``reconstructed`` (canonical SMILES), ``exact`` (the
    reconstruction equals the standardized input). ``use_mean`` decodes the posterior mean;
    otherwise one sample z ~ q(z|x).
    """
    mu, logvar, ok, reasons = model.try_encode(list(smiles))
    if not use_mean and len(mu):
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(mu.shape, generator=g).to(mu.device)
        mu = mu + eps * torch.exp(0.5 * logvar)
    decoded = model.decode(mu, greedy=greedy, seed=seed) if len(mu) else []
    it = iter(decoded)
    rows = []
    for s, good, reason in zip(smiles, ok, reasons):
        if not good:
            rows.append((s, False, reason, "", False))
            continue
        rec = next(it)
        std, _ = chem.standardize(s)
        rows.append((s, True, "", rec or "", rec is not None and rec == std))
    return pd.DataFrame(rows, columns=["input", "encoded", "reason", "reconstructed", "exact"])


def reconstruction_rate(table: pd.DataFrame) -> float:
    """Fraction of encodable molecules reconstructed exactly."""
    enc = table[table["encoded"]]
    return float(enc["exact"].mean()) if len(enc) else float("nan")


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    # Spherical interpolation keeps the norm typical of the prior (|z| ~ sqrt(d)), where
    # linear midpoints shrink towards the origin and decode to the prototype.
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def _encode_one(model: MolVAE, smiles: str, what: str) -> tuple[str, torch.Tensor]:
    """Standardized SMILES and posterior mean of one user molecule, or a MolvaeError that
    names it (cut to a readable length) and says why."""
    std, reason = chem.standardize(smiles)
    if std is None:
        raise MolvaeError(f"{what} {chem.short(smiles)}: {reason}")
    mu, _, ok, reasons = model.try_encode([std])
    if not ok[0]:
        raise MolvaeError(f"{what} {chem.short(smiles)} cannot be encoded by this model: {reasons[0]}")
    return std, mu[0].cpu()


def interpolate(model: MolVAE, smiles_a: str, smiles_b: str, steps: int = 10,
                method: str = "slerp") -> pd.DataFrame:
    """Decode ``steps`` + 1 points on the path between the encodings of two molecules.

    ``method`` is ``'linear'`` or ``'slerp'`` (spherical). Columns: ``step``, ``t``,
    ``smiles``, ``duplicate`` (same molecule as the previous step), ``sim_a``, ``sim_b``
    (Tanimoto, Morgan r=2), ``is_endpoint_exact`` (at t=0 and t=1: whether the decoded
    molecule is A, resp. B; empty in between). The model does not reconstruct every
    molecule, so the path may start or end at a relative of A or B: a warning says so.
    """
    if method not in ("linear", "slerp"):
        raise MolvaeError(f"interpolation method (--method) must be 'linear' or 'slerp', got {method!r}")
    steps = _whole(steps, "steps", "--steps", 1, MAX_STEPS)
    std_a, a = _encode_one(model, smiles_a, "molecule A")
    std_b, b = _encode_one(model, smiles_b, "molecule B")
    ts = [i / steps for i in range(steps + 1)]
    zs = torch.stack([(1 - t) * a + t * b if method == "linear" else _slerp(a, b, t) for t in ts])
    decoded = model.decode(zs)
    out = pd.DataFrame({"step": range(steps + 1), "t": ts, "smiles": [s or "" for s in decoded]})
    out["duplicate"] = out["smiles"].eq(out["smiles"].shift())
    out["sim_a"] = chem.tanimoto(std_a, out["smiles"].tolist())
    out["sim_b"] = chem.tanimoto(std_b, out["smiles"].tolist())
    exact = pd.array([pd.NA] * len(out), dtype="boolean")
    for row, t, name, std, sim in ((0, "t=0", "A", std_a, "sim_a"), (steps, "t=1", "B", std_b, "sim_b")):
        exact[row] = out.at[row, "smiles"] == std
        if not exact[row]:
            log.warning("%s decodes to %s, not molecule %s %s (Tanimoto %.2f): the model does not "
                        "reconstruct %s, so the path %s near it, not at it", t, out.at[row, "smiles"] or "nothing valid",
                        name, std, out.at[row, sim], name, "starts" if row == 0 else "ends")
    out["is_endpoint_exact"] = exact
    return out


def neighbors(model: MolVAE, smiles: str, n: int = 100, radius: float = 1.0, seed: int = 0,
              greedy: bool = True, max_tries: int = 20) -> pd.DataFrame:
    """Up to ``n`` unique analogs decoded from points near a lead's encoding.

    Points are z = mu + radius * eps with eps ~ N(0, I) (radius in prior standard
    deviations, > 0). Sampling continues in batches of 2n (at least 64) until ``n`` unique
    valid analogs other than the lead are found or ``max_tries`` batches are spent;
    1 <= n <= :data:`MAX_NEIGHBORS`. Columns: ``smiles``, ``similarity`` (Tanimoto to the
    lead), ``distance`` (|z - mu|), ``qed``, ``logp``, ``sa``, ``mw``; sorted by
    similarity, highest first.
    """
    n = _whole(n, "number of analogs n", "-n", 1, MAX_NEIGHBORS)
    max_tries = _whole(max_tries, "max_tries", "max_tries", 1, 1_000)
    try:
        radius = float(radius)
    except (TypeError, ValueError):
        radius = float("nan")
    if not (math.isfinite(radius) and radius > 0):
        raise MolvaeError(f"radius (--radius) must be a number > 0, in prior standard deviations "
                          f"(0.5 gives close analogs), got {radius}")
    lead, mu = _encode_one(model, smiles, "lead")
    g = torch.Generator().manual_seed(seed)
    found: dict[str, float] = {}
    batch = max(64, 2 * n)
    with progress_bar(total=n, desc="analogs", disable=n < 1000) as bar:
        for _ in range(max_tries):
            eps = torch.randn((batch, model.latent_dim), generator=g)
            z = mu + radius * eps
            for s, d in zip(model.decode(z, greedy=greedy, seed=seed), eps.norm(dim=1) * radius):
                if s and s != lead and chem.is_valid_molecule(s) and s not in found:
                    found[s] = float(d)
            bar.update(min(len(found), n) - bar.n)
            if len(found) >= n:
                break
    table = pd.DataFrame({"smiles": list(found), "distance": list(found.values())})
    table.insert(1, "similarity", chem.tanimoto(lead, table["smiles"].tolist()) if len(table) else [])
    table = table.sort_values(["similarity", "distance"], ascending=[False, True]).head(n)
    return with_properties(table.reset_index(drop=True), progress=False)


def benchmark_sampling(model: MolVAE, n: int = 20000, temperature: float = 1.0, seed: int = 0,
                       workers: int | None = None) -> dict:
    """Valid unique molecules per second end to end, split into network and chemistry time.

    Network: prior sampling + batched decoding to token ids on the model's device.
    Chemistry: ids -> SELFIES -> SMILES -> RDKit canonical SMILES, validity, uniqueness and
    the main properties, in a process pool (``workers=1`` for the serial baseline).
    """
    n = _whole(n, "number of samples n", "-n", 1, MAX_SAMPLES)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    z = model.sample_prior(n, seed=seed)
    ids = model.decode_ids(z, greedy=False, temperature=temperature, seed=seed)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    smiles = model.ids_to_smiles(ids, workers=workers)
    flags = _flags(smiles, None)
    good = [s for s, u in zip(smiles, flags["unique"]) if u]
    chem.properties_many(good, workers=workers, progress=False)
    t2 = time.perf_counter()
    n_good = len(good)
    return {
        "device": str(model.device), "workers": workers or chem.default_workers(), "samples": n,
        "valid_unique": n_good, "network_s": round(t1 - t0, 3), "chemistry_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3), "valid_unique_per_s": round(n_good / (t2 - t0), 1),
        "network_fraction": round((t1 - t0) / (t2 - t0), 3),
    }


def benchmark_decoding(model: MolVAE, n: int = 2048, batch_sizes: Sequence[int] = (16, 64, 256),
                       seed: int = 0, repeats: int = 2) -> list[dict]:
    """Greedy decoding throughput (molecules/s, z -> token ids) of the hand-stepped GRU
    (``generate(fused=True)``, the default) against ``nn.GRU`` stepped one position at a time,
    on the same ``n`` prior points in the same run, per batch size (the optimizer decodes
    batches of 16 by default). Runs alternate and the faster of ``repeats`` counts, so a busy
    machine slows both alike; ``identical`` checks that both decode the same tokens in fp32.

    Where the model decodes with a bf16 copy (:class:`MolVAE` ``precision``), both paths are
    also timed in bf16 (``bf16_*``), and ``bf16_same_rows`` is the fraction of rows whose
    bf16 tokens equal the fp32 ones.
    """
    n = _whole(n, "number of samples n", "-n", 1, MAX_SAMPLES)
    z = model.sample_prior(n, seed=seed)
    nets = {"": model.module}
    if model.decode_bf16:
        nets["bf16_"] = model._generator()
    rows = []
    for bs in batch_sizes:
        bs = _whole(bs, "batch size", "--batch-sizes", 1, MAX_SAMPLES)
        best: dict[tuple[str, bool], float] = {}
        out = {}
        for _ in range(max(1, int(repeats))):
            for prefix, net in nets.items():
                for fused in (False, True):
                    if model.device.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    ids = [net.generate(z[i:i + bs], fused=fused) for i in range(0, n, bs)]
                    if model.device.type == "cuda":
                        torch.cuda.synchronize()
                    key = (prefix, fused)
                    best[key] = min(best.get(key, math.inf), time.perf_counter() - t)
                    out[key] = [c.cpu() for c in ids]
        row = {"device": str(model.device), "batch_size": bs, "molecules": n}
        for prefix in nets:
            row.update({f"{prefix}reference_per_s": round(n / best[prefix, False], 1),
                        f"{prefix}fused_per_s": round(n / best[prefix, True], 1),
                        f"{prefix}speedup": round(best[prefix, False] / best[prefix, True], 2)})
        row["identical"] = all(torch.equal(a, b) for a, b in zip(out["", False], out["", True]))
        if "bf16_" in nets:
            same = sum(_same_rows(a, b, model.vocab.pad_id)
                       for a, b in zip(out["", True], out["bf16_", True]))
            row["bf16_same_rows"] = round(same / n, 4)
            row["bf16_vs_fp32_fused"] = round(best["", True] / best["bf16_", True], 2)
        rows.append(row)
    return rows


def _same_rows(a: torch.Tensor, b: torch.Tensor, pad: int) -> int:
    """How many rows of two id batches hold the same tokens (batches may differ in width)."""
    w = max(a.size(1), b.size(1))
    a = torch.nn.functional.pad(a, (0, w - a.size(1)), value=pad)
    b = torch.nn.functional.pad(b, (0, w - b.size(1)), value=pad)
    return int((a == b).all(1).sum())


def pca_map(model: MolVAE, smiles: Sequence[str], n_components: int = 2) -> tuple[np.ndarray, list[bool]]:
    """2-D PCA coordinates of the posterior means of ``smiles`` (for latent-space maps)."""
    mu, _, ok, _ = model.try_encode(list(smiles))
    x = mu.cpu().numpy().astype(np.float64)
    if len(x) < n_components + 1:
        raise MolvaeError("need at least three encodable molecules for a latent-space map")
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:n_components].T, ok
