"""The Gaussian-process screen of graph children (``retrain:screen=N``)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from rdkit import DataStructs
from scipy.stats import spearmanr

from molvae import chem, optimize, pmo
from molvae.data import BUNDLED, read_smiles
from molvae.errors import MolvaeError
from molvae.optimize import surrogate
from molvae.optimize.adapt import parse_adapt
from molvae.optimize.surrogate import TanimotoGP


@pytest.fixture(scope="module")
def scored():
    """400 bundled MOSES molecules and their celecoxib-rediscovery scores (Tanimoto to it)."""
    smiles = read_smiles(BUNDLED["train"])[:400]
    return smiles, np.array(pmo.oracle("celecoxib_rediscovery")(smiles))


def test_the_gp_predicts_scores_of_molecules_it_has_not_seen(scored):
    """Fitted on 300 molecules, its mean orders the other 100 as the oracle does, and the
    20 it ranks first score well above the 20 it ranks last."""
    smiles, y = scored
    mu, sd = TanimotoGP().predict(smiles[:300], y[:300], smiles[300:])
    assert spearmanr(mu, y[300:]).correlation > 0.7
    assert np.all(sd > 0) and np.all(np.isfinite(mu))
    ranked = TanimotoGP(beta=0.0).rank(smiles[:300], y[:300], smiles[300:], np.random.default_rng(0))
    truth = dict(zip(smiles[300:], y[300:]))
    first, last = [truth[s] for s in ranked[:20]], [truth[s] for s in ranked[-20:]]
    assert np.mean(first) > np.mean(last) + 0.05
    assert sorted(ranked) == sorted(smiles[300:])


def test_the_gp_is_sure_at_what_it_has_scored_and_unsure_far_from_it(scored):
    smiles, y = scored
    mu, sd = TanimotoGP().predict(smiles[:100], y[:100], smiles[:5] + ["FC(F)(F)C(F)(F)C(F)(F)F"])
    assert np.allclose(mu[:5], y[:5], atol=0.02)
    assert sd[:5].max() < 0.5 * sd[5]


def test_the_kernel_is_rdkits_tanimoto_in_either_product(scored, monkeypatch):
    """The int8 product of the bits (where torch has one) and the float32 one give exactly
    the Tanimoto similarities RDKit computes, an empty fingerprint's with itself 1."""
    smiles, _ = scored
    mols = smiles[:60] + ["[H][H]"]   # no heavy atom: no Morgan bits
    gp = TanimotoGP()
    x = gp._matrix(mols)
    fast = gp._kernel(x, x[:25])
    fps = [chem.morgan_fp(s) for s in mols]
    truth = np.array([DataStructs.BulkTanimotoSimilarity(f, fps[:25]) for f in fps[:-1]])
    assert fast.dtype == np.float32 and np.allclose(fast[:-1], truth, atol=1e-6)
    assert fast[-1, :].max() == 0.0 and gp._kernel(x[-1:], x[-1:])[0, 0] == 1.0

    monkeypatch.setattr(surrogate, "_int_mm_works", lambda: False)
    assert np.array_equal(gp._kernel(x, x[:25]), fast)


def test_the_counts_kernel_is_minmax_and_sees_what_bits_cannot(monkeypatch):
    """Tanimoto on Morgan counts is sum(min) / sum(max) of the count vectors, in either
    product; alkanes of 8 to 16 carbons share every radius-2 bit, so the bits GP predicts one
    score for all, and the counts GP tells them apart by their length."""
    chains = ["C" * n for n in range(8, 17)]
    gp = TanimotoGP(counts=True)
    x = gp._matrix(chains + ["c1ccccc1CCO", "[H][H]"])
    assert x.max() > 1
    a, b = x.astype(np.float64)[:, None, :], x.astype(np.float64)[None, :, :]
    union = np.maximum(a, b).sum(2)
    truth = np.where(union > 0, np.minimum(a, b).sum(2) / np.where(union > 0, union, 1), 1.0)
    assert np.allclose(gp._kernel(x, x), truth, atol=1e-6)

    with monkeypatch.context() as m:
        m.setattr(surrogate, "_int_mm_works", lambda: False)
        assert np.allclose(gp._kernel(x, x), truth, atol=1e-6)
    train, y = chains[::2], np.arange(8, 17, 2, dtype=float)
    bits_mu, _ = TanimotoGP().predict(train, y, chains[1::2])
    counts_mu, _ = TanimotoGP(counts=True).predict(train, y, chains[1::2])
    assert np.ptp(bits_mu) < 1e-6
    assert np.all(np.diff(counts_mu) > 0)


def test_the_descriptor_kernel_is_tanimoto_times_an_rbf_and_a_valid_kernel():
    """descriptors=True: the kernel is the bits' Tanimoto times exp(-|d_a - d_b|^2 / 2) on the
    scaled descriptors, 1 on the diagonal, never above the Tanimoto, positive semi-definite;
    unreadable molecules get zeros, not an error."""
    mols = read_smiles(BUNDLED["train"])[:60] + ["not a molecule"]
    gp = TanimotoGP(descriptors=True)
    fps, desc = gp._features(mols)
    assert desc.shape == (61, len(surrogate.DESCRIPTORS)) and not desc[-1].any()
    m = chem.to_mol(mols[0])
    from rdkit.Chem import rdMolDescriptors
    assert desc[0][0] * surrogate.DESCRIPTOR_SCALE == rdMolDescriptors.CalcNumAromaticRings(m)
    k = gp.kernel((fps, desc), (fps, desc))
    t = TanimotoGP._kernel(fps, fps)
    d2 = ((desc[:, None, :].astype(np.float64) - desc[None, :, :]) ** 2).sum(-1)
    assert np.allclose(k, t * np.exp(-0.5 * d2), atol=1e-6)
    assert np.allclose(np.diag(k), 1.0) and np.all(k <= t + 1e-7)
    assert np.linalg.eigvalsh(k.astype(np.float64)).min() > -1e-6


def test_the_descriptor_gp_learns_a_ring_count_that_bits_cannot_see():
    """A perindopril-like objective (similarity, but zero unless the molecule has exactly two
    aromatic rings): fitted on 400 molecules, the descriptor GP's 32 best of 200 others score
    well above the bits GP's and a random 32."""
    from rdkit.Chem import rdMolDescriptors

    smiles = read_smiles(BUNDLED["train"])[:600]
    sim = np.array(pmo.oracle("celecoxib_rediscovery")(smiles))
    rings = np.array([rdMolDescriptors.CalcNumAromaticRings(chem.to_mol(s)) for s in smiles])
    y = np.where(rings == 2, sim, 0.0)
    truth = dict(zip(smiles[400:], y[400:]))

    def kept(gp):
        return np.mean([truth[s] for s in gp.rank(smiles[:400], y[:400], smiles[400:], np.random.default_rng(0))[:32]])

    bits, desc, random = kept(TanimotoGP()), kept(TanimotoGP(descriptors=True)), y[400:432].mean()
    assert desc > bits + 0.03 and desc > random + 0.05


def test_a_broken_int8_product_is_caught_and_not_used(monkeypatch):
    """torch._int_mm is checked against exact counts once; a build whose product is wrong (or
    missing) leaves the kernel on float32."""
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32))
    surrogate._int_mm_works.cache_clear()
    try:
        assert not surrogate._int_mm_works()
        x = TanimotoGP()._matrix(["c1ccccc1O", "CCN", "c1ccccc1N"])
        assert np.allclose(np.diag(TanimotoGP._kernel(x, x)), 1.0)
    finally:
        surrogate._int_mm_works.cache_clear()


def test_rank_keeps_the_order_without_enough_finite_scores(scored):
    """Fewer than MIN_TRAIN finite scores (NaN and inf do not count): nothing to learn from."""
    smiles, y = scored
    bad = np.where(np.arange(40) < 30, np.nan, y[:40])
    bad[:5] = np.inf
    cands = smiles[100:120]
    assert TanimotoGP().rank(smiles[:40], bad, cands, np.random.default_rng(0)) == cands
    assert TanimotoGP().rank(smiles[:40], y[:40], [], np.random.default_rng(0)) == []


def test_rank_survives_flat_scores_and_hostile_candidates(scored):
    """All scores equal (no variance), a giant chain, an odd element: ranked, none lost."""
    smiles, _ = scored
    cands = ["C" * 2000, "[Se]1C=CC=C1", smiles[200], "[2H]C([2H])([2H])O"]
    out = TanimotoGP().rank(smiles[:50], np.full(50, 0.3), cands, np.random.default_rng(0))
    assert sorted(out) == sorted(cands)


def test_rank_fits_on_the_best_and_a_draw_of_the_rest(scored, monkeypatch):
    """Past MAX_TRAIN scored molecules the GP sees the best TOP_SHARE of them and a seeded
    draw of the others, so a long run's batches cost what its early ones did."""
    smiles, y = scored
    monkeypatch.setattr(surrogate, "MAX_TRAIN", 40)
    seen = []
    gp = TanimotoGP()
    real = gp.fit
    monkeypatch.setattr(gp, "fit", lambda train, s: (seen.append((list(train), s)), real(train, s))[1])
    gp.rank(smiles[:200], y[:200], smiles[300:310], np.random.default_rng(5))
    train, s = seen[0]
    assert len(train) == 40 and len(set(train)) == 40
    best = [smiles[i] for i in np.argsort(-y[:200], kind="stable")[:30]]
    assert train[:30] == best
    gp.rank(smiles[:200], y[:200], smiles[300:310], np.random.default_rng(5))
    assert seen[1][0] == train                       # seeded: a resumed run fits the same GP


@pytest.mark.parametrize("spec,match", [
    ("retrain:screen=0", r"screen must be a whole number from 1 \(off\) to 64"),
    ("retrain:screen=65", r"screen must be a whole number from 1 \(off\) to 64"),
    ("retrain:screen=-3", r"screen must be a whole number from 1"),
    ("retrain:screen=2.5", r"screen must be a whole number, got '2.5'"),
    ("retrain:screen=1e308", r"screen must be a whole number"),
    ("retrain:policy_screen=0", r"policy_screen must be a whole number from 1 \(off\) to 64"),
    ("retrain:policy_screen=1000000", r"policy_screen must be a whole number from 1 \(off\) to 64"),
    ("retrain:policy_screen=nan", r"policy_screen must be a whole number"),
    ("retrain:gp_counts=yes", r"gp_counts must be true or false, got 'yes'"),
    ("retrain:gp_counts=1", r"gp_counts must be true or false"),
    ("retrain:gp_descriptors=maybe", r"gp_descriptors must be true or false, got 'maybe'"),
])
def test_bad_screen_settings_are_refused_by_name(spec, match):
    with pytest.raises(MolvaeError, match=match):
        parse_adapt(spec)


def test_screened_children_are_the_gps_best_of_the_graph_made(tiny_model, monkeypatch):
    """screen=4: the GA makes 4x ``graph`` children and the batch keeps the ``graph`` the GP
    ranks first; screen=1 makes and keeps ``graph`` as before."""
    from collections import defaultdict
    from types import SimpleNamespace

    from molvae.optimize import policy as policy_mod
    from molvae.optimize.ledger import MoleculeLog
    from molvae.optimize.policy import PolicyProposer

    class Inner:
        def propose(self, n, stats):
            return [None] * n, list(range(n)), np.zeros((n, 4))

    smiles = read_smiles(BUNDLED["train"])[:60]
    mlog = MoleculeLog(None, ["oracle_call", "trial", "smiles", "score"], ["score"])
    mlog.rows = [[i + 1, i, s, v] for i, (s, v) in enumerate(zip(smiles, pmo.oracle("qed")(smiles)))]
    mlog.scores = [r[3] for r in mlog.rows]
    mlog.index = {s: i for i, s in enumerate(smiles)}
    monkeypatch.setattr(MoleculeLog, "__len__", lambda self: len(self.rows))
    asked = []
    real = policy_mod.offspring
    monkeypatch.setattr(policy_mod, "offspring", lambda top, n, *a, **k: (asked.append(n), real(top, n, *a, **k))[1])
    stats = SimpleNamespace(time=defaultdict(float))
    kids = {}
    for screen in (1, 4):
        gp = TanimotoGP()
        p = PolicyProposer(Inner(), tiny_model, mlog, policy=0, pool=16, temperature=1.0, seed=1, round_=1,
                           codes={}, graph=8, screen=screen, surrogate=gp)
        p.propose(2, stats)
        kids[screen] = p._children
        if screen == 4:
            made = real(p._top(), 32, np.random.default_rng([1, 1, 60, 2]), known=mlog.index,
                        weights=p._weights(16), mutation=p.mutation, ring=p.ring_crossover)
            ranked = gp.rank(smiles, mlog.scores, made, np.random.default_rng([1, 1, 60, 3]))
            assert kids[4] == [s for s in ranked if p._fits(s)][:8]
            ucb = dict(zip(made, np.add(*gp.predict(smiles, mlog.scores, made))))
            assert np.mean([ucb[s] for s in kids[4]]) > np.mean(list(ucb.values()))
    assert asked == [8, 32] and len(kids[1]) == len(kids[4]) == 8


def test_screened_samples_are_new_and_the_gps_best_of_the_decoded(tiny_model, monkeypatch):
    """policy_screen=4: each batch decodes 4x ``policy`` samples and keeps the ``policy`` new
    ones (not in the ledger, not the sampler's own decodes) that the GP ranks first."""
    from collections import defaultdict
    from types import SimpleNamespace

    from molvae.optimize import policy as policy_mod
    from molvae.optimize.ledger import MoleculeLog
    from molvae.optimize.policy import PolicyProposer

    class Inner:
        def propose(self, n, stats):
            return [None] * n, list(range(n)), np.zeros((n, tiny_model.latent_dim))

    smiles = read_smiles(BUNDLED["train"])[:60]
    mlog = MoleculeLog(None, ["oracle_call", "trial", "smiles", "score"], ["score"])
    mlog.rows = [[i + 1, i, s, v] for i, (s, v) in enumerate(zip(smiles, pmo.oracle("qed")(smiles)))]
    mlog.scores = [r[3] for r in mlog.rows]
    mlog.index = {s: i for i, s in enumerate(smiles)}
    monkeypatch.setattr(MoleculeLog, "__len__", lambda self: len(self.rows))
    decoded = []
    real = policy_mod._decode
    monkeypatch.setattr(policy_mod, "_decode", lambda *a, **k: (decoded.append(real(*a, **k)), decoded[-1])[1])
    # The sampled decodes as a trained model would give them: some of the ledger's own
    # molecules back, a repeat within the batch, some new ones, an invalid one.
    fake = smiles[:3] + [smiles[0], None] + read_smiles(BUNDLED["train"])[100:111]
    stats = SimpleNamespace(time=defaultdict(float))
    for k in (1, 4):
        gp = TanimotoGP()
        p = PolicyProposer(Inner(), tiny_model, mlog, policy=4, pool=16, temperature=1.0, seed=1, round_=1,
                           codes={}, graph=0, surrogate=gp if k > 1 else None, policy_screen=k)
        trials, numbers, z = p.propose(2, stats)
        assert len(numbers) == len(trials) == 2 + 4 and len(z) == 2 + 4 * k
        if k == 1:
            assert len(p.decode(tiny_model, z)) == 6
            continue
        monkeypatch.setattr(policy_mod, "_decode", lambda model, z, **kw: ["CCO", "CCN"] + fake)
        out = p.decode(tiny_model, z)
        assert out[:2] == ["CCO", "CCN"] and len(out) == 6
        new = list(dict.fromkeys(s for s in fake if s is not None and s not in mlog.index))
        ranked = gp.rank(smiles, mlog.scores, new, np.random.default_rng([1, 1, 60, 3]))
        assert out[2:] == ranked[:4] and not set(out[2:]) & set(mlog.index)
        ucb = dict(zip(new, np.add(*gp.predict(smiles, mlog.scores, new))))
        assert np.mean([ucb[s] for s in out[2:]]) >= np.mean(list(ucb.values()))
        # Too few new ones: the batch keeps its shape with the others, counted as repeats.
        monkeypatch.setattr(policy_mod, "_decode", lambda model, z, **kw: ["CCO", "CCN"] + smiles[:15] + ["c1ccccc1"])
        assert p.decode(tiny_model, z)[2:] == ["c1ccccc1"] + smiles[:3]


@pytest.mark.parametrize("screens", ["screen=4", "screen=4/policy_screen=4", "screen=4/gp_counts=true",
                                     "screen=4/gp_descriptors=true"])
def test_a_screened_run_scores_each_molecule_once_and_records_the_setting(tiny_model, tmp_path, screens):
    spec = "retrain:policy=4/graph=8/pool=8/radius=8.0/molecules=16/" + screens
    out = tmp_path / "run"
    df = optimize(tiny_model, "qed", budget=64, batch_size=4, seed=3, adapt=spec, adapt_every=16,
                  out_dir=out, progress=False)
    recorded = json.loads((out / "run.json").read_text())["adapt"]
    assert recorded["screen"] == 4 and recorded["policy_screen"] == (4 if "policy" in screens else 1)
    assert recorded["gp_counts"] is ("gp_counts" in screens)
    assert recorded["gp_descriptors"] is ("gp_descriptors" in screens)
    table = pd.read_csv(out / "molecules.csv")
    assert list(table["oracle_call"]) == list(range(1, 65)) and table["smiles"].is_unique
    assert (table["trial"] == -2).sum() > 0 and len(df) == 64


@pytest.mark.parametrize("descriptors", [False, True])
def test_the_mean_alone_is_predicts_mean(scored, descriptors):
    smiles, y = scored
    fit = TanimotoGP(descriptors=descriptors).fit(smiles[:200], y[:200])
    mu, _ = fit.predict(smiles[200:])
    assert np.allclose(fit.predict_mean(smiles[200:]), mu, atol=1e-9)


def test_donor_top_draws_donors_most_like_the_best_scored(tiny_model, monkeypatch, scored):
    """donor_top=k: a batch's donor crossovers draw from the k training molecules whose GP
    mean (celecoxib rediscovery here) is highest, which score above the donors left out."""
    from types import SimpleNamespace

    from molvae.optimize.ledger import MoleculeLog
    from molvae.optimize.mutate import donor_parents
    from molvae.optimize.policy import PolicyProposer

    smiles, y = scored
    mlog = MoleculeLog(None, ["oracle_call", "trial", "smiles", "score"], ["score"])
    mlog.rows = [[i + 1, i, s, v] for i, (s, v) in enumerate(zip(smiles[:200], y[:200]))]
    mlog.scores = list(y[:200])
    mlog.index = {s: i for i, s in enumerate(smiles[:200])}
    monkeypatch.setattr(MoleculeLog, "__len__", lambda self: len(self.rows))
    donors = donor_parents(smiles[200:])
    truth = dict(zip(smiles[200:], y[200:]))

    def proposer(top):
        return PolicyProposer(SimpleNamespace(), tiny_model, mlog, policy=0, pool=16, temperature=1.0, seed=1,
                              round_=1, codes={}, graph=8, screen=4, surrogate=TanimotoGP(), donors=donors,
                              donor=0.5, donor_top=top)

    assert proposer(0)._donors() == donors
    chosen = proposer(20)._donors()
    assert len(chosen) == 20 and all(d in donors for d in chosen)
    from rdkit import Chem

    kept = [truth[Chem.MolToSmiles(m)] for m, _ in chosen]
    assert np.mean(kept) > np.mean(y[200:]) + 0.05
