"""MOSES metrics: what a chemist checks on a generated set (valid, unique, close to test, novel)."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from rdkit import DataStructs

from molvae import chem, metrics
from molvae.cli import main
from molvae.data import bundled

RHODANINE = "O=C1NC(=S)SC1=Cc1ccccc1"  # 5-benzylidene rhodanine: PAINS ene_rhod_A


@pytest.fixture(scope="module")
def test_smiles():
    return bundled("test")[:400]


@pytest.fixture(scope="module")
def ref_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ref")


@pytest.fixture(scope="module")
def reference(test_smiles, ref_cache):
    return metrics.reference_stats("mini", smiles=test_smiles, cache=ref_cache)


def _packed(smiles):
    return np.packbits(chem.fingerprint_matrix(smiles, 2, 1024), axis=1)


def test_identical_sets_score_perfectly(test_smiles, reference):
    m = metrics.moses_metrics(test_smiles, test=reference, test_scaffolds=None, unique_k=(100,))
    assert m["valid"] == 1.0 and m["unique@100"] == 1.0
    assert abs(m["FCD/Test"]) < 1e-6
    assert m["SNN/Test"] == pytest.approx(1.0)
    assert m["Frag/Test"] == pytest.approx(1.0) and m["Scaf/Test"] == pytest.approx(1.0)
    for name in metrics.PROPERTY_NAMES:
        assert m[name] < 1e-3  # float32 storage of the reference values
    assert "FCD/TestSF" not in m and "Novelty" not in m


def test_other_molecules_are_further_away(reference):
    m = metrics.moses_metrics(bundled("train")[:300], test=reference, test_scaffolds=None,
                              unique_k=(100,))
    assert 0.5 < m["FCD/Test"] < 20
    assert 0.3 < m["SNN/Test"] < 0.7
    assert m["Scaf/Test"] < 0.9 and m["Frag/Test"] > 0.8
    assert 0.8 < m["IntDiv"] < 0.9 and m["IntDiv2"] < m["IntDiv"]


def test_validity_rejects_empty_single_atom_and_garbage():
    generated = ["CCO", "", None, "C", "[Na+]", "not a smiles", "C1CC", "c1ccccc1O"]
    m = metrics.moses_metrics(generated, test=None, test_scaffolds=None, unique_k=(2,))
    assert m["valid"] == pytest.approx(2 / 8)
    assert m["unique@2"] == 1.0


def test_one_repeated_molecule_has_uniqueness_one_over_n_and_no_diversity(reference):
    generated = ["c1ccccc1CC(=O)O", "OC(=O)Cc1ccccc1"] * 25  # one molecule, two spellings
    with pytest.warns(UserWarning, match="unique@1000: only 50"):
        m = metrics.moses_metrics(generated, test=reference, test_scaffolds=None, unique_k=(1000,))
    assert m["unique@1000"] == pytest.approx(1 / 50)
    assert m["IntDiv"] == pytest.approx(0.0, abs=1e-6) and m["IntDiv2"] == pytest.approx(0.0, abs=1e-6)
    assert m["FCD/Test"] > 10  # one molecule is far from a whole test distribution


def test_novelty_of_the_training_set_is_zero(small_smiles):
    train = small_smiles[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = metrics.moses_metrics(train, train=train, test=None, test_scaffolds=None)
    assert m["Novelty"] == 0.0
    canon = [metrics.canonical_valid(s) for s in train[:10]] + ["CCCCCCCCCCCCCCCCCCCCO"]
    assert metrics.novelty(canon, train) == pytest.approx(1 / 11)


def test_filters_reject_pains_charges_foreign_atoms_and_large_rings():
    assert metrics.passes_filters("CC(=O)Nc1ccc(O)cc1")  # paracetamol
    assert not metrics.passes_filters(RHODANINE)
    assert not metrics.passes_filters("C[N+](C)(C)CCO")  # charged
    assert not metrics.passes_filters("CCP(=O)(O)O")  # phosphorus is not allowed
    assert not metrics.passes_filters("C1CCCCCCC1")  # eight-membered ring
    m = metrics.moses_metrics(["CC(=O)Nc1ccc(O)cc1", RHODANINE], test=None, test_scaffolds=None, unique_k=())
    assert m["Filters"] == 0.5


def test_filter_screening_gives_the_same_answers(small_smiles):
    # Pattern-fingerprint screening must never hide a match: compare with plain matching on
    # molecules that hit PAINS/MCF patterns and on ordinary ones.
    hits = [RHODANINE, "Oc1ccc(N=Nc2ccccc2)cc1", "O=C(C=Cc1ccccc1)c1ccccc1",
            "Nc1ccc(cc1)N", "CN(C)c1ccc(C=Cc2ccccc2)cc1", "O=C1C=CC(=O)C=C1", "C=CC(=O)OC"]
    for s in hits + small_smiles[:150]:
        assert metrics.passes_filters(s, screen=True) == metrics.passes_filters(s, screen=False), s


def test_similarity_kernels_match_rdkit(small_smiles):
    gen, ref = small_smiles[:70], small_smiles[100:400]
    a, b = _packed(gen), _packed(ref)
    fps_a = [chem.morgan_fp(s, 2, 1024) for s in gen]
    fps_b = [chem.morgan_fp(s, 2, 1024) for s in ref]
    expected_max = [max(DataStructs.BulkTanimotoSimilarity(f, fps_b)) for f in fps_a]
    # small chunks so the block edges are exercised
    blocks = metrics._tanimoto_blocks(a, b, device="cpu", a_chunk=32, b_chunk=64)
    got = np.zeros(len(gen))
    for ai, _, sim in blocks:
        got[ai] = np.maximum(got[ai], sim.max(1).values.numpy())
    np.testing.assert_allclose(got, expected_max, rtol=1e-6)
    np.testing.assert_allclose(metrics.nearest_similarity(a, b, device="cpu"), expected_max, rtol=1e-6)

    # internal diversity with multiplicities = MOSES's all-pairs mean over the expanded set
    weights = np.arange(1, len(gen) + 1) % 3 + 1
    expanded = [f for f, w in zip(fps_a, weights) for _ in range(w)]
    sims = np.array([DataStructs.BulkTanimotoSimilarity(f, expanded) for f in expanded])
    div = metrics.internal_diversity(a, weights, powers=(1, 2), device="cpu")
    assert div[1] == pytest.approx(1 - sims.mean(), rel=1e-5)
    assert div[2] == pytest.approx(1 - np.sqrt((sims**2).mean(1)).mean(), rel=1e-5)


def test_cosine_similarity_of_counts():
    assert metrics.cosine_similarity({"a": 2, "b": 1}, {"a": 4, "b": 2}) == pytest.approx(1.0)
    assert metrics.cosine_similarity({"a": 1}, {"b": 1}) == 0.0
    assert np.isnan(metrics.cosine_similarity({}, {"a": 1}))


def test_reference_stats_round_trip_through_the_cache_without_pickles(test_smiles, reference,
                                                                      ref_cache, monkeypatch):
    def no_recompute(*args, **kwargs):
        raise AssertionError("reference statistics recomputed instead of loaded")

    monkeypatch.setattr(metrics, "compute_reference_stats", no_recompute)
    again = metrics.reference_stats("mini", smiles=test_smiles, cache=ref_cache)
    np.testing.assert_array_equal(again.fps, reference.fps)
    np.testing.assert_allclose(again.fcd_mu, reference.fcd_mu)
    np.testing.assert_allclose(again.fcd_sigma, reference.fcd_sigma)  # stored as one triangle
    assert again.frag == reference.frag and again.scaf == reference.scaf and again.n == reference.n
    np.testing.assert_allclose(again.props["QED"], reference.props["QED"], rtol=1e-6)

    files = sorted(p.name for p in (ref_cache / "reference").iterdir())
    assert files == [f"mini-{reference.key}{ext}" for ext in ("-fps.npz", ".json.gz", ".npz")]
    for path in (ref_cache / "reference").glob("*.npz"):
        with np.load(path, allow_pickle=False) as z:  # plain arrays only, no pickled objects
            assert all(z[k].dtype != object for k in z.files)
    doc = json.loads(gzip.decompress((ref_cache / "reference" / f"mini-{reference.key}.json.gz").read_bytes()))
    assert doc["meta"]["n"] == len(test_smiles) and doc["Scaf"] == reference.scaf

    # a different set of molecules must not be served the cached statistics
    with pytest.raises(AssertionError, match="recomputed"):
        metrics.reference_stats("mini", smiles=test_smiles[:-1], cache=ref_cache)


@pytest.mark.parametrize("name", metrics.REFERENCE_SETS)
def test_shipped_reference_statistics_belong_to_the_bundled_test_sets(name):
    smiles = metrics.load_reference_smiles(name)
    summary = metrics._load_summary(metrics.REFERENCE_DIR, name, metrics._smiles_key(smiles))
    assert summary is not None, f"data/reference/{name}.* is stale: molvae evaluate --build-reference"
    assert summary["n"] == len(smiles)
    assert summary["fcd_sigma"].shape == (512, 512)
    assert np.linalg.eigvalsh(summary["fcd_sigma"]).min() > -1e-8  # a covariance matrix
    assert all(len(summary["props"][k]) == len(smiles) for k in metrics.PROPERTY_NAMES)
    assert len(summary["scaf"]) > 10_000 and len(summary["frag"]) > 10_000


def test_frechet_distance_matches_the_fcd_package():
    import fcd

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 32)), rng.normal(size=(150, 32)) @ rng.normal(size=(32, 32)) + 0.3
    args = (x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    expected = fcd.calculate_frechet_distance(mu1=args[0], sigma1=args[1], mu2=args[2], sigma2=args[3])
    assert metrics.frechet_distance(*args) == pytest.approx(expected, rel=1e-8)
    assert metrics.frechet_distance(args[0], args[1], args[0], args[1]) == pytest.approx(0.0, abs=1e-8)


def test_format_table_lists_metrics_in_moses_order():
    table = metrics.format_table({"Novelty": 0.5, "valid": 0.97, "FCD/Test": float("nan")})
    lines = table.splitlines()
    assert lines[2].startswith("valid") and "0.9700" in lines[2]
    assert "nan" in lines[3] and lines[4].startswith("Novelty")


def test_evaluate_command_writes_json(tmp_path, test_smiles, capsys):
    gen = tmp_path / "gen.csv"
    gen.write_text("smiles\n" + "\n".join(test_smiles[:40] + ["", "C"]) + "\n")
    ref = tmp_path / "ref.csv"
    ref.write_text("SMILES\n" + "\n".join(test_smiles[:120]) + "\n")
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--generated", str(gen), "--test", str(ref), "--test-scaffolds", "none",
               "--train", str(gen), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["valid"] == pytest.approx(40 / 42) and result["Novelty"] == 0.0
    assert result["SNN/Test"] == pytest.approx(1.0) and "SNN/TestSF" not in result
    assert "FCD/Test" in capsys.readouterr().out
    assert main(["evaluate", "--generated", str(tmp_path / "missing.csv")]) == 1


def test_evaluate_command_samples_a_model(tmp_path, tiny_model_dir, test_smiles, capsys):
    ref = tmp_path / "ref.csv"
    ref.write_text("SMILES\n" + "\n".join(test_smiles[:150]) + "\n")
    out, samples = tmp_path / "m.json", tmp_path / "s.csv"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "-n", "200", "--test", str(ref),
               "--test-scaffolds", "none", "--out", str(out), "--samples-out", str(samples),
               "--device", "cpu"])
    assert rc == 0
    result = json.loads(out.read_text())
    table = pd.read_csv(samples)
    assert len(table) == 200 and result["n_samples"] == 200
    assert result["valid"] == pytest.approx(table["valid"].mean())
    assert 0 <= result["reconstruction"] <= 1 and 0 <= result["active_units"] <= result["latent_dim"]
    assert "Novelty" in result and "FCD/Test" in result  # novelty against the bundled training sample
    assert "reconstruction" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tiny_model_dir), "--generated", str(samples)]) == 1


def test_quick_metrics_tell_data_from_junk_without_reference_fingerprints(train_smiles):
    from molvae.metrics import quick_metrics

    real = train_smiles[-600:]
    junk = ["C" * (5 + i % 30) + "O" for i in range(590)] + [None] * 10
    a = quick_metrics(real, train=train_smiles[:1000], device="cpu")
    b = quick_metrics(junk, device="cpu")
    assert a["valid"] == 1.0 and b["valid"] == pytest.approx(590 / 600)
    assert a["FCD/Test"] < 5 < 20 < b["FCD/Test"]         # MOSES molecules vs alkanols
    assert a["Novelty"] == 1.0 and "Novelty" not in b
    assert a["unique@1000"] == 1.0 and b["unique@1000"] == pytest.approx(30 / 590)
    assert 0.8 < a["IntDiv"] < 0.95 and a["Filters"] > 0.9
