"""Chemistry with RDKit: standardization, properties, fingerprints, alerts, parallel batches.

Functions take SMILES strings or RDKit molecules and never raise on bad chemistry: they
return ``None`` (or a reason string) so a batch of a million molecules is never stopped by
one broken row.

Strings are checked before RDKit sees them: RDKit's SMILES writer recurses once per atom of
a chain and kills the interpreter with a segfault at about 20,000 atoms (measured: a chain
of 17,000 carbons is written, 20,000 crash, with the default 8 MB stack), and it
reads ``"CC O"`` as ethane named ``O``. So :func:`to_mol` refuses strings longer than
:data:`MAX_PARSE_CHARS` or with whitespace or control characters inside, and
:func:`standardize` says why.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from rdkit import Chem, DataStructs, RDConfig, RDLogger
from rdkit.Chem import QED, Crippen, Descriptors, Lipinski, rdMolDescriptors
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.Chem import rdFingerprintGenerator

RDLogger.DisableLog("rdApp.*")  # invalid molecules are reported by us, row by row

# ---------------------------------------------------------------------------- parsing


#: Longest SMILES :func:`standardize` accepts by default. MOSES SMILES are under 100
#: characters and a molecule of 100 SELFIES tokens (the default ``max_len``) needs well under
#: 1,000, so this only refuses what no model here could learn; ``data.prepare`` raises it
#: with ``--max-len`` (10 characters per token).
MAX_SMILES_CHARS = 1_000
#: Longest string :func:`to_mol` hands to RDKit at all: half the chain length that crashes
#: RDKit's writer (see the module docstring).
MAX_PARSE_CHARS = 10_000
#: Elements of "organic" molecules kept by :func:`standardize` (with carbon required):
#: the elements of drug-like and MOSES/ZINC/ChEMBL-style organic chemistry. Metals, noble
#: gases and actinides are refused with the element named.
ORGANIC_ELEMENTS = frozenset({"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Se", "Br", "I"})


def short(text: Any, limit: int = 80) -> str:
    """``repr`` of user input cut to ``limit`` characters, for error messages."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _bad_character(text: str) -> str | None:
    """Why ``text`` cannot be one SMILES by its characters alone, or ``None``."""
    if text.isascii() and text.isprintable() and " " not in text:
        return None
    i, ch = next((i, c) for i, c in enumerate(text) if not (c.isascii() and c.isprintable()) or c == " ")
    if ch.isspace():
        return (f"invalid SMILES: whitespace {ch!r} inside it at position {i + 1} (RDKit would read "
                f"only {short(text[:i], 40)} and drop the rest)")
    return f"invalid SMILES: character {ch!r} at position {i + 1} cannot be part of a SMILES"


def to_mol(smiles: str | None) -> Chem.Mol | None:
    """Parse a SMILES string into a sanitized RDKit molecule, or ``None`` if it is invalid.

    Leading and trailing whitespace is ignored; strings longer than :data:`MAX_PARSE_CHARS`,
    or with whitespace or control characters inside, are ``None`` without reaching RDKit.
    """
    if smiles is None or not isinstance(smiles, str):
        return None
    text = smiles.strip()
    if not text or len(text) > MAX_PARSE_CHARS or _bad_character(text) is not None:
        return None
    try:
        return Chem.MolFromSmiles(text)
    except Exception:  # RDKit raises on some pathological inputs instead of returning None
        return None


def canonical(smiles: str | None, isomeric: bool = True) -> str | None:
    """Canonical SMILES of ``smiles`` (no other standardization), or ``None`` if invalid."""
    mol = to_mol(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return Chem.MolToSmiles(mol, isomericSmiles=isomeric)


_uncharger = None
_fragment_chooser = None


def _not_organic(mol: Chem.Mol) -> str | None:
    symbols = {a.GetSymbol() for a in mol.GetAtoms()}
    odd = sorted(symbols - ORGANIC_ELEMENTS)
    if odd:
        allowed = " ".join(sorted(ORGANIC_ELEMENTS, key=lambda e: Chem.GetPeriodicTable().GetAtomicNumber(e)))
        what = "a dummy atom *" if odd == ["*"] else f"element {', '.join(odd)}"
        return f"not an organic molecule: {what} (organic elements: {allowed})"
    if "C" not in symbols:
        return f"not an organic molecule: no carbon in {Chem.MolToSmiles(mol)}"
    return None


def standardize(smiles: Any, keep_stereo: bool = True,
                max_chars: int = MAX_SMILES_CHARS) -> tuple[str | None, str | None]:
    """Standardize one molecule: parse, keep the largest fragment, neutralize, canonicalize.

    - Strings longer than ``max_chars``, or with whitespace or control characters inside,
      are refused before RDKit parses them (see the module docstring).
    - Salts and solvents are stripped by keeping the largest organic fragment. What is
      kept must be organic: contain carbon, and only :data:`ORGANIC_ELEMENTS` (so NaCl,
      water, ``[U+6]`` or ``[Fe+2]`` alone are refused with the reason, never kept as
      ``Cl``, ``O`` or a bare metal).
    - Charges are neutralized only where a proton can be added or removed (RDKit's
      ``Uncharger``); quaternary ammonium and nitro groups keep their formal charges, since
      neutralizing those would change the compound.
    - ``keep_stereo=False`` removes tetrahedral and double-bond stereochemistry.

    Returns:
        ``(canonical_isomeric_smiles, None)`` on success, ``(None, reason)`` otherwise.
    """
    global _uncharger, _fragment_chooser
    if smiles is None or (isinstance(smiles, float) and math.isnan(smiles)):
        return None, "empty SMILES"
    if not isinstance(smiles, str):
        smiles = str(smiles)
    text = smiles.strip()
    if not text:
        return None, "empty SMILES"
    if len(text) > min(max_chars, MAX_PARSE_CHARS):
        return None, (f"too long: {len(text):,} characters > {min(max_chars, MAX_PARSE_CHARS):,} "
                      "(refused before parsing; drug-sized molecules need under 200)")
    bad = _bad_character(text)
    if bad is not None:
        return None, bad
    mol = to_mol(text)
    if mol is None:
        return None, "invalid SMILES (RDKit could not parse or sanitize it)"
    if mol.GetNumAtoms() == 0:
        return None, "no atoms"
    try:
        if _fragment_chooser is None:
            _fragment_chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
            _uncharger = rdMolStandardize.Uncharger()
        mol = _fragment_chooser.choose(mol)
        reason = _not_organic(mol)
        if reason is not None:
            return None, reason
        mol = _uncharger.uncharge(mol)
        Chem.SanitizeMol(mol)
        if not keep_stereo:
            Chem.RemoveStereochemistry(mol)
        out = Chem.MolToSmiles(mol, isomericSmiles=True)
    except Exception as exc:  # sanitization failures after neutralization
        return None, f"standardization failed: {exc}"
    if to_mol(out) is None:
        return None, "standardized SMILES does not parse back"
    return out, None


def is_valid_molecule(smiles: str | None, min_heavy_atoms: int = 2) -> bool:
    """A generated molecule counts as valid when RDKit parses it and it has at least
    ``min_heavy_atoms`` heavy atoms (an empty or one-atom decode is not a molecule)."""
    mol = to_mol(smiles)
    return mol is not None and mol.GetNumHeavyAtoms() >= min_heavy_atoms


# ---------------------------------------------------------------------------- properties


@lru_cache(maxsize=1)
def _sascorer():
    # The SA score ships in RDKit's Contrib folder rather than as an importable module.
    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # type: ignore

    return sascorer


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009): 1 = easy … 10 = hard."""
    return float(_sascorer().calculateScore(mol))


def largest_ring_size(mol: Chem.Mol) -> int:
    rings = mol.GetRingInfo().AtomRings()
    return max((len(r) for r in rings), default=0)


def penalized_logp(mol: Chem.Mol) -> float:
    """Penalized logP, unnormalized variant (You et al. 2018 GCPN; MolDQN; LIMO)::

        pLogP = Crippen logP − SA score − max(0, largest ring size − 6)

    No ZINC mean/std normalization (that is the JT-VAE variant). The score rewards long
    carbon chains without bound, so benchmarks cap heavy atoms when they report it.
    """
    return float(Crippen.MolLogP(mol) - sa_score(mol) - max(0, largest_ring_size(mol) - 6))


def lipinski_violations(mol: Chem.Mol) -> int:
    """Count of Lipinski rule-of-five violations (MW > 500, logP > 5, HBD > 5, HBA > 10)."""
    return int(
        (Descriptors.MolWt(mol) > 500)
        + (Crippen.MolLogP(mol) > 5)
        + (Lipinski.NumHDonors(mol) > 5)
        + (Lipinski.NumHAcceptors(mol) > 10)
    )


#: Property name -> function of an RDKit molecule. Names are the column names in outputs.
PROPERTIES: dict[str, Callable[[Chem.Mol], float]] = {
    "qed": lambda m: float(QED.qed(m)),
    "logp": lambda m: float(Crippen.MolLogP(m)),
    "sa": sa_score,
    "penalized_logp": penalized_logp,
    "mw": lambda m: float(Descriptors.MolWt(m)),
    "tpsa": lambda m: float(rdMolDescriptors.CalcTPSA(m)),
    "hbd": lambda m: float(Lipinski.NumHDonors(m)),
    "hba": lambda m: float(Lipinski.NumHAcceptors(m)),
    "rotatable_bonds": lambda m: float(rdMolDescriptors.CalcNumRotatableBonds(m)),
    "heavy_atoms": lambda m: float(m.GetNumHeavyAtoms()),
    "rings": lambda m: float(rdMolDescriptors.CalcNumRings(m)),
    "lipinski_violations": lambda m: float(lipinski_violations(m)),
}

MAIN_PROPERTIES = ("qed", "logp", "sa", "mw")


def properties(smiles: str, names: Sequence[str] = tuple(PROPERTIES)) -> dict[str, float]:
    """Properties of one molecule; NaN for every property if the SMILES is invalid."""
    mol = to_mol(smiles)
    out = {}
    for name in names:
        try:
            out[name] = PROPERTIES[name](mol) if mol is not None else float("nan")
        except KeyError:
            raise
        except Exception:
            out[name] = float("nan")
    return out


# ---------------------------------------------------------------------------- fingerprints


@lru_cache(maxsize=4)
def _morgan_generator(radius: int, n_bits: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


def morgan_fp(smiles_or_mol: str | Chem.Mol, radius: int = 2, n_bits: int = 2048):
    """Morgan (ECFP4 by default) bit vector, or ``None`` for an invalid molecule."""
    mol = to_mol(smiles_or_mol) if isinstance(smiles_or_mol, str) else smiles_or_mol
    if mol is None:
        return None
    return _morgan_generator(radius, n_bits).GetFingerprint(mol)


def tanimoto(query: str, others: Sequence[str], radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """Tanimoto similarity of ``query`` to each of ``others`` (NaN where a SMILES is invalid)."""
    q = morgan_fp(query, radius, n_bits)
    fps = [morgan_fp(s, radius, n_bits) for s in others]
    out = np.full(len(others), np.nan)
    if q is None:
        return out
    ok = [i for i, f in enumerate(fps) if f is not None]
    if ok:
        out[ok] = DataStructs.BulkTanimotoSimilarity(q, [fps[i] for i in ok])
    return out


def fingerprint_matrix(smiles: Sequence[str | Chem.Mol], radius: int = 2, n_bits: int = 2048,
                       counts: bool = False) -> np.ndarray:
    """Morgan bits as a uint8 matrix (rows = molecules); invalid molecules give zero rows.
    ``counts``: how many times each hashed environment occurs instead (at most 255)."""
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, s in enumerate(smiles):
        if counts:
            mol = to_mol(s) if isinstance(s, str) else s
            if mol is not None:
                out[i] = np.minimum(_morgan_generator(radius, n_bits).GetCountFingerprintAsNumPy(mol), 255)
            continue
        fp = morgan_fp(s, radius, n_bits)
        if fp is not None:
            DataStructs.ConvertToNumpyArray(fp, out[i])
    return out


# ---------------------------------------------------------------------------- alerts


@lru_cache(maxsize=1)
def _alert_catalog() -> FilterCatalog:
    params = FilterCatalogParams()
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.PAINS)
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.BRENK)
    return FilterCatalog(params)


def structural_alerts(smiles_or_mol: str | Chem.Mol) -> list[str]:
    """Names of the PAINS and Brenk alerts the molecule matches (empty list = clean)."""
    mol = to_mol(smiles_or_mol) if isinstance(smiles_or_mol, str) else smiles_or_mol
    if mol is None:
        return ["invalid molecule"]
    return [m.GetDescription() for m in _alert_catalog().GetMatches(mol)]


# ---------------------------------------------------------------------------- batches


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def parallel_map(
    fn: Callable[[Any], Any],
    items: Sequence[Any] | Iterable[Any],
    workers: int | None = None,
    chunksize: int = 512,
    desc: str | None = None,
    progress: bool = True,
    min_parallel: int = 4096,
) -> list[Any]:
    """``[fn(x) for x in items]`` over a process pool with a progress bar, order kept.

    ``fn`` must be a module-level function (it is sent to worker processes). Small inputs
    (fewer than ``min_parallel`` items) or ``workers=1`` run in this process, since starting
    a pool costs more than it saves there; so does a call from a daemonic process, which may
    not start one.
    """
    from .progress import progress as bar

    items = list(items)
    workers = default_workers() if workers is None else max(1, workers)
    show = progress and desc is not None and len(items) >= 1000
    # A daemonic process (a worker of the caller's own multiprocessing.Pool, or of molvae's
    # optimize workers) may not start children: do the work in place there.
    if workers == 1 or len(items) < min_parallel or mp.current_process().daemon:
        return [fn(x) for x in bar(items, desc=desc, disable=not show)]
    # fork: workers inherit the imported modules, so start-up is milliseconds, not seconds.
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        it = pool.imap(fn, items, chunksize=chunksize)
        return list(bar(it, total=len(items), desc=desc, disable=not show))


def _standardize_keep_stereo(s):
    return standardize(s, True)


def _standardize_drop_stereo(s):
    return standardize(s, False)


def standardize_many(smiles: Sequence[Any], keep_stereo: bool = True, workers: int | None = None,
                     progress: bool = True) -> list[tuple[str | None, str | None]]:
    """:func:`standardize` over many molecules on all cores."""
    fn = _standardize_keep_stereo if keep_stereo else _standardize_drop_stereo
    return parallel_map(fn, smiles, workers=workers, desc="standardize", progress=progress)


def properties_many(smiles: Sequence[str], names: Sequence[str] = MAIN_PROPERTIES,
                    workers: int | None = None, progress: bool = True):
    """A DataFrame of the named properties, one row per SMILES, computed on all cores."""
    import pandas as pd
    from functools import partial

    names = tuple(names)
    # partial of a module-level function pickles, so workers compute only the names asked for
    rows = parallel_map(partial(properties, names=names), smiles, workers=workers,
                        desc="properties", progress=progress)
    return pd.DataFrame(rows, columns=list(names))
