"""Graph operators: new molecules from good ones by cutting, joining and editing their graphs.

The policy (:mod:`molvae.optimize.policy`) proposes variants of the best molecules through
the decoder, so only variants the decoder writes. These operators make the ones it rarely
writes:

- *crossover*: cut an acyclic single bond in each of two parents and join one part of each,
  a molecule between two good ones (what the medians and MPOs reward);
- *ring crossover*: cut a ring of each parent at two bonds and join one part of each by two
  new bonds, so that a ring is built of pieces of both (a pyridine's N into a toluene's ring),
  which no cut at an acyclic bond can make;
- *mutation*: one edit of the graph (change an element, add an atom, insert one into a bond,
  remove one, change a bond order, close a 5- or 6-ring, open a ring);
- *SELFIES edits* (:func:`selfies_edits`): replace, insert or delete one token of a parent's
  SELFIES (two a quarter of the time), as STONED does (Nigam et al. 2021). Every token string
  is a molecule, and an edit keeps the rest of the string, so the child is the parent with
  one local change that a graph edit may not make (a branch moved, a ring bond re-read).

These are the operators of graph GAs (Jensen 2019) and of the GA half of Genetic GFN (Kim et
al. 2024), written here on RDKit's editable molecules. RDKit sanitizes every child. A child
must be one connected molecule, have at least 2 heavy atoms and no ring larger than 8 (none
of these is a MOSES-like molecule), and pass the caller's ``accept`` (in a search: the model's
vocabulary and length, so the fine-tune can learn from it). Every random choice comes from the
caller's numpy generator, so a seeded run proposes the same children again.
"""

from __future__ import annotations

import math
from functools import lru_cache
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


def crossover(a: Chem.Mol, b: Chem.Mol, rng: np.random.Generator,
              cuts: tuple[Sequence[int], Sequence[int]] | None = None) -> Chem.Mol | None:
    """One part of ``a`` joined to one part of ``b`` by a single bond, each cut at a random
    acyclic single bond; ``None`` when either has no such bond or the join is not a molecule.
    ``cuts``: the two parents' :func:`cuttable` bonds, when the caller has them already."""
    ca, cb = cuts if cuts is not None else (None, None)
    cut_a, cut_b = _cut(a, rng, ca), _cut(b, rng, cb)
    if cut_a is None or cut_b is None:
        return None
    (pa, da), (pb, db) = cut_a, cut_b
    m = Chem.RWMol(Chem.CombineMols(pa, pb))
    dummies = da + tuple(pa.GetNumAtoms() + i for i in db)  # CombineMols puts b's atoms after a's
    if len(dummies) != 2:
        return None
    ends = [m.GetAtomWithIdx(d).GetNeighbors()[0].GetIdx() for d in dummies]
    if ends[0] == ends[1]:
        return None
    m.AddBond(ends[0], ends[1], SINGLE)
    for d in sorted(dummies, reverse=True):
        m.RemoveAtom(d)
    return _finish(m)


def ring_crossover(a: Chem.Mol, b: Chem.Mol, rng: np.random.Generator, tries: int = 10) -> Chem.Mol | None:
    """A ring of ``a`` and a ring of ``b`` recombined: each is cut at two ring bonds
    (:func:`_cut_ring`), and one part of each is joined to one of the other by two bonds;
    ``None`` when either has no ring to cut or ``tries`` joins all failed to give a molecule
    (most cuts close a 3-, 4-, 7- or 8-ring, which is refused).

    The join's bonds take the order of one of the two cut bonds they replace, so a Kekulé
    ring gets its alternation back and RDKit perceives it as aromatic again."""
    for _ in range(tries):
        pa, pb = _cut_ring(a, rng), _cut_ring(b, rng)
        if pa is None or pb is None:
            return None
        child = _join_rings(pa, pb, rng)
        if child is not None:
            return child
    return None


def _join_rings(pa: Chem.Mol, pb: Chem.Mol, rng: np.random.Generator) -> Chem.Mol | None:
    m = Chem.RWMol(Chem.CombineMols(pa, pb))
    dummies = [atom.GetIdx() for atom in m.GetAtoms() if atom.GetAtomicNum() == 0]
    if len(dummies) != 4:
        return None
    # CombineMols keeps the atom order: the first two dummies are a's, the last two b's.
    ends = []
    for d in dummies:
        bond = m.GetAtomWithIdx(d).GetBonds()[0]
        ends.append((bond.GetOtherAtomIdx(d), bond.GetBondType()))
    ea, eb = ends[:2], ends[2:]
    if rng.random() < 0.5:
        eb = eb[::-1]
    joins = []
    for (i, oi), (j, oj) in zip(ea, eb):
        if m.GetBondBetweenAtoms(i, j) is not None:
            return None  # both cut bonds at one atom on each side: the join would be a double edge
        m.AddBond(i, j, oi if oi == oj or rng.random() < 0.5 else oj)
        joins.append((i, j))
    for d in sorted(dummies, reverse=True):
        m.RemoveAtom(d)
    child = _finish(m)
    if child is None or child.HasSubstructMatch(_STRAINED):
        return None
    # The rings the join closes must be drug-like 5- and 6-rings (GB-GA's rule too).
    info = child.GetRingInfo()
    shift = lambda i: i - sum(d < i for d in dummies)  # noqa: E731 (indices after the removals)
    for i, j in joins:
        bond = child.GetBondBetweenAtoms(shift(i), shift(j))
        if bond is None or info.MinBondRingSize(bond.GetIdx()) not in (5, 6):
            return None
    return child


#: An allene in a ring, or a double bond in a 3- or 4-ring: strained, and not in drug-like sets.
_STRAINED = Chem.MolFromSmarts("[$([R]=[R]=[R]),$([r3,r4]=[r3,r4])]")
_RING_PATH = Chem.MolFromSmarts("[R]@[R]@[R]@[R]")     # cut the first and the last bond
_RING_BRANCH = Chem.MolFromSmarts("[R]@[R;!D2]@[R]")   # cut both bonds of the middle atom


def _cut_ring(mol: Chem.Mol, rng: np.random.Generator, tries: int = 4) -> Chem.Mol | None:
    """One of the two parts of ``mol`` (Kekulé form) cut at two bonds of one ring: the first
    and last bond of a path of four ring atoms, or the two ring bonds of a ring atom that
    carries a substituent or a fused ring (Jensen's GB-GA cuts rings these two ways). The
    cut ends are marked by dummy atoms that keep the cut bonds' orders."""
    if mol.GetNumAtoms() > MAX_PARENT_ATOMS or not mol.GetRingInfo().NumRings():
        return None
    k = Chem.RWMol(mol)
    try:
        Chem.Kekulize(k, clearAromaticFlags=True)
    except Exception:  # RDKit raises on molecules it cannot kekulize
        return None
    for _ in range(tries):
        path = rng.random() < 0.5
        hits = k.GetSubstructMatches(_RING_PATH if path else _RING_BRANCH)
        if not hits:
            continue
        h = hits[int(rng.integers(len(hits)))]
        pairs = ((h[0], h[1]), (h[2], h[3])) if path else ((h[0], h[1]), (h[1], h[2]))
        bonds = [k.GetBondBetweenAtoms(i, j) for i, j in pairs]
        frag = Chem.FragmentOnBonds(k, [bd.GetIdx() for bd in bonds], addDummies=True,
                                    bondTypes=[bd.GetBondType() for bd in bonds])
        parts = Chem.GetMolFrags(frag, asMols=True, sanitizeFrags=False)
        if len(parts) == 2:  # a fused or bridged ring stays in one piece: try another cut
            return parts[int(rng.integers(2))]
    return None


def cuttable(mol: Chem.Mol) -> tuple[int, ...]:
    """Indices of the bonds :func:`crossover` may cut: acyclic single bonds between heavy atoms."""
    return tuple(bd.GetIdx() for bd in mol.GetBonds()
                 if not bd.IsInRing() and bd.GetBondType() == SINGLE
                 and bd.GetBeginAtom().GetAtomicNum() > 1 and bd.GetEndAtom().GetAtomicNum() > 1)


class _Cuts(tuple):
    """A parent's :func:`cuttable` bonds, with the two parts of each cut made so far: a search
    cuts the same few best molecules at the same bonds batch after batch, and fragmenting
    was a seventh of making a child. The parts are only read (joined into a new molecule)."""

    def __new__(cls, bonds):
        self = super().__new__(cls, bonds)
        self.parts = {}
        return self


def _cut(mol: Chem.Mol, rng: np.random.Generator,
         bonds: Sequence[int] | None = None) -> tuple[Chem.Mol, tuple[int, ...]] | None:
    """One of the two parts of ``mol`` cut at a random acyclic single bond (one of ``bonds``,
    its :func:`cuttable` bonds), the cut end marked by a dummy atom, with the indices of the
    part's dummy atoms (looping over its atoms in Python cost more than the cut)."""
    if bonds is None:
        bonds = cuttable(mol)
    if not bonds:
        return None
    bond = bonds[int(rng.integers(len(bonds)))]
    made = getattr(bonds, "parts", None)
    parts = made.get(bond) if made is not None else None
    if parts is None:
        frag = Chem.FragmentOnBonds(mol, [bond], addDummies=True)
        parts = tuple((part, tuple(a.GetIdx() for a in part.GetAtoms() if a.GetAtomicNum() == 0))
                      for part in Chem.GetMolFrags(frag, asMols=True, sanitizeFrags=False))
        if made is not None:
            made[bond] = parts
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


def _drawer(p: np.ndarray, rng: np.random.Generator) -> Callable[[], int]:
    """Draws of one index with probabilities ``p``, the same as ``rng.choice(len(p), p=p)``
    each time (which draws one uniform number and looks it up in this table), without
    checking ``p`` and building the table again for every draw."""
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return lambda: int(cdf.searchsorted(rng.random(), side="right"))


def donor_parents(smiles: Sequence[str]) -> list[tuple[Chem.Mol, _Cuts]]:
    """``smiles`` read once as :func:`offspring`'s ``donors`` (those RDKit cannot read, or too
    large to cut, left out): a donor set lasts a run, larger than ``_parent``'s cache."""
    out = []
    for s in smiles:
        m = chem.to_mol(s) if isinstance(s, str) else None
        if m is not None and 0 < m.GetNumAtoms() <= MAX_PARENT_ATOMS:
            out.append((m, _Cuts(cuttable(m))))
    return out


@lru_cache(maxsize=1024)
def _parent(smiles: str) -> tuple[Chem.Mol, _Cuts] | None:
    """A parent's molecule and its :func:`cuttable` bonds, or ``None`` when it cannot be one.
    Cached: a search draws on the same best molecules batch after batch (a pool of 64), and
    no operator edits a parent in place (each works on a copy or a fragment)."""
    m = chem.to_mol(smiles)
    if m is None or not 0 < m.GetNumAtoms() <= MAX_PARENT_ATOMS:
        return None
    return m, _Cuts(cuttable(m))


def offspring(parents: Sequence[str], n: int, rng: np.random.Generator, known: Container[str] = (),
              accept: Callable[[str], bool] | None = None, mutation: float = 0.5,
              tries_per_child: int = 10, weights: Sequence[float] | None = None,
              ring: float = 0.0, read: dict[str, Chem.Mol] | None = None,
              donors: Sequence[tuple[Chem.Mol, _Cuts]] = (), donor: float = 0.0) -> list[str]:
    """Up to ``n`` new molecules (canonical SMILES, none in ``known``, no repeats) made from
    ``parents`` (SMILES, drawn uniformly, or with probabilities ``weights``): a crossover of two
    (a :func:`ring_crossover` with probability ``ring``, else :func:`crossover`), then a
    mutation with probability ``mutation`` (always when the crossover fails, or with one parent).
    With ``donor`` > 0 that share of the crossovers takes its second parent uniformly from
    ``donors`` (:func:`donor_parents`: molecules that were never scored, such as training
    molecules), which brings in groups that no parent has.

    Children with fewer heavy atoms than half the parents' mean (rounded down) are dropped.
    Parents that RDKit cannot read are skipped; gives fewer than ``n`` when
    ``tries_per_child * n`` attempts did not find them (a pool of one small molecule).
    ``read``: filled with each child's molecule as RDKit reads its SMILES, for the caller's
    fingerprints.
    """
    if n <= 0:
        return []
    if weights is not None and len(weights) != len(parents):
        raise ValueError(f"{len(weights)} weights for {len(parents)} parents")
    ws = [1.0] * len(parents) if weights is None else [float(w) for w in weights]
    pairs = [(par, w) for par, w in zip((_parent(s) if isinstance(s, str) else None for s in parents), ws) if par is not None]
    mols = [par[0] for par, _ in pairs]
    cuts = {id(m): par[1] for m, (par, _) in zip(mols, pairs)}
    if not mols:
        return []
    p = None
    if weights is not None:
        p = np.array([w for _, w in pairs], dtype=float)
        if not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
            raise ValueError("parent weights must be finite, >= 0 and not all 0")
        p = p / p.sum()

    draw = None if p is None else _drawer(p, rng)

    def pick() -> Chem.Mol:
        # Uniform draws keep their old call, so unweighted runs propose exactly as before.
        return mols[int(rng.integers(len(mols)))] if draw is None else mols[draw()]

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
        from_donor = donor > 0 and bool(donors) and rng.random() < donor
        if len(mols) > 1 or from_donor:
            # Drawn only when asked for, so runs without ring crossover make the same children.
            join = ring_crossover if ring > 0 and rng.random() < ring else crossover
            if from_donor:
                b, b_cuts = donors[int(rng.integers(len(donors)))]
            else:
                b = pick()
                b_cuts = cuts[id(b)]
            child = crossover(a, b, rng, (cuts[id(a)], b_cuts)) if join is crossover \
                else join(a, b, rng)
        if child is None or rng.random() < mutation:
            child = mutate(child if child is not None else a, rng)
        if child is None or child.GetNumHeavyAtoms() < smallest:
            continue
        # chem.canonical, then chem.is_valid_molecule of its output, with one parse where
        # the child's SMILES was canonical already (the usual case): the same answers.
        raw = Chem.MolToSmiles(child)
        mol = chem.to_mol(raw)
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        s = Chem.MolToSmiles(mol)
        if s in made or s in known:
            continue
        if s != raw:
            mol = chem.to_mol(s)
        if mol is None or mol.GetNumHeavyAtoms() < 2:
            continue
        made.add(s)
        if read is not None:
            read[s] = mol
        if accept is not None and not accept(s):
            continue
        out.append(s)
    return out


#: Share of SELFIES children that get a second edit (STONED's one- and two-token mutants).
TWO_EDITS = 0.25


def selfies_edits(parents: Sequence[str], n: int, rng: np.random.Generator, alphabet: Sequence[str],
                  known: Container[str] = (), weights: Sequence[float] | None = None,
                  max_tokens: int | None = None, accept: Callable[[str], bool] | None = None,
                  tries_per_child: int = 10) -> list[str]:
    """Up to ``n`` new molecules (canonical SMILES, none in ``known`` or among the parents, no
    repeats), each a parent's SELFIES (parents drawn uniformly, or with probabilities
    ``weights``) with one token replaced, inserted or deleted, a second edit with probability
    :data:`TWO_EDITS` (parents over :data:`MAX_PARENT_ATOMS` atoms are skipped); new tokens are drawn uniformly from ``alphabet`` (a model's vocabulary:
    the child is then a string it can write). Edits longer than ``max_tokens`` are dropped, as
    are children of more than one fragment, those ``accept`` refuses, and those with fewer
    than half their parent's heavy atoms (at least 2): deleting a branch or ring token of a
    SELFIES string can cut off most of the molecule, a fragment that wastes an oracle call."""
    from ..tokens import EncodeError, selfies_to_canonical, smiles_to_selfies, split_selfies

    if n <= 0 or not parents or not alphabet:
        return []
    if weights is not None and len(weights) != len(parents):
        raise ValueError(f"{len(weights)} weights for {len(parents)} parents")
    tokens: list[list[str]] = []
    smallest: list[int] = []
    keep: list[float] = []
    made: set[str] = set()   # the parents, then the children
    for i, s in enumerate(parents):
        mol = chem.to_mol(s) if isinstance(s, str) else None
        if mol is not None and mol.GetNumAtoms() > MAX_PARENT_ATOMS:
            continue
        try:
            t = split_selfies(smiles_to_selfies(s)) if mol is not None else []
        except EncodeError:
            t = []
        if t:
            tokens.append(t)
            smallest.append(max(2, mol.GetNumHeavyAtoms() // 2))
            keep.append(1.0 if weights is None else float(weights[i]))
            made.add(Chem.MolToSmiles(mol))
    if not tokens:
        return []
    p = np.asarray(keep, dtype=float)
    if not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
        raise ValueError("parent weights must be finite, >= 0 and not all 0")
    draw = _drawer(p / p.sum(), rng)
    out: list[str] = []
    for _ in range(tries_per_child * n):
        if len(out) >= n:
            break
        j = draw()
        t = list(tokens[j])
        for _ in range(2 if rng.random() < TWO_EDITS else 1):
            op = int(rng.integers(3))
            if op == 1 or len(t) < 2:        # insert (also where a delete would leave nothing)
                t.insert(int(rng.integers(len(t) + 1)), alphabet[int(rng.integers(len(alphabet)))])
            elif op == 0:                    # replace
                t[int(rng.integers(len(t)))] = alphabet[int(rng.integers(len(alphabet)))]
            else:                            # delete
                del t[int(rng.integers(len(t)))]
        if max_tokens is not None and len(t) > max_tokens:
            continue
        s = selfies_to_canonical("".join(t))
        if s is None or "." in s or s in made or s in known or not chem.is_valid_molecule(s, smallest[j]):
            continue
        made.add(s)
        if accept is not None and not accept(s):
            continue
        out.append(s)
    return out
