"""Graph crossover and mutation (molvae.optimize.mutate): every child a sane molecule, the
same seed the same children, hostile parents skipped without an exception."""

import numpy as np
import pytest
from rdkit import Chem

from molvae import chem
from molvae.optimize.mutate import MAX_RING, crossover, mutate, offspring

CELECOXIB = "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1"
PARENTS = [CELECOXIB, "CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1", "O=C(O)c1ccccc1OC(=O)C",
           "c1ccc2[nH]ccc2c1", "CCOC(=O)C1=C(C)NC(C)=C(C(=O)OC)C1c1ccccc1Cl"]


def _sane(mol: Chem.Mol) -> None:
    smiles = Chem.MolToSmiles(mol)
    assert chem.is_valid_molecule(smiles), smiles
    assert len(Chem.GetMolFrags(mol)) == 1, smiles
    assert all(len(r) <= MAX_RING for r in mol.GetRingInfo().AtomRings()), smiles


def test_crossover_joins_one_part_of_each_parent():
    a, b = Chem.MolFromSmiles(CELECOXIB), Chem.MolFromSmiles("CCCCCCCCCCCCCCCCCCCC")
    made = set()
    for seed in range(60):
        child = crossover(a, b, np.random.default_rng(seed))
        if child is None:
            continue
        _sane(child)
        made.add(Chem.MolToSmiles(child))
    assert len(made) > 10
    # Some children keep celecoxib's sulfonamide or its CF3 and gain a chain from the alkane.
    mixed = [s for s in made if ("S(N)(=O)=O" in s or "C(F)(F)F" in s) and "CCCC" in s]
    assert mixed, sorted(made)
    # Rings are never cut: a molecule without an acyclic single bond cannot be a parent.
    assert crossover(Chem.MolFromSmiles("c1ccccc1"), a, np.random.default_rng(0)) is None


def test_mutation_makes_one_small_edit():
    parent = Chem.MolFromSmiles(CELECOXIB)
    fp = chem.morgan_fp(parent)
    from rdkit import DataStructs

    sims, made = [], set()
    for seed in range(100):
        child = mutate(parent, np.random.default_rng(seed))
        assert child is not None
        _sane(child)
        s = Chem.MolToSmiles(child)
        assert s != Chem.MolToSmiles(parent)
        made.add(s)
        assert abs(child.GetNumHeavyAtoms() - parent.GetNumHeavyAtoms()) <= 1
        sims.append(DataStructs.TanimotoSimilarity(fp, chem.morgan_fp(child)))
    assert len(made) > 50
    assert 0.5 < np.mean(sims) < 1.0     # near variants, not new molecules


def test_offspring_are_new_canonical_unique_accepted_and_seeded():
    known = {chem.canonical(s) for s in PARENTS}
    first = offspring(PARENTS, 40, np.random.default_rng(7), known=known)
    again = offspring(PARENTS, 40, np.random.default_rng(7), known=known)
    other = offspring(PARENTS, 40, np.random.default_rng(8), known=known)
    assert first == again and first != other
    assert len(first) == 40 and len(set(first)) == 40
    assert not set(first) & known
    assert all(chem.canonical(s) == s for s in first)
    smallest = int(0.5 * np.mean([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in PARENTS]))
    assert all(Chem.MolFromSmiles(s).GetNumHeavyAtoms() >= smallest for s in first)
    # accept: only children without sulfur, and the caller decides after the other checks.
    seen = []
    no_s = offspring(PARENTS, 20, np.random.default_rng(7), accept=lambda s: seen.append(s) or "S" not in s)
    assert no_s and all("S" not in s for s in no_s) and set(no_s) <= set(seen)


@pytest.mark.parametrize("parents", [
    [],
    [""],
    ["not a smiles", "C1CC", "c1cccc1", None, 42],          # unparsable, open ring, bad aromatic
    ["C"],                                                   # one atom: nothing to cut, tiny edits
    ["[U]", "[Xe]", "[Na+].[Cl-]"],                          # odd elements and salts
    ["C" * 5000],                                            # a giant chain
    ["[NH4+]", "C[N+](C)(C)C", "[O-]C(=O)C"],                # charges
])
def test_hostile_parents_give_sane_children_or_none(parents):
    kids = offspring(parents, 8, np.random.default_rng(0))
    assert len(kids) <= 8 and len(set(kids)) == len(kids)
    for s in kids:
        _sane(Chem.MolFromSmiles(s))


def test_no_children_asked_none_made():
    assert offspring(PARENTS, 0, np.random.default_rng(0)) == []
    assert offspring(PARENTS, -5, np.random.default_rng(0)) == []


def test_weighted_parents_breed_in_proportion():
    """With all the weight on one parent every child comes from it alone: an all-carbon
    chain's children carry at most the one heteroatom a single edit can add, while uniform
    draws also cross it with the perfluorinated parent."""
    chain, fluoro = "CCCCCCCCCCCC", "FC(F)(F)C(F)(F)C(F)(F)C(F)(F)C(F)(F)C(F)(F)F"
    fluorines = lambda s: sum(a.GetSymbol() == "F" for a in Chem.MolFromSmiles(s).GetAtoms())
    kids = offspring([chain, fluoro], 30, np.random.default_rng(0), weights=[1.0, 0.0])
    assert kids and all(fluorines(s) <= 1 for s in kids)
    mixed = offspring([chain, fluoro], 30, np.random.default_rng(0))
    assert any(fluorines(s) >= 2 for s in mixed)
    with pytest.raises(ValueError, match="2 weights for 1 parents"):
        offspring([chain], 4, np.random.default_rng(0), weights=[1.0, 1.0])
    for bad in ([0.0, 0.0], [float("nan"), 1.0], [-1.0, 2.0]):
        with pytest.raises(ValueError, match="parent weights"):
            offspring([chain, fluoro], 4, np.random.default_rng(0), weights=bad)


def test_mutation_rate_sets_how_often_a_crossover_child_is_also_edited():
    """Crossing two alkane chains gives alkane chains; only an edit makes anything else. With
    ``mutation=0`` every child is a plain chain; with ``mutation=1`` most are not (inserting or
    deleting a carbon keeps a chain)."""
    chains = ["C" * 10, "C" * 14]
    plain = lambda s: set(s) == {"C"}
    kids = offspring(chains, 10, np.random.default_rng(0), mutation=0.0)
    assert kids and all(plain(s) for s in kids)
    edited = offspring(chains, 30, np.random.default_rng(0), mutation=1.0)
    assert len(edited) == 30 and sum(plain(s) for s in edited) < 15
