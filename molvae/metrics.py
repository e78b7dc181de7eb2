"""MOSES distribution-learning metrics for generated molecules.

Implements the metric set of MOSES 0.3.1 (Polykovskiy et al. 2020, ``moses.metrics``) with
the same definitions; the expensive parts (SNN against 176k test molecules, ChemNet, the
MCF/PAINS filters) are vectorized or screened so 30,000 molecules take minutes on two cores::

    from molvae.metrics import moses_metrics, format_table
    metrics = moses_metrics(generated_smiles, train=train_smiles)
    print(format_table(metrics))

Definitions (all over the *valid* generated molecules, duplicates kept, unless noted):

- ``valid``: fraction of all inputs that :func:`molvae.chem.is_valid_molecule` accepts, so
  empty and one-atom decodes are invalid (MOSES counts any parsable string).
- ``unique@k``: fraction of unique canonical SMILES among the first ``k`` valid molecules.
  With fewer than ``k`` valid molecules it warns and uses all of them, as MOSES does.
- ``FCD/*``: Fréchet ChemNet Distance between ChemNet activations (the ``fcd`` package; MOSES
  used ``fcd_torch``, the same ChemNet with the same 350-character padding). Reference
  SMILES are canonicalized with the installed RDKit, like the generated ones.
- ``SNN/*``: mean over generated molecules of the largest Tanimoto similarity to any
  reference molecule; Morgan radius 2, 1024 bits.
- ``Frag/*``, ``Scaf/*``: cosine similarity of BRICS-fragment counts and of Bemis-Murcko
  scaffold counts; as in MOSES, scaffolds with fewer than two rings are not counted.
- ``IntDiv``, ``IntDiv2``: ``1 - mean_x (mean_y T(x, y)^p)^(1/p)`` over all pairs of
  generated molecules (self pairs included) with p = 1 and 2.
- ``Filters``: fraction passing the MOSES filters (MCF and PAINS SMARTS, atoms in
  {C, N, S, O, F, Cl, Br, H}, no formal charges, no ring of eight or more atoms).
- ``logP``, ``SA``, ``QED``, ``weight``: 1-D Wasserstein distance of each property's
  distribution to the reference test set's.
- ``Novelty``: fraction of the unique valid generated molecules whose canonical SMILES is
  not in the (canonicalized) training set; only when ``train`` is given.

Reference statistics of the test sets (ChemNet mean/covariance, fragment and scaffold
counts, property values) ship in ``data/reference/``; their Morgan fingerprints (6 MB each,
compressed) are built on first use and cached in ``~/.cache/molvae`` (env ``MOLVAE_CACHE``). Every file is
``.npz`` or gzipped JSON and loads without pickle. Rebuild the shipped files with
``molvae evaluate --build-reference data/reference``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import AllChem, QED, Crippen, Descriptors
from rdkit.Chem.Scaffolds import MurckoScaffold
from scipy.stats import wasserstein_distance

from . import chem, data
from .errors import MolvaeError
from .progress import progress

log = logging.getLogger(__name__)

#: Shipped summaries of the bundled reference sets (see :func:`build_reference`).
REFERENCE_DIR = data.PACKAGE_ROOT / "data" / "reference"
#: Bundled reference sets (names for :func:`molvae.data.bundled`).
REFERENCE_SETS = ("test", "test_scaffolds")
#: Bumped whenever a definition changes, so stale cached statistics are rebuilt.
STATS_VERSION = 1
FP_RADIUS, FP_BITS = 2, 1024  # MOSES: Morgan r=2, 1024 bits
PROPERTY_NAMES = ("logP", "SA", "QED", "weight")
#: Metric keys in MOSES order, with whether higher is better.
METRIC_ORDER = {
    "valid": True, "unique@1000": True, "unique@10000": True,
    "FCD/Test": False, "SNN/Test": True, "Frag/Test": True, "Scaf/Test": True,
    "FCD/TestSF": False, "SNN/TestSF": True, "Frag/TestSF": True, "Scaf/TestSF": True,
    "IntDiv": True, "IntDiv2": True, "Filters": True, "Novelty": True,
    "logP": False, "SA": False, "QED": False, "weight": False,
}
_SUFFIX = {"test": "Test", "test_scaffolds": "TestSF"}


# ---------------------------------------------------------------------------- per molecule


def canonical_valid(smiles: str | None) -> str | None:
    """Canonical isomeric SMILES of a valid molecule (see :func:`chem.is_valid_molecule`),
    else ``None``."""
    if not chem.is_valid_molecule(smiles):
        return None
    return chem.canonical(smiles)


@lru_cache(maxsize=1)
def _filter_patterns() -> list[tuple[Chem.Mol, DataStructs.ExplicitBitVect]]:
    """MOSES MCF + PAINS queries, each with its RDKit pattern fingerprint for screening."""
    folder = resources.files("molvae") / "resources"
    with (folder / "mcf.csv").open() as fh:
        smarts = pd.read_csv(fh)["smarts"].tolist()
    with (folder / "wehi_pains.csv").open() as fh:
        smarts += pd.read_csv(fh, names=["smarts", "names"])["smarts"].tolist()
    queries = [Chem.MolFromSmarts(s) for s in smarts]
    return [(q, Chem.PatternFingerprint(q)) for q in queries]


_ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})


def passes_filters(smiles_or_mol: str | Chem.Mol | None, screen: bool = True) -> bool:
    """MOSES ``mol_passes_filters``: no MCF/PAINS match, only allowed atoms, no charges,
    no ring of 8+ atoms.

    ``screen`` skips a SMARTS query when the query's pattern fingerprint has a bit the
    molecule lacks (RDKit's substructure screen, which never discards a real match); this
    makes the check about three times faster and gives the same answers.
    """
    mol = chem.to_mol(smiles_or_mol) if not isinstance(smiles_or_mol, Chem.Mol) else smiles_or_mol
    if mol is None:
        return False
    rings = mol.GetRingInfo()
    if rings.NumRings() and any(len(r) >= 8 for r in rings.AtomRings()):
        return False
    if any(a.GetFormalCharge() != 0 for a in mol.GetAtoms()):
        return False
    if any(a.GetSymbol() not in _ALLOWED_ATOMS for a in mol.GetAtoms()):
        return False
    # The PAINS SMARTS spell hydrogens out as [#1] atoms, so they match against explicit Hs.
    h_mol = Chem.AddHs(mol)
    h_fp = Chem.PatternFingerprint(h_mol) if screen else None
    for query, query_fp in _filter_patterns():
        if screen and not DataStructs.AllProbeBitsMatch(query_fp, h_fp):
            continue
        if h_mol.HasSubstructMatch(query):
            return False
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    return bool(smiles) and Chem.MolFromSmiles(smiles) is not None


def fragments(mol: Chem.Mol) -> list[str]:
    """BRICS fragments as canonical SMILES (with dummy atoms at the cut points), as MOSES."""
    return Chem.MolToSmiles(AllChem.FragmentOnBRICSBonds(mol)).split(".")


def scaffold(mol: Chem.Mol, min_rings: int = 2) -> str | None:
    """Bemis-Murcko scaffold SMILES, or ``None`` with fewer than ``min_rings`` rings (MOSES)."""
    try:
        scaf = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(scaf)
    if not smiles or scaf.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def _property_values(mol: Chem.Mol) -> tuple[float, float, float, float]:
    out = []
    for fn in (Crippen.MolLogP, chem.sa_score, QED.qed, Descriptors.MolWt):
        try:
            out.append(float(fn(mol)))
        except Exception:  # SA/QED fail on a few exotic valences; those drop out as NaN
            out.append(float("nan"))
    return tuple(out)  # type: ignore[return-value]


def _packed_fp(mol: Chem.Mol) -> bytes:
    bits = np.zeros(FP_BITS, dtype=np.uint8)
    DataStructs.ConvertToNumpyArray(chem.morgan_fp(mol, FP_RADIUS, FP_BITS), bits)
    return np.packbits(bits).tobytes()


def _reference_features(smiles: str):
    """Everything the reference statistics need from one molecule, parsed once."""
    mol = chem.to_mol(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return (Chem.MolToSmiles(mol), _packed_fp(mol), fragments(mol), scaffold(mol),
            _property_values(mol))


def _generated_features(smiles: str):
    """Reference features plus the filter verdict (only generated molecules need it)."""
    mol = chem.to_mol(smiles)
    return (_packed_fp(mol), fragments(mol), scaffold(mol), _property_values(mol),
            passes_filters(mol))


# ---------------------------------------------------------------------------- similarity


def _cpu_bf16_is_fast() -> bool:
    """Whether bf16 matrix products beat float32 on this CPU (AMX / AVX512-BF16 do, ~3x).

    Read from the CPU's flags (:func:`molvae.runtime.cpu_bf16_supported`): timing a bf16
    product to find out took 72 s on a CPU without them, where bf16 is emulated.
    """
    from .runtime import cpu_bf16_supported

    return cpu_bf16_supported()


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise MolvaeError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)  # bits per byte


def _unpack(packed: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed, axis=1)).to(device=device, dtype=dtype)


def _tanimoto_blocks(a: np.ndarray, b: np.ndarray, device: str | None = None,
                     a_chunk: int = 1024, b_chunk: int = 2048,
                     desc: str | None = None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Tanimoto similarities of bit-packed fingerprints ``a`` × ``b``, block by block.

    Intersections are one matrix product of 0/1 matrices. In bf16 (CPU) or fp16 (GPU)
    the products are exact as long as no count exceeds the format's exact-integer range
    (256 / 2048 bits), which is checked; the ratio is taken in float32. Blocks of
    1024 × 2048 keep the elementwise work in cache, which matters more than the matmul.
    Yields ``(rows of a, rows of b, float32 block)``; a pair of two empty fingerprints
    has similarity 1, as in MOSES.
    """
    dev = _resolve_device(device)
    pop_a, pop_b_all = _POPCOUNT[a].sum(1), _POPCOUNT[b].sum(1)
    top = max(pop_a.max(initial=0), pop_b_all.max(initial=0))
    if dev.type == "cuda":
        dtype = torch.float16 if top <= 2048 else torch.float32
    else:
        dtype = torch.bfloat16 if top <= 256 and _cpu_bf16_is_fast() else torch.float32
    a_bits = _unpack(a, dev, dtype)
    pa = torch.as_tensor(pop_a, dtype=torch.float32, device=dev)
    starts = range(0, len(b), b_chunk)
    for j in progress(starts, desc=desc, disable=desc is None or len(starts) < 8):
        bj = slice(j, min(j + b_chunk, len(b)))
        b_bits_t = _unpack(b[bj], dev, dtype).T.contiguous()
        pb = torch.as_tensor(pop_b_all[bj], dtype=torch.float32, device=dev)
        for i in range(0, len(a), a_chunk):
            ai = slice(i, min(i + a_chunk, len(a)))
            inter = (a_bits[ai] @ b_bits_t).float()
            union = pa[ai, None] + pb[None, :]
            union.sub_(inter).clamp_(min=1.0)  # 0/1 for two empty fingerprints, fixed below
            sim = inter.div_(union)
            empty_a, empty_b = pa[ai] == 0, pb == 0
            if empty_a.any() and empty_b.any():
                sim[empty_a[:, None] & empty_b[None, :]] = 1.0
            yield ai, bj, sim


def nearest_similarity(a: np.ndarray, b: np.ndarray, device: str | None = None,
                       desc: str | None = None) -> np.ndarray:
    """For each packed fingerprint in ``a``, the largest Tanimoto similarity to ``b``."""
    out = torch.zeros(len(a))
    for ai, _, sim in _tanimoto_blocks(a, b, device, desc=desc):
        out[ai] = torch.maximum(out[ai], sim.max(1).values.cpu())
    return out.numpy().astype(np.float64)


def internal_diversity(fps: np.ndarray, weights: np.ndarray | None = None,
                       powers: Sequence[int] = (1, 2), device: str | None = None
                       ) -> dict[int, float]:
    """MOSES internal diversity ``1 - mean_x (mean_y T(x, y)^p)^(1/p)`` for each ``p``.

    ``fps`` are packed fingerprints of distinct molecules and ``weights`` their multiplicities
    in the generated set, so duplicates count as MOSES counts them without being recomputed.
    """
    w = np.ones(len(fps)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(fps) == 0:
        return {p: float("nan") for p in powers}
    wt = torch.as_tensor(w, dtype=torch.float32)
    sums = {p: torch.zeros(len(fps), dtype=torch.float64) for p in powers}
    for ai, bj, sim in _tanimoto_blocks(fps, fps, device, desc="IntDiv"):
        wb = wt[bj].to(sim.device)
        for p in powers:
            s = sim if p == 1 else sim.pow(p)
            sums[p][ai] += (s @ wb).double().cpu()
    total = w.sum()
    out = {}
    for p in powers:
        per_x = (sums[p].numpy() / total) ** (1.0 / p)
        out[p] = float(1.0 - (per_x * w).sum() / total)
    return out


def cosine_similarity(ref: dict[str, int], gen: dict[str, int]) -> float:
    """Cosine similarity of two count dictionaries (absent keys count 0); NaN if one is empty."""
    if not ref or not gen:
        return float("nan")
    dot = sum(count * ref.get(key, 0) for key, count in gen.items())
    norm = math.sqrt(sum(c * c for c in ref.values())) * math.sqrt(sum(c * c for c in gen.values()))
    return float(dot / norm)


# ---------------------------------------------------------------------------- FCD


def chemnet_statistics(smiles: Sequence[str], weights: Sequence[float] | None = None,
                       device: str | None = None, batch_size: int = 512,
                       desc: str | None = "ChemNet") -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ChemNet's penultimate activations (the FCD's Gaussian).

    ``weights`` are multiplicities (a molecule generated three times counts three times).
    Activations are accumulated chunk by chunk, so 176k molecules need no 360 MB array.
    SMILES longer than ChemNet's 350-character window run apart from the rest: ``fcd`` pads
    a whole batch to its longest string, which would change every other molecule's result.
    """
    import fcd

    w = np.ones(len(smiles)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.sum() < 2:
        raise MolvaeError(f"FCD needs at least 2 valid molecules, got {w.sum():.0f}")
    dev = str(_resolve_device(device))
    model = fcd.load_ref_model()
    order = [i for i, s in enumerate(smiles) if len(s) < 350]
    long_ones = [i for i, s in enumerate(smiles) if len(s) >= 350]
    total = np.zeros(512)
    outer = np.zeros((512, 512))
    chunk = 8192
    groups = [order[k:k + chunk] for k in range(0, len(order), chunk)] + [[i] for i in long_ones]
    for idx in progress(groups, desc=desc, disable=desc is None or len(groups) < 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # np.row_stack deprecation inside fcd
            act = fcd.get_predictions(model, [smiles[i] for i in idx], batch_size=batch_size,
                                      n_jobs=0, device=dev).astype(np.float64)
        wi = w[idx]
        total += wi @ act
        outer += act.T @ (act * wi[:, None])
    n = w.sum()
    mu = total / n
    sigma = (outer - n * np.outer(mu, mu)) / (n - 1)  # np.cov's unbiased estimate
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: ``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)``.

    The same quantity as ``fcd.calculate_frechet_distance``, but ``tr (S1 S2)^½`` is taken
    as the sum of square roots of the eigenvalues of the symmetric ``S1^½ S2 S1^½`` (which has
    the same spectrum): two ``eigh`` calls instead of a general ``sqrtm``, about 25 times
    faster for 512 × 512 and free of spurious imaginary parts.
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    # Eigenvalues under the numerical-rank tolerance (as np.linalg.matrix_rank's) are zeros
    # that rounding made +-1e-16: their square roots, ~1e-8 each, summed to an FCD of -1e-6
    # between a set and itself when fewer molecules than ChemNet's 512 features leave the
    # covariance rank-deficient (400 molecules: 113 such eigenvalues).
    eig = np.where(eig > eig.max(initial=0.0) * len(eig) * np.finfo(eig.dtype).eps, eig, 0.0)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(eig).sum())


# ---------------------------------------------------------------------------- reference


@dataclass
class ReferenceStats:
    """Everything the metrics need from a reference (test) set.

    Attributes:
        name: ``test``, ``test_scaffolds`` or ``custom``.
        key: first 16 hex digits of the SHA-256 of the input SMILES (one per line).
        n: number of valid reference molecules.
        fcd_mu, fcd_sigma: ChemNet activation mean (512) and covariance (512 × 512).
        frag, scaf: BRICS fragment and scaffold counts.
        props: ``logP``/``SA``/``QED``/``weight`` values, sorted (order is irrelevant to a
            Wasserstein distance and sorted values compress well).
        fps: Morgan fingerprints, bit-packed uint8 (n × 128).
    """

    name: str
    key: str
    n: int
    fcd_mu: np.ndarray
    fcd_sigma: np.ndarray
    frag: dict[str, int]
    scaf: dict[str, int]
    props: dict[str, np.ndarray]
    fps: np.ndarray = field(repr=False)


def _smiles_key(smiles: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(smiles).encode()).hexdigest()[:16]


def load_reference_smiles(name: str) -> list[str]:
    """SMILES of a bundled reference set (``test`` or ``test_scaffolds``)."""
    if name not in REFERENCE_SETS:
        raise MolvaeError(f"unknown reference set {name!r}; choose one of {', '.join(REFERENCE_SETS)}")
    path = data.BUNDLED[name]
    if not path.is_file():
        raise MolvaeError(f"{path}: bundled reference set missing; run from a source checkout "
                          "or pass the test SMILES explicitly")
    return data.read_smiles(path)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are data, readable by all
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _summary_meta(stats: ReferenceStats) -> dict:
    import fcd
    import rdkit

    return {"name": stats.name, "key": stats.key, "n": stats.n, "stats_version": STATS_VERSION,
            "fingerprint": f"morgan r={FP_RADIUS} {FP_BITS} bits", "rdkit": rdkit.__version__,
            "fcd": fcd.__version__, "source": "molvae.metrics.compute_reference_stats"}


def save_reference_summary(stats: ReferenceStats, folder: Path, stem: str) -> None:
    """Write ``stem.npz`` (ChemNet Gaussian, property values) and ``stem.json.gz`` (counts)."""
    iu = np.triu_indices(len(stats.fcd_mu))  # symmetric: store one triangle, half the bytes
    arrays = {"fcd_mu": stats.fcd_mu, "fcd_sigma_triu": stats.fcd_sigma[iu]}
    arrays.update({f"prop_{k}": v.astype(np.float32) for k, v in stats.props.items()})
    _atomic_write(folder / f"{stem}.npz", lambda fh: np.savez_compressed(fh, **arrays))
    doc = {"meta": _summary_meta(stats), "Frag": stats.frag, "Scaf": stats.scaf}
    payload = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0)
    _atomic_write(folder / f"{stem}.json.gz", lambda fh: fh.write(payload))


def _load_summary(folder: Path, stem: str, key: str) -> dict | None:
    """The saved summary if present and made from the same SMILES with current definitions."""
    npz, js = folder / f"{stem}.npz", folder / f"{stem}.json.gz"
    if not (npz.is_file() and js.is_file()):
        return None
    try:
        doc = json.loads(gzip.decompress(js.read_bytes()))
        meta = doc["meta"]
        if meta.get("key") != key or meta.get("stats_version") != STATS_VERSION:
            log.info("%s: made from other SMILES or an older version; recomputing", js)
            return None
        with np.load(npz, allow_pickle=False) as z:
            mu = z["fcd_mu"]
            sigma = np.zeros((len(mu), len(mu)))
            iu = np.triu_indices(len(mu))
            sigma[iu] = z["fcd_sigma_triu"]
            sigma.T[iu] = z["fcd_sigma_triu"]
            props = {k: z[f"prop_{k}"].astype(np.float64) for k in PROPERTY_NAMES}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        log.warning("%s: unreadable reference statistics (%s); recomputing", npz, exc)
        return None
    return {"n": meta["n"], "fcd_mu": mu, "fcd_sigma": sigma, "frag": doc["Frag"],
            "scaf": doc["Scaf"], "props": props}


def compute_reference_stats(smiles: Sequence[str], name: str = "custom", n_jobs: int | None = None,
                            device: str | None = None, summary: bool = True) -> ReferenceStats:
    """Compute reference statistics from SMILES (``summary=False``: fingerprints only)."""
    key = _smiles_key(smiles)
    chem.sa_score(Chem.MolFromSmiles("CC"))  # import the SA scorer once, before forking
    t0 = time.perf_counter()
    feats = chem.parallel_map(_reference_features, smiles, workers=n_jobs, desc=f"{name} molecules")
    log.info("%s: fingerprints, fragments, scaffolds, properties of %d molecules in %.0f s",
             name, len(smiles), time.perf_counter() - t0)
    feats = [f for f in feats if f is not None]
    if len(feats) < 2:
        raise MolvaeError(f"reference set {name!r} has {len(feats)} valid molecules; need at least 2")
    fps = np.frombuffer(b"".join(f[1] for f in feats), dtype=np.uint8).reshape(len(feats), -1)
    stats = ReferenceStats(name=name, key=key, n=len(feats), fcd_mu=np.zeros(0),
                           fcd_sigma=np.zeros((0, 0)), frag={}, scaf={}, props={}, fps=fps)
    if summary:
        frag: Counter[str] = Counter()
        for f in feats:
            frag.update(f[2])
        stats.frag = dict(frag)
        stats.scaf = dict(Counter(f[3] for f in feats if f[3] is not None))
        values = np.array([f[4] for f in feats], dtype=np.float64)
        stats.props = {k: np.sort(values[~np.isnan(values[:, i]), i])
                       for i, k in enumerate(PROPERTY_NAMES)}
        t0 = time.perf_counter()
        stats.fcd_mu, stats.fcd_sigma = chemnet_statistics([f[0] for f in feats], device=device,
                                                           desc=f"{name} ChemNet")
        log.info("%s: ChemNet activations in %.0f s", name, time.perf_counter() - t0)
    return stats


def _fps_path(folder: Path, name: str, key: str) -> Path:
    return folder / f"{name}-{key}-fps.npz"


def _save_fps(stats: ReferenceStats, folder: Path) -> None:
    path = _fps_path(folder, stats.name, stats.key)
    _atomic_write(path, lambda fh: np.savez_compressed(fh, fps=stats.fps))


def reference_stats(name: str = "test", smiles: Sequence[str] | None = None,
                    n_jobs: int | None = None, device: str | None = None,
                    cache: Path | None = None) -> ReferenceStats:
    """Statistics of a reference set, loaded when saved, otherwise computed once and cached.

    Args:
        name: a bundled set (``test``, ``test_scaffolds``) when ``smiles`` is None, else a
            label for the custom set.
        smiles: a custom reference set; cached under the hash of its SMILES.
        cache: cache folder (default :func:`molvae.data.cache_dir`).

    The summary of a bundled set comes from ``data/reference/`` when it matches the bundled
    SMILES; fingerprints always live in the cache (they are too large to ship).
    """
    if smiles is None:
        smiles = load_reference_smiles(name)
    smiles = list(smiles)
    key = _smiles_key(smiles)
    folder = Path(cache) if cache is not None else data.cache_dir()
    folder = folder / "reference"
    stem = f"{name}-{key}"
    summary = None
    if name in REFERENCE_SETS:
        summary = _load_summary(REFERENCE_DIR, name, key)
    if summary is None:
        summary = _load_summary(folder, stem, key)
    fps_path = _fps_path(folder, name, key)
    fps = None
    if fps_path.is_file():
        try:
            with np.load(fps_path, allow_pickle=False) as z:
                fps = z["fps"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            log.warning("%s: unreadable (%s); recomputing", fps_path, exc)
    if summary is not None and fps is not None:
        return ReferenceStats(name=name, key=key, fps=fps, **summary)
    t0 = time.perf_counter()
    stats = compute_reference_stats(smiles, name, n_jobs=n_jobs, device=device,
                                    summary=summary is None)
    if summary is None:
        save_reference_summary(stats, folder, stem)
    else:
        stats = ReferenceStats(name=name, key=key, fps=stats.fps, **summary)
    _save_fps(stats, folder)
    log.info("reference %s: statistics built in %.0f s, cached in %s", name,
             time.perf_counter() - t0, folder)
    return stats


def build_reference(folder: str | Path = REFERENCE_DIR, names: Sequence[str] = REFERENCE_SETS,
                    n_jobs: int | None = None, device: str | None = None) -> list[Path]:
    """Recompute the shippable summaries of the bundled sets into ``folder`` (their
    fingerprints go to the cache, ready for :func:`reference_stats`)."""
    written = []
    for name in names:
        t0 = time.perf_counter()
        stats = compute_reference_stats(load_reference_smiles(name), name, n_jobs=n_jobs, device=device)
        save_reference_summary(stats, Path(folder), name)
        _save_fps(stats, data.cache_dir() / "reference")
        written += [Path(folder) / f"{name}.npz", Path(folder) / f"{name}.json.gz"]
        log.info("reference %s: %d molecules in %.0f s", name, stats.n, time.perf_counter() - t0)
    return written


# ---------------------------------------------------------------------------- metrics


def fraction_unique(canonical_smiles: Sequence[str], k: int | None = None) -> float:
    """unique@k over valid canonical SMILES; with fewer than ``k`` it warns and uses all."""
    if k is not None:
        if len(canonical_smiles) < k:
            warnings.warn(f"unique@{k}: only {len(canonical_smiles)} valid molecules; "
                          "computed over all of them (as MOSES does)", stacklevel=2)
        canonical_smiles = canonical_smiles[:k]
    if not canonical_smiles:
        return float("nan")
    return len(set(canonical_smiles)) / len(canonical_smiles)


def novelty(canonical_smiles: Sequence[str], train: Sequence[str], n_jobs: int | None = None) -> float:
    """Fraction of unique valid generated molecules absent from ``train`` (canonicalized)."""
    gen = set(canonical_smiles)
    if not gen:
        return float("nan")
    train_set = set(chem.parallel_map(chem.canonical, train, workers=n_jobs, desc="train canonical"))
    return len(gen - train_set) / len(gen)


def _as_reference(ref, default_name: str, n_jobs, device, cache) -> ReferenceStats | None:
    if ref is None or isinstance(ref, ReferenceStats):
        return ref
    if isinstance(ref, str):
        return reference_stats(ref, n_jobs=n_jobs, device=device, cache=cache)
    return reference_stats(f"custom_{default_name}", smiles=list(ref), n_jobs=n_jobs,
                           device=device, cache=cache)


def moses_metrics(generated: Sequence[str | None], train: Sequence[str] | None = None,
                  test: str | Sequence[str] | ReferenceStats | None = "test",
                  test_scaffolds: str | Sequence[str] | ReferenceStats | None = "test_scaffolds",
                  n_jobs: int | None = None, device: str | None = "auto",
                  unique_k: Sequence[int] = (1000, 10000), properties: bool = True,
                  cache: Path | None = None) -> dict[str, float]:
    """The MOSES metric set for generated SMILES (definitions in the module docstring).

    Args:
        generated: generated SMILES in sampling order; ``None``/``''`` count as invalid.
        train: training SMILES; ``Novelty`` is reported only when given.
        test, test_scaffolds: a bundled set name, a list of SMILES, precomputed
            :class:`ReferenceStats`, or ``None`` to skip the ``/Test`` or ``/TestSF`` metrics.
        n_jobs: worker processes for RDKit work (default: all cores).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda`` for ChemNet and similarity.
        properties: add the logP/SA/QED/weight Wasserstein distances (needs ``test``).

    Returns:
        ``{metric: value}`` with MOSES keys; NaN where a metric is undefined (e.g. no valid
        molecule).
    """
    generated = list(generated)
    if not generated:
        raise MolvaeError("no generated molecules to evaluate")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    canon_all = chem.parallel_map(canonical_valid, generated, workers=n_jobs, desc="validity")
    canon = [s for s in canon_all if s is not None]
    metrics: dict[str, float] = {"valid": len(canon) / len(generated)}
    for k in unique_k:
        metrics[f"unique@{k}"] = fraction_unique(canon, k)
    timings["validity"] = time.perf_counter() - t

    refs = {suffix: _as_reference(ref, name, n_jobs, device, cache)
            for name, suffix, ref in (("test", "Test", test), ("test_scaffolds", "TestSF", test_scaffolds))}
    if len(canon) < 2:  # nothing below is defined for fewer than two molecules
        for suffix, ref in refs.items():
            if ref is not None:
                metrics.update({f"{m}/{suffix}": float("nan") for m in ("FCD", "SNN", "Frag", "Scaf")})
        metrics.update({"IntDiv": float("nan"), "IntDiv2": float("nan"),
                        "Filters": float(passes_filters(canon[0])) if canon else float("nan")})
        if train is not None:
            metrics["Novelty"] = novelty(canon, train, n_jobs)
        return metrics

    # Duplicates are computed once and counted with their multiplicity, as MOSES counts them.
    counts = Counter(canon)
    unique = list(counts)
    weights = np.array([counts[s] for s in unique], dtype=np.float64)
    t = time.perf_counter()
    _filter_patterns(), chem.sa_score(Chem.MolFromSmiles("CC"))  # load once, before forking
    feats = chem.parallel_map(_generated_features, unique, workers=n_jobs, desc="molecule features")
    timings["features"] = time.perf_counter() - t
    fps = np.frombuffer(b"".join(f[0] for f in feats), dtype=np.uint8).reshape(len(unique), -1)
    frag: Counter[str] = Counter()
    scaf: Counter[str] = Counter()
    for f, w in zip(feats, weights):
        for piece in f[1]:
            frag[piece] += int(w)
        if f[2] is not None:
            scaf[f[2]] += int(w)
    n = weights.sum()

    t = time.perf_counter()
    if any(ref is not None for ref in refs.values()):
        mu, sigma = chemnet_statistics(unique, weights, device=device, desc="ChemNet")
    timings["chemnet"] = time.perf_counter() - t
    for suffix, ref in refs.items():
        if ref is None:
            continue
        t = time.perf_counter()
        metrics[f"FCD/{suffix}"] = frechet_distance(mu, sigma, ref.fcd_mu, ref.fcd_sigma)
        snn = nearest_similarity(fps, ref.fps, device=device, desc=f"SNN/{suffix}")
        metrics[f"SNN/{suffix}"] = float((snn * weights).sum() / n)
        metrics[f"Frag/{suffix}"] = cosine_similarity(ref.frag, frag)
        metrics[f"Scaf/{suffix}"] = cosine_similarity(ref.scaf, scaf)
        timings[suffix] = time.perf_counter() - t

    t = time.perf_counter()
    div = internal_diversity(fps, weights, powers=(1, 2), device=device)
    metrics["IntDiv"], metrics["IntDiv2"] = div[1], div[2]
    timings["intdiv"] = time.perf_counter() - t
    metrics["Filters"] = float((np.array([f[4] for f in feats]) * weights).sum() / n)
    if train is not None:
        t = time.perf_counter()
        metrics["Novelty"] = novelty(canon, train, n_jobs)
        timings["novelty"] = time.perf_counter() - t
    if properties and refs["Test"] is not None:
        values = np.array([f[3] for f in feats])
        for i, name in enumerate(PROPERTY_NAMES):
            ok = ~np.isnan(values[:, i])
            metrics[name] = float(wasserstein_distance(refs["Test"].props[name], values[ok, i],
                                                       v_weights=weights[ok]))
    log.debug("metric timings (s): %s", {k: round(v, 1) for k, v in timings.items()})
    return metrics


def quick_metrics(generated: Sequence[str | None], train: Sequence[str] | None = None,
                  test: str = "test", n_jobs: int | None = None,
                  device: str | None = "auto") -> dict[str, float]:
    """The MOSES metrics that need no fingerprints of the reference set.

    ``valid``, ``unique@1000``, ``FCD/Test`` (against the shipped ChemNet statistics of a
    bundled set), ``Filters``, ``IntDiv`` and, with ``train``, ``Novelty``. SNN, Frag and Scaf
    need the reference's fingerprints, which are computed once per machine from 176k
    molecules (an hour on a busy 2-core CPU); use :func:`moses_metrics` for those. Values
    equal :func:`moses_metrics`'s.
    """
    generated = list(generated)
    if not generated:
        raise MolvaeError("no generated molecules to evaluate")
    smiles = load_reference_smiles(test)
    summary = _load_summary(REFERENCE_DIR, test, _smiles_key(smiles))
    if summary is None:
        raise MolvaeError(f"no shipped ChemNet statistics for {test!r} in {REFERENCE_DIR}")
    canon = [s for s in chem.parallel_map(canonical_valid, generated, workers=n_jobs, desc="validity")
             if s is not None]
    metrics: dict[str, float] = {"valid": len(canon) / len(generated),
                                 "unique@1000": fraction_unique(canon, 1000)}
    counts = Counter(canon)
    unique = list(counts)
    weights = np.array([counts[s] for s in unique], dtype=np.float64)
    if len(unique) >= 2:
        mu, sigma = chemnet_statistics(unique, weights, device=device, desc="ChemNet")
        metrics["FCD/Test"] = frechet_distance(mu, sigma, summary["fcd_mu"], summary["fcd_sigma"])
        feats = chem.parallel_map(_generated_features, unique, workers=n_jobs, desc="molecule features")
        fps = np.frombuffer(b"".join(f[0] for f in feats), dtype=np.uint8).reshape(len(unique), -1)
        metrics["IntDiv"] = internal_diversity(fps, weights, powers=(1,), device=device)[1]
        metrics["Filters"] = float((np.array([f[4] for f in feats]) * weights).sum() / weights.sum())
    if train is not None:
        metrics["Novelty"] = novelty(canon, train, n_jobs)
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    """A two-column text table of metrics in MOSES order, arrows marking the better direction."""
    keys = [k for k in METRIC_ORDER if k in metrics] + [k for k in metrics if k not in METRIC_ORDER]
    width = max(len(k) for k in keys) if keys else 6
    lines = [f"{'metric':<{width}}  {'value':>8}", "-" * (width + 12)]
    for k in keys:
        v = metrics[k]
        arrow = {True: "↑", False: "↓"}.get(METRIC_ORDER.get(k), " ")
        text = (v if isinstance(v, str) else "nan" if v is None or (isinstance(v, float) and math.isnan(v))
                else f"{v:.4f}")
        lines.append(f"{k:<{width}}  {text:>8} {arrow}")
    return "\n".join(lines)
