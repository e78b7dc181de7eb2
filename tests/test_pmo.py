"""PMO tasks (molvae.pmo) against TDC's own oracle code, and `bench optimize --suite pmo`.

REFERENCE holds scores that TDC computed: PyTDC 1.1.15's ``tdc/chem_utils/oracle/oracle.py``
(its definitions are unchanged since PyTDC 0.4.0), run on RDKit 2026.09.1 with stubs for the
two imports that no longer load (``rdkit.six``, ``pkg_resources``) and called the way PMO's
mol_opt calls it (canonical SMILES in; unparsable or failing -> 0). The molecules: each task's
target(s), the best of the first 2,000 bundled MOSES training molecules on that task, two
common drugs, and for isomers, valsartan and the hops a few written to hit the task.
"""

import pandas as pd
import pytest

from molvae import pmo
from molvae.errors import MolvaeError

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"

REFERENCE = {
    'qed': [
        (ASPIRIN, 0.550122),
        ('Cc1nn(-c2ccc(C(=O)NC(C)C)cc2)c2c1C(=O)CCC2', 0.947726),
        (IBUPROFEN, 0.821600),
    ],
    'celecoxib_rediscovery': [
        ('CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F', 1.000000),
        ('Cc1ccc(S(=O)(=O)Nc2cccc(-c3csc(C)n3)c2)cc1', 0.387755),
        (ASPIRIN, 0.115789),
        (IBUPROFEN, 0.121212),
    ],
    'troglitazone_rediscovery': [
        ('Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O', 1.000000),
        ('C=CCOc1ccc(CNc2c(C)nn(CC)c2C)cc1', 0.250000),
        (ASPIRIN, 0.120370),
        (IBUPROFEN, 0.177570),
    ],
    'thiothixene_rediscovery': [
        ('CN(C)S(=O)(=O)c1ccc2Sc3ccccc3C(=CCCN4CCN(C)CC4)c2c1', 1.000000),
        ('CCCOc1ccc(S(=O)(=O)N2CCN(C)CC2)cc1C', 0.336449),
        (ASPIRIN, 0.142857),
        (IBUPROFEN, 0.136364),
    ],
    'albuterol_similarity': [
        ('CC(C)(C)NCC(O)c1ccc(O)c(CO)c1', 1.000000),
        ('COC(=O)CNCc1ccc(O)c(C(F)(F)F)c1', 0.517413),
        (ASPIRIN, 0.235294),
        (IBUPROFEN, 0.437500),
    ],
    'mestranol_similarity': [
        ('COc1ccc2[C@H]3CC[C@@]4(C)[C@@H](CC[C@@]4(O)C#C)[C@@H]3CCc2c1', 1.000000),
        ('CC(C)Oc1ccc(C(O)CCCCO)cc1F', 0.357827),
        (ASPIRIN, 0.091503),
        (IBUPROFEN, 0.184352),
    ],
    'isomers_c7h8n2o2': [
        ('Cc1ccc([N+](=O)[O-])c(N)c1', 1.000000),
        ('O=C(CCC(F)(F)F)Nc1c[nH]cc(Br)c1=O', 0.272532),
        ('NC(=O)c1ccc(N)cc1O', 1.000000),
        (ASPIRIN, 0.272532),
        (IBUPROFEN, 0.000000),
    ],
    'isomers_c9h10n2o2pf2cl': [
        ('NC(=O)c1ccc(OP(F)(F)Cl)c(CN)c1', 0.924849),
        ('Cc1csc(CNC(=O)COCC(F)(F)F)n1', 0.766727),
        ('CCOP(=O)(F)F', 0.000213),
        (ASPIRIN, 0.184981),
        (IBUPROFEN, 0.002055),
    ],
    'median1': [
        ('CC1(C)C2CCC1(C)C(=O)C2', 0.400000),
        ('CC1(C)C2CCC1(C)C(NC(=O)c1n[nH]c(=O)[nH]1)C2', 0.214892),
        ('CC(C)C1CCC(C)CC1O', 0.400000),
        (ASPIRIN, 0.039830),
        (IBUPROFEN, 0.093918),
    ],
    'median2': [
        ('O=C1N(CC(N2C1CC3=C(C2C4=CC5=C(OCO5)C=C4)NC6=C3C=CC=C6)=O)C', 0.362372),
        ('CCCOc1ccc(S(=O)(=O)N2CCN(C)CC2)cc1C', 0.217653),
        ('CCCC1=NN(C2=C1N=C(NC2=O)C3=C(C=CC(=C3)S(=O)(=O)N4CCN(CC4)C)OCC)C', 0.362372),
        (ASPIRIN, 0.095520),
        (IBUPROFEN, 0.082199),
    ],
    'osimertinib_mpo': [
        ('COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc2nccc(n2)c3cn(C)c4ccccc34', 0.133342),
        ('O=C(Cn1c(=O)[nH]c2ccccc2c1=O)Nc1ccccn1', 0.775898),
        (ASPIRIN, 0.129513),
        (IBUPROFEN, 0.002789),
    ],
    'fexofenadine_mpo': [
        ('CC(C)(C(=O)O)c1ccc(cc1)C(O)CCCN2CCC(CC2)C(O)(c3ccccc3)c4ccccc4', 0.597340),
        ('Cc1ccc(-c2cc(CC(=O)N3CCC(C(N)=O)CC3)no2)cc1', 0.642777),
        (ASPIRIN, 0.148553),
        (IBUPROFEN, 0.005439),
    ],
    'ranolazine_mpo': [
        ('COc1ccccc1OCC(O)CN2CCN(CC(=O)Nc3c(C)cccc3C)CC2', 0.049237),
        ('Cc1ccsc1C(=O)C(C#N)c1nc(-c2ccc(C#N)cc2)cs1', 0.223489),
        (ASPIRIN, 0.007333),
        (IBUPROFEN, 0.028850),
    ],
    'perindopril_mpo': [
        ('O=C(OCC)C(NC(C(=O)N1C(C(=O)O)CC2CCCCC12)C)CCC', 0.018316),
        ('CC(C)CC(NC(=O)c1ccn2ccsc12)C(=O)NC1CCCC1', 0.479675),
        (ASPIRIN, 0.118733),
        (IBUPROFEN, 0.128079),
    ],
    'amlodipine_mpo': [
        ('Clc1ccccc1C2C(=C(/N/C(=C2/C(=O)OCC)COCCN)C)\\C(=O)OC', 0.367879),
        ('COC(=O)c1cccc(CCNC(=O)c2c(C)[nH]c3ccccc23)c1', 0.535683),
        (ASPIRIN, 0.008540),
        (IBUPROFEN, 0.007024),
    ],
    'sitagliptin_mpo': [
        ('Fc1cc(c(F)cc1F)CC(N)CC(=O)N3Cc2nnc(n2CC3)C(F)(F)F', 0.000004),
        ('O=C(Cn1c(-c2ccccc2)noc1=O)NCc1cc(F)cc(F)c1', 0.332092),
        ('NC(CC(=O)N1CCn2c(nnc2C(F)(F)F)C1)Cc1cc(F)c(F)cc1F', 0.000004),
        (ASPIRIN, 0.000195),
        (IBUPROFEN, 0.000001),
    ],
    'zaleplon_mpo': [
        ('O=C(C)N(CC)C1=CC=CC(C2=CC=NC3=C(C=NN23)C#N)=C1', 0.466499),
        ('Cc1c(C(=O)N(C)Cc2cccc(F)c2)cnn1-c1ccccc1F', 0.491363),
        (ASPIRIN, 0.000000),
        (IBUPROFEN, 0.018391),
    ],
    'valsartan_smarts': [
        ('CCCCC(=O)N(Cc1ccc(-c2ccccc2-c2nnn[nH]2)cc1)C(C(C)C)C(=O)O', 0.000000),
        ('CN(C=O)Cc1ccc(-c2ccccc2)cc1', 0.000000),
        ('CC(O)CN(C=O)Cc1ccc(-c2ccccc2-c2nnn[nH]2)cc1', 0.075754),
        ('CN(C=O)Cc1ccc(-c2ccccc2-c2nnn[nH]2)cc1', 0.053034),
        (ASPIRIN, 0.000000),
        (IBUPROFEN, 0.000000),
    ],
    'deco_hop': [
        ('CCCOc1cc2ncnc(Nc3ccc4ncsc4c3)c2cc1S(=O)(=O)C(C)(C)C', 0.500000),
        ('COc1ccc(Nc2ncnc3c2cnn3C)cc1N1CCCC1=O', 0.600097),
        ('CCCOc1cc2ncnc(Nc3ccc(F)cc3)c2cc1O', 0.862689),
        (ASPIRIN, 0.509150),
        (IBUPROFEN, 0.504744),
    ],
    'scaffold_hop': [
        ('CCCOc1cc2ncnc(Nc3ccc4ncsc4c3)c2cc1S(=O)(=O)C(C)(C)C', 0.666667),
        ('COc1ccc(Nc2ncnc3c2cnn3C)cc1N1CCCC1=O', 0.484592),
        ('CCCOc1ccc(Nc2ccc3ncsc3c2)cc1C(=O)N', 0.420444),
        (ASPIRIN, 0.347160),
        (IBUPROFEN, 0.340502),
    ],
}


def test_every_task_has_reference_scores():
    assert set(REFERENCE) == set(pmo.TASK_NAMES) and len(pmo.TASK_NAMES) == 20
    assert all(len(pairs) >= 3 for pairs in REFERENCE.values())


@pytest.mark.parametrize("task", sorted(REFERENCE))
def test_scores_match_tdc(task):
    smiles, expected = zip(*REFERENCE[task])
    got = pmo.oracle(task)(list(smiles))
    for s, g, e in zip(smiles, got, expected):
        assert g == pytest.approx(e, abs=1e-4), f"{task} on {s}: {g} (TDC: {e})"


def test_invalid_smiles_score_zero_and_valid_ones_stay_in_unit_interval(small_smiles):
    for task in pmo.TASK_NAMES:
        f = pmo.oracle(task)
        assert f(["C1CC(", "", "not a smiles"]) == [0.0, 0.0, 0.0], task
        scores = f(small_smiles[:40])
        assert len(scores) == 40 and all(0.0 <= v <= 1.0 for v in scores), task


def test_a_pmo_task_is_an_objective_named_after_it():
    table = pmo.objective("median1").score(["CC1(C)C2CCC1(C)C(=O)C2", "C1CC("])
    assert table["median1"].iloc[0] == pytest.approx(0.4) and table["score"].iloc[0] == pytest.approx(0.4)
    assert not table["feasible"].iloc[1]


def test_pmo_tasks_are_objective_presets_for_optimize(tiny_model_dir, tmp_path, capsys):
    from molvae.cli import main
    from molvae.scoring import as_objective

    table = as_objective("pmo:median1").score(["CC1(C)C2CCC1(C)C(=O)C2"])
    assert table["median1"].iloc[0] == pytest.approx(0.4)
    with pytest.raises(MolvaeError, match="unknown PMO task 'median9'"):
        as_objective("pmo:median9")
    with pytest.raises(MolvaeError, match="unknown PMO task ''"):
        as_objective("pmo:")
    out = tmp_path / "run"
    assert main(["optimize", "--model", str(tiny_model_dir), "--objective", "pmo:qed", "--budget", "20",
                 "--out", str(out)]) == 0
    assert "qed" in (out / "molecules.csv").read_text().splitlines()[0]


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(MolvaeError, match="unknown PMO task 'drd2'.*median1"):
        pmo.oracle("drd2")


def test_published_rows_add_up_to_their_sources_sums():
    # The sources give 23-task sums; minus drd2, gsk3b, jnk3 (REINVENT .945 .865 .783, Genetic
    # GFN .974 .881 .764, InVirtuoGen .995 .988 .898) they must equal the 20 figures copied here.
    assert sum(pmo.PUBLISHED["REINVENT"].values()) == pytest.approx(14.184 - 0.945 - 0.865 - 0.783, abs=2e-3)
    assert sum(pmo.PUBLISHED["Genetic GFN"].values()) == pytest.approx(16.213 - 0.974 - 0.881 - 0.764, abs=2e-3)
    assert sum(pmo.PUBLISHED["InVirtuoGen (ZINC pre-screen)"].values()) == pytest.approx(
        18.993 - 0.995 - 0.988 - 0.898, abs=2e-3)
    for row in pmo.PUBLISHED.values():
        assert set(row) <= set(pmo.TASK_NAMES)


def test_bench_optimize_pmo_suite_on_two_tasks(tiny_model_dir, tmp_path, capsys):
    from molvae.cli import main

    out = tmp_path / "pmo.md"
    argv = ["-q", "bench", "optimize", "--model", str(tiny_model_dir), "--device", "cpu", "--suite", "pmo",
            "--tasks", "median1,valsartan_smarts", "--samplers", "prior,cmaes", "--seeds", "1",
            "--budgets", "12", "--batch-size", "6", "--out", str(out)]
    assert main(argv) == 0
    md = out.read_text()
    assert "## PMO tasks" in md and "| prior @ 12 | cmaes @ 12 | REINVENT | Genetic GFN |" in md
    assert "| median1 |" in md and "| valsartan_smarts |" in md and "**sum of 2**" in md
    # published sums over these two tasks: REINVENT 0.356 + 0.178, Genetic GFN 0.379 + 0.135
    assert "| 0.53 | 0.51 |" in md
    import pandas as pd

    runs = pd.read_csv(out.with_suffix(".csv"))
    assert sorted(zip(runs["task"], runs["method"])) == [
        ("median1", "cmaes"), ("median1", "prior"), ("valsartan_smarts", "cmaes"), ("valsartan_smarts", "prior")]
    # (the tiny model's latent box decodes few distinct molecules, so a search may stall early)
    prior = runs[runs["method"] == "prior"]
    assert (prior["oracle_calls"] == 12).all() and (runs["oracle_calls"] >= 1).all()
    assert runs["auc_top10"].between(0, 1).all() and (runs.loc[runs["task"] == "median1", "auc_top10"] > 0).all()
    # A rerun resumes from OUT.runs.jsonl: nothing is measured again, the table is the same.
    capsys.readouterr()
    assert main(argv) == 0
    again = pd.read_csv(out.with_suffix(".csv"))
    pd.testing.assert_frame_equal(again, runs)
    with pytest.raises(SystemExit):
        main(["bench", "optimize", "--suite", "guacamol"])
    # Malformed lists are refused before any run starts, naming the flag (an empty --samplers
    # used to run the whole suite with prior sampling alone).
    for flag, bad in (("--samplers", ","), ("--samplers", " "), ("--budgets", "12,abc"), ("--tasks", ",")):
        capsys.readouterr()
        assert main([*argv[:-2], flag, bad]) == 1
        assert flag in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_workers_decode_in_the_callers_precision(tiny_model_dir, precision):
    # A worker rebuilt the model with precision 'auto': on a CPU with bf16 a caller's fp32
    # model was searched in bf16 by --jobs N (and on one without, a bf16 model in fp32), so
    # parallel runs were not the serial ones. One of the two cases fails on any machine.
    from molvae import benchmark
    from molvae.model import MolVAE, load_model
    from molvae.optimize import region

    base = load_model(tiny_model_dir, device="cpu")
    model = MolVAE(base.module, base.vocab, "cpu", precision=precision)
    benchmark._worker_init(benchmark._worker_payload(model), 1, region.PCA_MOLECULES)
    try:
        assert benchmark._WORKER_MODEL.decode_bf16 == (precision == "bf16")
        assert benchmark._WORKER_MODEL.finetune_bf16 == (precision == "bf16")
        model.finetune_bf16 = not model.finetune_bf16  # set apart from the decoding: kept too
        benchmark._worker_init(benchmark._worker_payload(model), 1, region.PCA_MOLECULES)
        assert benchmark._WORKER_MODEL.finetune_bf16 == (precision != "bf16")
    finally:
        benchmark._WORKER_MODEL = None


def test_bench_keeps_bf16_runs_apart_from_fp32_runs(tiny_model_dir, tmp_path):
    # bf16 decodes a few % of molecules differently: a runs file of fp32 runs must not be
    # resumed by a bf16 model (nor the reverse), and fp32 runs files keep their old settings.
    import json

    from molvae.benchmark import benchmark_optimize
    from molvae.model import MolVAE, load_model

    base = load_model(tiny_model_dir, device="cpu")
    kw = dict(tasks=["median1"], samplers=["prior"], seeds=1, budgets=[12], batch_size=6, suite="pmo",
              progress=False, out=tmp_path / "b.md")
    runs = tmp_path / "b.runs.jsonl"
    benchmark_optimize(MolVAE(base.module, base.vocab, "cpu", precision="fp32"), **kw)
    fp32 = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(fp32) == 1 and "decode" not in fp32[0]["settings"]
    benchmark_optimize(MolVAE(base.module, base.vocab, "cpu", precision="bf16"), **kw)
    both = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(both) == 2 and both[1]["settings"]["decode"] == "bf16"   # measured, not reused
    assert both[1]["settings"]["finetune"] == "bf16" and "finetune" not in fp32[0]["settings"]
    benchmark_optimize(MolVAE(base.module, base.vocab, "cpu", precision="fp32"), **kw)
    assert len(runs.read_text().splitlines()) == 2                      # fp32 run reused


def test_bench_runs_in_parallel_give_the_serial_figures(tiny_model_dir, tmp_path):
    # --jobs: the runs are independent, so N processes must give what one process gives, and
    # every run is checkpointed by the parent (an interrupted parallel benchmark resumes).
    from molvae.benchmark import benchmark_optimize
    from molvae.model import load_model

    model = load_model(tiny_model_dir, device="cpu")
    kw = dict(tasks=["median1", "isomers_c7h8n2o2"], samplers=["cmaes"], seeds=2, budgets=[12],
              batch_size=6, suite="pmo", progress=False)
    serial = benchmark_optimize(model, out=tmp_path / "serial.md", **kw).runs
    parallel = benchmark_optimize(model, out=tmp_path / "parallel.md", jobs=2, **kw).runs
    figures = ["task", "method", "budget", "seed", "oracle_calls", "top1", "top10_mean", "auc_top10"]
    assert len(serial) == 8
    pd.testing.assert_frame_equal(parallel[figures], serial[figures])
    assert len((tmp_path / "parallel.runs.jsonl").read_text().splitlines()) == 8
    with pytest.raises(MolvaeError, match="jobs must be a positive integer"):
        benchmark_optimize(model, jobs=0, **kw)


def test_bench_suite_rejects_tasks_outside_it():
    from molvae.benchmark import benchmark_optimize

    with pytest.raises(MolvaeError, match=r"unknown pmo task\(s\) drd2; valid: qed, celecoxib_rediscovery"):
        benchmark_optimize(None, tasks=["drd2"], suite="pmo")
    with pytest.raises(MolvaeError, match="unknown benchmark suite 'guacamol'; valid: pmo"):
        benchmark_optimize(None, suite="guacamol")
