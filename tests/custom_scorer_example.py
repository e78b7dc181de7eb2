"""Custom scoring functions used by tests/test_scoring.py, imported by name
(``custom_scorer_example:carbon_fraction``) the way a user's own module would be."""

from __future__ import annotations

from rdkit import Chem

#: Every call appends the batch it was given, so tests can check what was scored.
CALLS: list[list[str]] = []


def carbon_fraction(smiles: list[str]) -> list[float]:
    """Fraction of heavy atoms that are carbon (a stand-in for a docking score or ML model)."""
    CALLS.append(list(smiles))
    out = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None or mol.GetNumHeavyAtoms() == 0:
            out.append(None)
            continue
        out.append(sum(a.GetSymbol() == "C" for a in mol.GetAtoms()) / mol.GetNumHeavyAtoms())
    return out


def length_over(smiles: list[str], scale: float = 10.0) -> list[float]:
    """SMILES length / ``scale``: shows that ``params`` arrive as keyword arguments."""
    return [len(s) / scale for s in smiles]


def one_value(smiles: list[str]) -> list[float]:
    """Broken on purpose: one value whatever the batch size."""
    return [0.5]


NOT_A_FUNCTION = 3


def fails_on_nitrogen(smiles: list[str]) -> list[float]:
    """Raises for the whole batch when one molecule holds nitrogen, as a docking wrapper that
    meets a molecule it cannot prepare does."""
    CALLS.append(list(smiles))
    for s in smiles:
        if "N" in s.upper().replace("NA", ""):
            raise ValueError(f"cannot prepare {s}")
    return [len(s) / 100 for s in smiles]


def odd_values(smiles: list[str]) -> list:
    """Returns, in turn, NaN, inf, None, text and a number: only the last is a score."""
    odd = [float("nan"), float("inf"), None, "3.0", 0.5]
    return [odd[i % len(odd)] for i in range(len(smiles))]
