"""Chemistry: standardization, properties, fingerprints, alerts, parallel batches."""

import math

import pytest

from molvae import chem


@pytest.mark.parametrize("raw, expected", [
    ("CC(=O)[O-].[Na+]", "CC(=O)O"),             # salt stripped, carboxylate neutralized
    ("c1ccccc1C(=O)O.O.O", "O=C(O)c1ccccc1"),    # solvent stripped
    ("C[NH3+].[Cl-]", "CN"),                       # ammonium chloride -> amine
    ("OC1=CC=CC=C1", "Oc1ccccc1"),                 # kekulé input -> canonical aromatic
])
def test_standardize_strips_salts_and_neutralizes(raw, expected):
    smi, reason = chem.standardize(raw)
    assert reason is None
    assert smi == expected


def test_standardize_keeps_quaternary_ammonium_and_nitro_charges():
    assert chem.standardize("C[N+](C)(C)C.[Cl-]")[0] == "C[N+](C)(C)C"
    assert chem.standardize("O=[N+]([O-])c1ccccc1")[0] == "O=[N+]([O-])c1ccccc1"


def test_standardize_stereo_option():
    iso = "C[C@H](N)C(=O)O"
    assert "@" in chem.standardize(iso)[0]
    assert "@" not in chem.standardize(iso, keep_stereo=False)[0]


@pytest.mark.parametrize("bad", ["", "   ", None, float("nan"), "C1CC", "not a molecule", "c1cccc1"])
def test_standardize_bad_input_gives_a_reason(bad):
    smi, reason = chem.standardize(bad)
    assert smi is None and isinstance(reason, str) and reason


def test_properties_of_aspirin():
    p = chem.properties("CC(=O)Oc1ccccc1C(=O)O")
    assert p["mw"] == pytest.approx(180.16, abs=0.01)
    assert p["heavy_atoms"] == 13 and p["rings"] == 1
    assert p["hbd"] == 1 and p["hba"] == 3
    assert 0.5 < p["qed"] < 0.6
    assert 1.0 < p["sa"] < 2.5
    assert p["lipinski_violations"] == 0
    # the unnormalized definition: logP - SA - max(0, largest ring - 6)
    assert p["penalized_logp"] == pytest.approx(p["logp"] - p["sa"])


def test_penalized_logp_penalizes_large_rings():
    ring8 = chem.to_mol("C1CCCCCCC1")
    assert chem.penalized_logp(ring8) == pytest.approx(
        chem.PROPERTIES["logp"](ring8) - chem.sa_score(ring8) - 2)


def test_properties_of_invalid_smiles_are_nan():
    assert all(math.isnan(v) for v in chem.properties("C1CC").values())


def test_tanimoto_and_fingerprints():
    sims = chem.tanimoto("c1ccccc1O", ["c1ccccc1O", "c1ccccc1N", "CCCCCC", "C1CC"])
    assert sims[0] == 1.0
    assert 0 < sims[1] < 1 and sims[2] < sims[1]
    assert math.isnan(sims[3])
    m = chem.fingerprint_matrix(["CCO", "C1CC"])
    assert m[0].sum() > 0 and m[1].sum() == 0


def test_structural_alerts():
    assert chem.structural_alerts("CCO") == []
    # a rhodanine-like ene (PAINS ene_rhod) and a Michael acceptor
    assert chem.structural_alerts("S=C1SC(=Cc2ccccc2)C(=O)N1")
    assert chem.structural_alerts("C1CC") == ["invalid molecule"]


def test_validity_rejects_empty_and_single_atoms():
    assert chem.is_valid_molecule("CCO")
    assert not chem.is_valid_molecule("C")
    assert not chem.is_valid_molecule("")
    assert not chem.is_valid_molecule(None)


def test_parallel_batches_match_serial(small_smiles):
    smiles = small_smiles * 10  # 5,120 molecules: above the parallel threshold
    par = chem.standardize_many(smiles, workers=2, progress=False)
    ser = chem.standardize_many(smiles, workers=1, progress=False)
    assert par == ser
    props = chem.properties_many(small_smiles[:100], workers=1, progress=False)
    assert list(props.columns) == list(chem.MAIN_PROPERTIES) and len(props) == 100


def test_giant_smiles_is_refused_before_rdkit_sees_it():
    # 2,000 characters is safe to parse here; 20,000 would crash RDKit's SMILES writer
    # (see tests/test_hostile_input.py, which tries that in a subprocess).
    smi, reason = chem.standardize("C" * 2_000)
    assert smi is None and "too long" in reason and "2,000 characters" in reason
    assert chem.to_mol("C" * (chem.MAX_PARSE_CHARS + 1)) is None
    # a molecule of ordinary size is untouched
    assert chem.standardize("C" * 60)[0] == "C" * 60


@pytest.mark.parametrize("raw, named", [
    ("[Na+].[Cl-]", "carbon"),   # table salt: no organic fragment (it used to become "Cl")
    ("O", "carbon"),             # water
    ("[U]", "U"),
    ("[U+6]", "U"),
    ("[Fe+2]", "Fe"),
    ("CC[Sn](CC)(CC)CC", "Sn"),  # organometallic: carbon, but an element outside the set
    ("*CC", "*"),
])
def test_standardize_keeps_only_organic_molecules(raw, named):
    smi, reason = chem.standardize(raw)
    assert smi is None and named in reason


def test_standardize_keeps_the_organic_part_of_a_salt_of_an_odd_element():
    assert chem.standardize("CC(=O)[O-].[U+6]") == ("CC(=O)O", None)


@pytest.mark.parametrize("raw", ["CC\tO", "CC O", "CC\x00O", "CC\nO", "CCé"])
def test_whitespace_or_control_characters_inside_a_smiles_are_not_silently_cut(raw):
    # RDKit reads "CC O" as ethane named "O": the rest of the field would be lost silently.
    smi, reason = chem.standardize(raw)
    assert smi is None and "position 3" in reason
    assert chem.to_mol(raw) is None


def _canonical_in_a_pool_worker(smiles):
    # min_parallel=1 and workers=2 ask parallel_map for a pool of its own.
    return chem.parallel_map(chem.canonical, smiles, workers=2, min_parallel=1, progress=False)


def test_parallel_map_inside_a_pool_worker_runs_in_that_worker():
    """A chemist's own multiprocessing.Pool (or the benchmark's) runs molvae in daemonic
    workers, which may not start processes: a cold PCA cache made ``molvae.optimize`` fail there
    with "daemonic processes are not allowed to have children"."""
    import multiprocessing as mp

    smiles = ["OCC", "c1ccccc1O", "CC(=O)O"]
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply(_canonical_in_a_pool_worker, (smiles,))
    assert got == [chem.canonical(s) for s in smiles] == ["CCO", "Oc1ccccc1", "CC(=O)O"]
