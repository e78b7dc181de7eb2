"""Graph crossover and mutation (molvae.optimize.mutate): every child a sane molecule, the
same seed the same children, hostile parents skipped without an exception."""

import numpy as np
import pytest
from rdkit import Chem

from molvae import chem
from molvae.optimize.mutate import (MAX_RING, _Cuts, _drawer, crossover, cuttable, donor_parents, mutate, offspring,
                                    ring_crossover, selfies_edits)
from molvae.tokens import smiles_to_selfies, split_selfies

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


def _ring_sizes(smiles: str) -> list[int]:
    mol = Chem.MolFromSmiles(smiles)  # kept alive: RDKit frees the ring info with the molecule
    return sorted(len(r) for r in mol.GetRingInfo().AtomRings())


def test_crossover_with_the_parents_cuts_given_is_the_same_crossover():
    # offspring() hands each parent's cuttable bonds over once per parent, not once per child.
    a, b = Chem.MolFromSmiles(CELECOXIB), Chem.MolFromSmiles(PARENTS[5])
    assert cuttable(a) and all(not a.GetBondWithIdx(i).IsInRing() for i in cuttable(a))
    for seed in range(20):
        plain = crossover(a, b, np.random.default_rng(seed))
        given = crossover(a, b, np.random.default_rng(seed), (cuttable(a), cuttable(b)))
        assert (plain is None and given is None) or Chem.MolToSmiles(plain) == Chem.MolToSmiles(given)


def test_crossover_with_the_cut_parts_kept_is_the_same_crossover():
    # offspring() keeps each parent's cut parts between children (mutate._Cuts): a parent cut
    # again at a bond it was cut at before joins the same parts.
    a, b = Chem.MolFromSmiles(CELECOXIB), Chem.MolFromSmiles(PARENTS[5])
    kept = (_Cuts(cuttable(a)), _Cuts(cuttable(b)))
    for rounds in range(2):  # the second round finds every part already cut
        for seed in range(30):
            plain = crossover(a, b, np.random.default_rng(seed))
            given = crossover(a, b, np.random.default_rng(seed), kept)
            assert (plain is None and given is None) or Chem.MolToSmiles(plain) == Chem.MolToSmiles(given)
    assert kept[0].parts and kept[1].parts
    assert Chem.MolToSmiles(a) == Chem.CanonSmiles(CELECOXIB)  # the parents are not edited


def test_a_weighted_draw_is_rngs_choice():
    p = np.array([0.5, 0.2, 0.2, 0.1, 0.0])
    draw, rng = _drawer(p, np.random.default_rng(3)), np.random.default_rng(3)
    assert [draw() for _ in range(500)] == [int(rng.choice(len(p), p=p)) for _ in range(500)]


def test_offspring_hands_over_each_childs_molecule_as_rdkit_reads_it():
    read = {}
    kids = offspring(PARENTS, 24, np.random.default_rng(0), read=read)
    assert kids and sorted(read) == sorted(kids)
    for s in kids:
        assert Chem.MolToSmiles(read[s]) == s
        assert chem.morgan_fp(read[s]).ToBitString() == chem.morgan_fp(s).ToBitString()


def test_ring_crossover_builds_a_ring_of_parts_of_both_parents():
    """4-fluorotoluene and pyridine: the ring of one child holds pyridine's N and carries
    toluene's F or methyl, which no cut at an acyclic bond can make (pyridine has none).
    Every child is sane, and its rings are 5- or 6-rings without strained double bonds."""
    a, b = Chem.MolFromSmiles("Cc1ccc(F)cc1"), Chem.MolFromSmiles("c1ccncc1")
    assert crossover(a, b, np.random.default_rng(0)) is None
    made = set()
    for seed in range(200):
        child = ring_crossover(a, b, np.random.default_rng(seed))
        if child is None:
            continue
        _sane(child)
        s = Chem.MolToSmiles(child)
        made.add(s)
        assert set(_ring_sizes(s)) <= {5, 6}, s
    assert len(made) > 10
    assert {"Cc1ccncc1", "Fc1ccncc1"} & made, sorted(made)
    aromatic_n_with_f = [s for s in made if "n" in s and "F" in s]
    assert aromatic_n_with_f, sorted(made)
    # No ring, nothing to cut: an alkane has none, nor does a one-ring molecule's partner.
    chain = Chem.MolFromSmiles("CCCCCCCC")
    assert ring_crossover(chain, a, np.random.default_rng(0)) is None
    assert ring_crossover(a, chain, np.random.default_rng(0)) is None


def test_ring_crossover_of_drugs_gives_sane_children():
    """Fused, bridged, charged and aromatic-NH rings: children are sane molecules or None."""
    drugs = PARENTS + ["C1CC2CCC1C2", "C[n+]1ccccc1", "c1ccc2c(c1)[nH]c1ccccc12",
                       "O=C1NC(=O)C(c2ccccc2)(c2ccccc2)N1", "C1=CC=CC=CC=C1"]
    mols = [Chem.MolFromSmiles(s) for s in drugs]
    made = 0
    for seed in range(120):
        rng = np.random.default_rng(seed)
        a, b = mols[int(rng.integers(len(mols)))], mols[int(rng.integers(len(mols)))]
        child = ring_crossover(a, b, rng)
        if child is not None:
            _sane(child)
            made += 1
    assert made > 10


def test_ring_share_sets_how_many_crossovers_cut_rings():
    """Ethyltriazine and ethylthiophene, no mutation after a crossover that works: acyclic
    cuts keep each ring whole, so no ring holds both N and S; ring crossovers make such rings."""
    parents = ["CCc1ncncn1", "CCc1ccsc1"]

    def n_and_s_in_a_ring(smiles):
        mol = Chem.MolFromSmiles(smiles)
        return any({"N", "S"} <= {mol.GetAtomWithIdx(i).GetSymbol() for i in ring}
                   for ring in mol.GetRingInfo().AtomRings())

    for ring, fewest, most in ((0.0, 0, 0), (1.0, 5, 60)):
        kids = [s for seed in range(3)
                for s in offspring(parents, 20, np.random.default_rng(seed), mutation=0.0, ring=ring)]
        assert len(kids) >= 45
        assert fewest <= sum(map(n_and_s_in_a_ring, kids)) <= most, (ring, kids)


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
    ["C1CC2CCC1C2", "c1ccc2cc3ccccc3cc2c1", "C1CCCCCCCCCCCCCCC1"],  # bridged, fused, macrocycle
    ["c1ccccc1" * 20],                                       # twenty phenyls in a row
    ["[NH4+]", "C[N+](C)(C)C", "[O-]C(=O)C"],                # charges
])
def test_hostile_parents_give_sane_children_or_none(parents):
    for ring in (0.0, 1.0):
        kids = offspring(parents, 8, np.random.default_rng(0), ring=ring)
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


def test_donor_crossovers_bring_in_the_donors_groups():
    """A pool of phenylethanol and a donor with a tetrazole, no mutation after a crossover that
    works: no single edit of the pool makes a tetrazole, so only crossovers with the donor
    give children that have one, in proportion to the donor share (each keeps one of the
    donor's two parts, the tetrazole about half the time)."""
    pool, donors = ["OCCc1ccccc1"], donor_parents(["CCCCc1nn[nH]n1", "CCCCC(=O)Nc1nn[nH]n1"])
    tetrazole = Chem.MolFromSmarts("c1nn[nH]n1")
    has = lambda s: Chem.MolFromSmiles(s).HasSubstructMatch(tetrazole)
    counts = {}
    for share in (0.0, 0.5, 1.0):
        kids = [s for seed in range(3) for s in offspring(pool, 20, np.random.default_rng(seed), mutation=0.0,
                                                           donors=donors, donor=share)]
        counts[share] = sum(map(has, kids)) / len(kids)
    assert counts[0.0] == 0 and 0.2 < counts[0.5] < counts[1.0] and counts[1.0] > 0.4, counts


def test_no_donor_share_makes_the_same_children():
    """Donors given with a share of 0 draw nothing extra: a seeded run makes the children it
    made before donors existed."""
    donors = donor_parents(["CCCCc1nn[nH]n1"])
    assert offspring(PARENTS, 30, np.random.default_rng(4)) == \
        offspring(PARENTS, 30, np.random.default_rng(4), donors=donors, donor=0.0)


def test_hostile_donors_are_left_out():
    donors = donor_parents(["", "not a smiles", None, 42, "C" * 5000, "[U]", "c1cccc1", "CCO"])
    assert [Chem.MolToSmiles(m) for m, _ in donors] == ["[U]", "CCO"]
    for share in (0.5, 1.0):
        kids = offspring(PARENTS, 8, np.random.default_rng(0), donors=donors, donor=share)
        assert len(set(kids)) == len(kids) <= 8
        for s in kids:
            _sane(Chem.MolFromSmiles(s))


ALPHABET = ["[C]", "[N]", "[O]", "[F]", "[=C]", "[Branch1]", "[Ring1]", "[=O]", "[S]", "[Cl]"]


def test_selfies_edits_are_new_sane_one_or_two_tokens_from_a_parent_and_seeded():
    known = {chem.canonical(s) for s in PARENTS}
    first = selfies_edits(PARENTS, 40, np.random.default_rng(7), ALPHABET, known=known)
    again = selfies_edits(PARENTS, 40, np.random.default_rng(7), ALPHABET, known=known)
    other = selfies_edits(PARENTS, 40, np.random.default_rng(8), ALPHABET, known=known)
    assert first == again and first != other
    assert len(first) == 40 and len(set(first)) == 40 and not set(first) & known
    for s in first:
        assert chem.canonical(s) == s
        _sane(Chem.MolFromSmiles(s))
    # One parent: never the parent itself, never less than half of it (a deleted branch
    # token can cut off most of a SELFIES string), and related to it: further than a graph
    # mutation's one edit (a branch or ring token read anew moves whole groups), far closer
    # than an unrelated molecule.
    from rdkit import DataStructs

    fp = chem.morgan_fp(CELECOXIB)
    kids = selfies_edits([CELECOXIB], 60, np.random.default_rng(0), ALPHABET)
    sims = [DataStructs.TanimotoSimilarity(fp, chem.morgan_fp(s)) for s in kids]
    assert len(kids) == 60 and chem.canonical(CELECOXIB) not in kids
    size = Chem.MolFromSmiles(CELECOXIB).GetNumHeavyAtoms()
    assert all(Chem.MolFromSmiles(s).GetNumHeavyAtoms() >= size // 2 for s in kids)
    unrelated = [DataStructs.TanimotoSimilarity(fp, chem.morgan_fp(s)) for s in PARENTS[1:]]
    assert np.median(sims) > 0.15 > max(unrelated) and max(sims) > 0.6
    # accept, max_tokens and the parents' weights are the caller's.
    no_s = selfies_edits(PARENTS, 20, np.random.default_rng(7), ALPHABET, accept=lambda s: "S" not in s)
    assert no_s and all("S" not in s for s in no_s)
    short = selfies_edits(PARENTS, 20, np.random.default_rng(7), ALPHABET, max_tokens=12)
    assert short and all(len(split_selfies(smiles_to_selfies(s))) <= 14 for s in short)
    chain, fluoro = "CCCCCCCCCCCC", "FC(F)(F)C(F)(F)C(F)(F)C(F)(F)C(F)(F)C(F)(F)F"
    only_chain = selfies_edits([chain, fluoro], 20, np.random.default_rng(0), ALPHABET, weights=[1.0, 0.0])
    assert only_chain and all(s.count("F") <= 2 for s in only_chain)
    with pytest.raises(ValueError, match="parent weights"):
        selfies_edits([chain, fluoro], 4, np.random.default_rng(0), ALPHABET, weights=[0.0, 0.0])


@pytest.mark.parametrize("parents", [
    [], [""], ["not a smiles", "C1CC", None, 42], ["C"], ["[U]", "[Xe]", "[Na+].[Cl-]"], ["C" * 5000],
    ["c1ccccc1" * 20], ["[NH4+]", "C[N+](C)(C)C", "[O-]C(=O)C"],
])
def test_selfies_edits_of_hostile_parents_are_sane_or_none(parents):
    kids = selfies_edits(parents, 8, np.random.default_rng(0), ALPHABET)
    assert len(kids) <= 8 and len(set(kids)) == len(kids)
    for s in kids:
        _sane(Chem.MolFromSmiles(s))
    assert selfies_edits(parents, 8, np.random.default_rng(0), []) == []
    assert selfies_edits(parents, 0, np.random.default_rng(0), ALPHABET) == []
