"""Graph operators: new molecules from good ones by cutting, joining and editing their graphs.

The policy (:mod:`molvae.optimize.policy`) proposes variants of the best molecules through
the decoder, so only variants the decoder writes. These operators make the ones it rarely
writes:

- *crossover*: cut an acyclic single bond in each of two parents and join one part of each,
  a molecule between two good ones (what the medians and MPOs reward);
- *mutation*: one edit of the graph (change an element, add an atom, insert one into a bond,
  remove one, change a bond order, close a 5- or 6-ring, open a ring).

These are the operators of graph GAs (Jensen 2019) and of the GA half of Genetic GFN (Kim et
al. 2024), written here on RDKit's editable molecules. RDKit sanitizes every child. A child
must be one connected molecule, have at least 2 heavy atoms and no ring larger than 8 (none
of these is a MOSES-like molecule), and pass the caller's ``accept`` (in a search: the model's
vocabulary and length, so the fine-tune can learn from it). Every random choice comes from the
caller's numpy generator, so a seeded run proposes the same children again.
"""

from __future__ import annotations

import math
from typing import Callable, Container, Sequence

import numpy as np
from rdkit import Chem

from .. import chem

#: Elements a mutation may put in: the organic subset of the MOSES training set.
ELEMENTS = ("C", "N", "O", "S", "F", "Cl")
_NUM = {e: Chem.GetPeriodicTable().GetAtomicNumber(e) for e in ELEMENTS}
MAX_RING = 8
#: Parents larger than this are not cut or edited: the operators walk all atoms and bonds.
MAX_PARENT_ATOMS = 150
SINGLE, DOUBLE = Chem.BondType.SINGLE, Chem.BondType.DOUBLE


def crossover(a: Chem.Mol, b: Chem.Mol, rng: np.random.Generator) -> Chem.Mol | None:
    """One part of ``a`` joined to one part of ``b`` by a single bond, each cut at a random
    acyclic single bond; ``None`` when either has no such bond or the join is not a molecule."""
    pa, pb = _cut(a, rng), _cut(b, rng)
    if pa is None or pb is None:
        return None
    m = Chem.RWMol(Chem.CombineMols(pa, pb))
    dummies = [atom.GetIdx() for atom in m.GetAtoms() if atom.GetAtomicNum() == 0]
    if len(dummies) != 2:
        return None
    ends = [m.GetAtomWithIdx(d).GetNeighbors()[0].GetIdx() for d in dummies]
    if ends[0] == ends[1]:
        return None
    m.AddBond(ends[0], ends[1], SINGLE)
    for d in sorted(dummies, reverse=True):
        m.RemoveAtom(d)
    return _finish(m)


def _cut(mol: Chem.Mol, rng: np.random.Generator) -> Chem.Mol | None:
    """One of the two parts of ``mol`` cut at a random acyclic single bond, the cut end
    marked by a dummy atom."""
    bonds = [bd.GetIdx() for bd in mol.GetBonds()
             if not bd.IsInRing() and bd.GetBondType() == SINGLE
             and bd.GetBeginAtom().GetAtomicNum() > 1 and bd.GetEndAtom().GetAtomicNum() > 1]
    if not bonds:
        return None
    frag = Chem.FragmentOnBonds(mol, [bonds[int(rng.integers(len(bonds)))]], addDummies=True)
    parts = Chem.GetMolFrags(frag, asMols=True, sanitizeFrags=False)
    return parts[int(rng.integers(len(parts)))] if len(parts) == 2 else None


def mutate(mol: Chem.Mol, rng: np.random.Generator, tries: int = 8) -> Chem.Mol | None:
    """``mol`` with one random edit of its graph (see the module docstring), or ``None`` when
    ``tries`` random edits all failed to give a molecule."""
    if mol.GetNumAtoms() == 0 or mol.GetNumAtoms() > MAX_PARENT_ATOMS:
        return None
    base = Chem.RWMol(mol)
    try:
        Chem.Kekulize(base, clearAromaticFlags=True)  # edits on explicit single/double bonds
    except Exception:  # RDKit raises on molecules it cannot kekulize
        return None
    for _ in range(tries):
        op = _OPS[int(rng.integers(len(_OPS)))]
        m = Chem.RWMol(base)
        try:
            ok = op(m, rng)
        except (RuntimeError, ValueError):  # RDKit's index and valence errors
            ok = False
        if ok:
            child = _finish(m)
            if child is not None:
                return child
    return None


def _element(rng: np.random.Generator, choices: Sequence[str] = ELEMENTS) -> int:
    return _NUM[choices[int(rng.integers(len(choices)))]]


def _free(atom: Chem.Atom) -> bool:
    """Whether ``atom`` has a hydrogen a new bond can replace."""
    return atom.GetFormalCharge() == 0 and atom.GetTotalNumHs() > 0


def _take_h(atom: Chem.Atom) -> None:
    # An explicit H (a pyrrole N after kekulization) is given up for the new bond.
    if atom.GetNumExplicitHs() > 0:
        atom.SetNumExplicitHs(atom.GetNumExplicitHs() - 1)


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))] if items else None


def _change_atom(m: Chem.RWMol, rng) -> bool:
    atom = _pick(rng, [a for a in m.GetAtoms() if a.GetFormalCharge() == 0])
    new = _element(rng)
    if atom is None or atom.GetAtomicNum() == new:
        return False
    atom.SetAtomicNum(new)
    atom.SetNumExplicitHs(0)
    atom.SetNoImplicit(False)
    return True


def _append_atom(m: Chem.RWMol, rng) -> bool:
    atom = _pick(rng, [a for a in m.GetAtoms() if _free(a)])
    if atom is None:
        return False
    new = _element(rng)
    order = SINGLE
    if new in (_NUM["C"], _NUM["N"], _NUM["O"], _NUM["S"]) and atom.GetTotalNumHs() >= 2 \
            and rng.random() < 0.3:
        order = DOUBLE  # =O, =C, =N: carbonyls and imines are common in drug-like molecules
    i = atom.GetIdx()
    _take_h(atom)
    if order == DOUBLE:
        _take_h(atom)
    j = m.AddAtom(Chem.Atom(new))
    m.AddBond(i, j, order)
    return True


def _insert_atom(m: Chem.RWMol, rng) -> bool:
    bond = _pick(rng, [b for b in m.GetBonds() if b.GetBondType() == SINGLE])
    if bond is None:
        return False
    i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
    m.RemoveBond(i, j)
    k = m.AddAtom(Chem.Atom(_element(rng, ("C", "N", "O", "S"))))
    m.AddBond(i, k, SINGLE)
    m.AddBond(k, j, SINGLE)
    return True


def _delete_atom(m: Chem.RWMol, rng) -> bool:
    atom = _pick(rng, [a for a in m.GetAtoms() if a.GetDegree() in (1, 2)])
    if atom is None or m.GetNumAtoms() <= 2:
        return False
    nbrs = [n.GetIdx() for n in atom.GetNeighbors()]
    if len(nbrs) == 2:
        if m.GetBondBetweenAtoms(*nbrs) is not None:
            return False
        m.AddBond(nbrs[0], nbrs[1], SINGLE)  # the chain closes over the removed atom
    m.RemoveAtom(atom.GetIdx())
    return True


def _change_bond(m: Chem.RWMol, rng) -> bool:
    bond = _pick(rng, [b for b in m.GetBonds() if b.GetBondType() in (SINGLE, DOUBLE)])
    if bond is None:
        return False
    if bond.GetBondType() == DOUBLE:
        bond.SetBondType(SINGLE)
        return True
    a, b = bond.GetBeginAtom(), bond.GetEndAtom()
    if not (_free(a) and _free(b)):
        return False
    _take_h(a)
    _take_h(b)
    bond.SetBondType(DOUBLE)
    return True


def _add_ring(m: Chem.RWMol, rng) -> bool:
    free = [a.GetIdx() for a in m.GetAtoms() if _free(a)]
    if len(free) < 2:
        return False
    dist = Chem.GetDistanceMatrix(m)
    pairs = [(i, j) for x, i in enumerate(free) for j in free[x + 1:] if dist[i, j] in (4, 5)]
    pair = _pick(rng, pairs)
    if pair is None:
        return False
    for i in pair:
        _take_h(m.GetAtomWithIdx(i))
    m.AddBond(pair[0], pair[1], SINGLE)   # closes a 5- or 6-membered ring
    return True


def _open_ring(m: Chem.RWMol, rng) -> bool:
    info = m.GetRingInfo()
    bond = _pick(rng, [b for b in m.GetBonds()
                       if b.GetBondType() == SINGLE and info.NumBondRings(b.GetIdx()) == 1])
    if bond is None:
        return False
    m.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    return True


_OPS = (_change_atom, _append_atom, _insert_atom, _delete_atom, _change_bond, _add_ring, _open_ring)


def _finish(m: Chem.RWMol) -> Chem.Mol | None:
    """The sanitized molecule, or ``None`` unless it is one connected molecule of at least 2
    heavy atoms with no ring larger than :data:`MAX_RING`."""
    try:
        mol = m.GetMol()
        mol.UpdatePropertyCache(strict=False)
        Chem.SanitizeMol(mol)
    except Exception:  # valence and kekulization errors: not a molecule
        return None
    if mol.GetNumHeavyAtoms() < 2 or len(Chem.GetMolFrags(mol)) != 1:
        return None
    if any(len(r) > MAX_RING for r in mol.GetRingInfo().AtomRings()):
        return None
    return mol


def offspring(parents: Sequence[str], n: int, rng: np.random.Generator, known: Container[str] = (),
              accept: Callable[[str], bool] | None = None, mutation: float = 0.5,
              tries_per_child: int = 10, weights: Sequence[float] | None = None) -> list[str]:
    """Up to ``n`` new molecules (canonical SMILES, none in ``known``, no repeats) made from
    ``parents`` (SMILES, drawn uniformly, or with probabilities ``weights``): a crossover of two, then a mutation with
    probability ``mutation`` (always when the crossover fails, or with one parent).

    Children with fewer heavy atoms than half the parents' mean (rounded down) are dropped.
    Parents that RDKit cannot read are skipped; gives fewer than ``n`` when
    ``tries_per_child * n`` attempts did not find them (a pool of one small molecule).
    """
    if n <= 0:
        return []
    if weights is not None and len(weights) != len(parents):
        raise ValueError(f"{len(weights)} weights for {len(parents)} parents")
    ws = [1.0] * len(parents) if weights is None else [float(w) for w in weights]
    pairs = [(m, w) for m, w in zip((chem.to_mol(s) for s in parents), ws)
             if m is not None and 0 < m.GetNumAtoms() <= MAX_PARENT_ATOMS]
    mols = [m for m, _ in pairs]
    if not mols:
        return []
    p = None
    if weights is not None:
        p = np.array([w for _, w in pairs], dtype=float)
        if not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
            raise ValueError("parent weights must be finite, >= 0 and not all 0")
        p = p / p.sum()

    def pick() -> Chem.Mol:
        # Uniform draws keep their old call, so unweighted runs propose exactly as before.
        return mols[int(rng.integers(len(mols)))] if p is None else mols[int(rng.choice(len(mols), p=p))]

    # A crossover that keeps two small ends makes a fragment (CC, CN) that wastes an oracle
    # call: children must keep half the parents' mean size.
    smallest = max(2, math.floor(0.5 * np.mean([m.GetNumHeavyAtoms() for m in mols])))
    out: list[str] = []
    made: set[str] = set()
    for _ in range(tries_per_child * n):
        if len(out) >= n:
            break
        a = pick()
        child = None
        if len(mols) > 1:
            child = crossover(a, pick(), rng)
        if child is None or rng.random() < mutation:
            child = mutate(child if child is not None else a, rng)
        if child is None or child.GetNumHeavyAtoms() < smallest:
            continue
        s = chem.canonical(Chem.MolToSmiles(child))
        if s is None or s in made or s in known or not chem.is_valid_molecule(s):
            continue
        made.add(s)
        if accept is not None and not accept(s):
            continue
        out.append(s)
    return out
