"""Latent-space optimization: budget and dedup, resume after a kill, workers, lead
optimization, Pareto fronts, outputs; the loop's mechanics run on a fast stand-in model with
MolVAE's interface, and the end-to-end tests on a real tiny model trained here."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from molvae import chem
from molvae import optimize as opt
from molvae.optimize import loop, region
from molvae.errors import MolvaeError
from molvae.optimize import optimize, pareto_mask, sample_prior_baseline, top_k_auc
from molvae.optimize.adapt import AdaptConfig

HERE = Path(__file__).resolve().parent
LIBRARY_SIZE = 300  # molecules the stand-in model can decode


class FakeVAE:
    """MolVAE's interface over a fixed library of molecules: ``decode(z)`` gives the library
    molecule whose code is nearest to z, so nearby points decode to the same molecule (as a
    real decoder does) and duplicates are common. Far from the codes (``|z_0| > 3.5``) it
    decodes nothing, like a decoder off its training distribution."""

    latent_dim = 8
    device = torch.device("cpu")

    def __init__(self, library: list[str], seed: int = 0):
        self.library = [chem.canonical(s) for s in library]
        self.codes = np.random.default_rng(seed).standard_normal((len(library), self.latent_dim))
        self.where = {s: i for i, s in enumerate(self.library)}
        self.module = torch.nn.Linear(self.latent_dim, 1)  # gives the model a fingerprint
        with torch.no_grad():
            self.module.weight.copy_(torch.arange(self.latent_dim, dtype=torch.float32) + seed)
            self.module.bias.zero_()
        self.decoded = 0

    def _code(self, smiles: str) -> np.ndarray:
        i = self.where.get(smiles)
        if i is not None:
            return self.codes[i]
        return np.random.default_rng(zlib.crc32(smiles.encode())).standard_normal(self.latent_dim)

    def try_encode(self, smiles):
        canon = [chem.canonical(s) for s in smiles]
        ok = [c is not None for c in canon]
        mu = torch.tensor(np.array([self._code(c) for c in canon if c is not None]).reshape(-1, self.latent_dim),
                          dtype=torch.float32)
        return mu, torch.zeros_like(mu), ok, [None if good else "invalid" for good in ok]

    def encode(self, smiles):
        mu, logvar, _, _ = self.try_encode(smiles)
        return mu, logvar

    def decode(self, z, **_):
        z = np.asarray(torch.as_tensor(z, dtype=torch.float32).cpu(), dtype=np.float64)
        self.decoded += len(z)
        d = ((z[:, None, :] - self.codes[None]) ** 2).sum(-1)
        nearest = d.argmin(1)
        return [None if abs(row[0]) > 3.5 else self.library[i] for row, i in zip(z, nearest)]

    def sample_prior(self, n, seed=None):
        return torch.randn((n, self.latent_dim), generator=torch.Generator().manual_seed(seed or 0))

    class vocab:
        """Writes any molecule of up to 80 SMILES characters (the default search's graph
        children must fit the model's vocabulary and length)."""

        @staticmethod
        def try_encode(smiles):
            return ([ord(c) for c in smiles], None) if len(smiles) <= 80 else (None, "too long")


class Counting:
    """A custom objective (list[str] -> list[float]) that records every molecule it scores."""

    def __init__(self, log_path: Path | None = None, delay: float = 0.0):
        self.calls: list[list[str]] = []
        self.log_path = log_path
        self.delay = delay

    def __call__(self, smiles):
        self.calls.append(list(smiles))
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write("".join(s + "\n" for s in smiles))
        if self.delay:
            time.sleep(self.delay)
        return [chem.PROPERTIES["qed"](chem.to_mol(s)) for s in smiles]

    @property
    def scored(self) -> list[str]:
        return [s for batch in self.calls for s in batch]


def _load_study(out: Path):
    import optuna

    return optuna.load_study(study_name=out.name, storage=opt.open_storage(f"journal:{out / 'study.journal'}", None))


@pytest.fixture(scope="module")
def library(train_smiles):
    return train_smiles[:LIBRARY_SIZE]


@pytest.fixture(scope="module")
def fake(library):
    return FakeVAE(library)


@pytest.fixture(autouse=True)
def _small_pca(monkeypatch):
    monkeypatch.setattr(region, "PCA_MOLECULES", 400)  # the shipped default encodes 5000


# ---------------------------------------------------------------------------- budget, dedup


def test_budget_counts_unique_molecules_and_duplicates_are_free(fake):
    objective = Counting()
    table = optimize(fake, objective, budget=40, sampler="random", batch_size=16, progress=False)
    scored = objective.scored
    assert len(scored) == 40 == len(set(scored))           # each molecule scored once
    assert len(table) == 40 and table["smiles"].is_unique
    assert sorted(table["oracle_call"]) == list(range(1, 41))
    s = table.attrs["summary"]
    assert s["oracle_calls"] == 40 and s["stop_reason"] == "budget"
    assert s["duplicate_decodes"] > 0                        # a small library repeats
    assert s["trials"] == s["duplicate_decodes"] + s["invalid_decodes"] + s["over_budget_decodes"] + 40
    # The custom callable is the score; the table is sorted best first.
    assert table["score"].is_monotonic_decreasing
    assert np.allclose(table["custom_raw"], table["score"])


def test_invalid_decodes_are_told_but_never_scored_or_counted(fake):
    objective = Counting()
    table = optimize(fake, objective, budget=25, sampler="random", batch_size=32, bound=6.0,
                     progress=False, n_components=8)
    s = table.attrs["summary"]
    assert s["invalid_decodes"] > 0                 # |z_0| > 3.5 decodes to nothing
    assert None not in objective.scored and len(objective.scored) == 25


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_samplers_improve_on_their_first_batch(train_smiles, sampler):
    fake = FakeVAE(train_smiles[:2000])  # enough molecules that a converging sampler finds new ones
    table = optimize(fake, "qed", budget=40, sampler=sampler, batch_size=12, seed=1, progress=False)
    first = table[table["batch"] == table["batch"].min()]["score"].max()
    assert table["score"].max() >= first
    assert table.attrs["summary"]["sampler"] == sampler and len(table) == 40


def test_stop_rules(fake):
    t = optimize(fake, "qed", budget=100, sampler="random", batch_size=8, target=0.5, progress=False)
    assert t.attrs["summary"]["stop_reason"] == "target" and t["score"].max() >= 0.5
    t = optimize(fake, "qed", budget=100, sampler="random", batch_size=8, patience=5, progress=False)
    s = t.attrs["summary"]
    assert s["stop_reason"] == "patience" and s["oracle_calls"] < 100
    calls_of_best = t.sort_values("oracle_call")["score"].cummax().diff().fillna(1) > 0
    last_gain = t.sort_values("oracle_call")["oracle_call"][calls_of_best.to_numpy()].max()
    assert s["oracle_calls"] - last_gain >= 5


def test_bad_arguments_raise_molvae_error(fake):
    with pytest.raises(MolvaeError, match="sampler"):
        optimize(fake, "qed", sampler="annealing", progress=False)
    with pytest.raises(MolvaeError, match="budget"):
        optimize(fake, "qed", budget=0, progress=False)
    with pytest.raises(MolvaeError, match="n_components"):
        optimize(fake, "qed", n_components=99, progress=False)
    with pytest.raises(MolvaeError, match="lead"):
        optimize(fake, "qed", similarity_threshold=0.4, progress=False)
    with pytest.raises(MolvaeError, match="out_dir"):
        optimize(fake, "qed", workers=2, progress=False)


_IN_POOL = {}


def _optimize_with_workers_in_a_pool_worker(out):
    try:
        optimize(_IN_POOL["model"], "qed", budget=8, sampler="random", batch_size=4, workers=2,
                 out_dir=out, progress=False)
    except MolvaeError as e:
        return str(e)
    return "ran"


def test_workers_inside_a_pool_worker_is_a_clear_error(fake, tmp_path):
    """A daemonic process (a multiprocessing.Pool worker) may not start the search's workers;
    that used to surface as a bare AssertionError from deep inside multiprocessing."""
    import multiprocessing as mp

    _IN_POOL["model"] = fake
    try:
        with mp.get_context("fork").Pool(1) as pool:
            msg = pool.apply(_optimize_with_workers_in_a_pool_worker, (str(tmp_path / "run"),))
    finally:
        _IN_POOL.clear()
    assert "workers=1" in msg and "daemonic" in msg


def test_an_absurd_batch_size_is_refused_before_any_work(fake):
    # batch_size=10**8 used to ask Optuna for 10**8 trials and decode them: a run that never
    # came back (and a CMA-ES population of 10**8). Both entry points must refuse it at once.
    from molvae.optimize import sample_prior_baseline
    from molvae.optimize.loop import MAX_BATCH_SIZE

    for entry in (optimize, sample_prior_baseline):
        for bad in (10**8, MAX_BATCH_SIZE + 1, 0, -3, 2.5, float("nan")):
            with pytest.raises(MolvaeError, match="batch_size"):
                entry(fake, "qed", budget=20, batch_size=bad, progress=False)
    assert len(optimize(fake, "qed", budget=20, batch_size=MAX_BATCH_SIZE, progress=False)) == 20


# ---------------------------------------------------------------------------- run folder, resume


def test_outputs_and_in_process_resume(fake, tmp_path):
    out = tmp_path / "run"
    objective = Counting()
    optimize(fake, objective, budget=30, sampler="cmaes", batch_size=10, out_dir=out, progress=False)
    first = pd.read_csv(out / "molecules.csv")
    for name in ("molecules.csv", "top.csv", "summary.json", "curve.png", "study.journal", "search_space.npz"):
        assert (out / name).exists(), name
    assert list(first.columns[:3]) == ["oracle_call", "smiles", "score"]
    assert {"feasible", "custom_raw", "custom", "trial", "batch", "worker", "seconds"} <= set(first.columns)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("top1", "top10_mean", "top100_mean", "auc_top10", "wall_s", "oracle_calls", "calls_per_s",
                "time", "overhead_fraction", "stop_reason"):
        assert key in summary, key
    assert {"decode_s", "score_s", "sampler_s"} <= set(summary["time"])
    assert {"qed", "mw", "sa"} <= set(pd.read_csv(out / "top.csv").columns)

    # Same call, larger budget: nothing re-scored, numbering continues, the study grows.
    table = optimize(fake, objective, budget=50, sampler="cmaes", batch_size=10, out_dir=out, progress=False)
    assert len(objective.scored) == 50 == len(set(objective.scored))
    after = pd.read_csv(out / "molecules.csv")
    pd.testing.assert_frame_equal(after.head(30), first)
    assert list(after["oracle_call"]) == list(range(1, 51)) and len(table) == 50
    assert table.attrs["summary"]["resumed_from_calls"] == 30

    # A different objective in the same folder is refused, not mixed in.
    with pytest.raises(MolvaeError, match="other settings|columns"):
        optimize(fake, "qed", budget=60, sampler="cmaes", out_dir=out, progress=False)


@pytest.mark.parametrize("duplicates", ["penalize", "cached"])
def test_the_study_records_each_trial_and_what_it_was_told(fake, tmp_path, duplicates):
    out = tmp_path / "run"
    optimize(fake, "qed", budget=20, sampler="random", batch_size=16, out_dir=out, duplicates=duplicates,
             progress=False)
    molecules = pd.read_csv(out / "molecules.csv").set_index("smiles")
    study = _load_study(out)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) >= 20 and len(trials) % 16 == 0      # whole batches, every trial stored
    repeats = 0
    for t in trials:
        smiles = t.user_attrs["smiles"]
        if smiles is None:
            assert t.value == 0                                   # invalid decode
        elif smiles not in molecules.index:
            assert t.state.name == "FAIL"                         # decoded after the budget ran out
        elif molecules.loc[smiles, "trial"] == t.number:
            assert t.value == pytest.approx(molecules.loc[smiles, "score"])
        else:
            repeats += 1
            expected = 0 if duplicates == "penalize" else molecules.loc[smiles, "score"]
            assert t.value == pytest.approx(expected)
    assert repeats > 0


def test_partial_last_line_is_dropped(fake, tmp_path):
    out = tmp_path / "run"
    optimize(fake, "qed", budget=12, sampler="random", batch_size=6, out_dir=out, progress=False)
    with open(out / "molecules.csv", "a") as fh:
        fh.write("13,CCO,0.4")  # a write cut short by a kill
    with open(out / "study.journal", "a") as fh:
        fh.write('{"op_code": 4, "worker_id"')  # and one in the study
    table = optimize(fake, "qed", budget=15, sampler="random", batch_size=6, out_dir=out, progress=False)
    rows = pd.read_csv(out / "molecules.csv")
    assert len(rows) == 15 and rows["smiles"].is_unique and len(table) == 15
    assert list(rows["oracle_call"]) == list(range(1, 16))


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import molvae.optimize as opt
    from molvae.data import bundled
    from test_optimize import Counting, FakeVAE
    from pathlib import Path
    opt.region.PCA_MOLECULES = 400
    out = Path({out!r})
    objective = Counting(out.parent / "scored.txt", delay={delay})
    opt.optimize(FakeVAE(bundled("train")[:{library}]), objective, budget={budget}, sampler={sampler!r},
                 batch_size=8, out_dir=out, workers={workers}, progress=False)
""")


def _run_and_kill(tmp_path: Path, budget: int, sampler: str, workers: int, kill_at: int) -> None:
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(HERE), out=str(out), delay=0.15, budget=budget, workers=workers,
                                sampler=sampler, library=LIBRARY_SIZE)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "MOLVAE_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.time() + 60
    csv = out / "molecules.csv"
    while time.time() < deadline and proc.poll() is None:
        if csv.exists() and sum(1 for _ in open(csv)) - 1 >= kill_at:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the worker processes too
    proc.wait()


@pytest.mark.parametrize("sampler,workers", [("cmaes", 1), ("random", 2)])
def test_kill_and_resume_loses_nothing_and_never_rescores(fake, tmp_path, sampler, workers, monkeypatch):
    budget = 48
    _run_and_kill(tmp_path, budget, sampler, workers, kill_at=16)
    if workers == 1:
        # Resuming reads the study file: nothing in it may be unpickled (it could run code).
        import pickle

        def refuse(*args, **kwargs):
            raise AssertionError("unpickled while resuming")

        monkeypatch.setattr(pickle, "loads", refuse)
        monkeypatch.setattr(pickle, "load", refuse)
    out = tmp_path / "run"
    before = pd.read_csv(out / "molecules.csv")
    assert 16 <= len(before) < budget
    scored_before = (tmp_path / "scored.txt").read_text().split()

    objective = Counting()
    table = optimize(fake, objective, budget=budget, sampler=sampler, batch_size=8, out_dir=out,
                     workers=workers, progress=False)
    after = pd.read_csv(out / "molecules.csv")
    pd.testing.assert_frame_equal(after.head(len(before)), before)     # nothing lost
    assert not set(objective.scored) & set(before["smiles"])            # nothing re-scored
    assert len(after) == budget == len(table), table.attrs["summary"]["stop_reason"]
    assert after["smiles"].is_unique
    assert list(after["oracle_call"]) == list(range(1, budget + 1))
    # Everything the killed run scored and wrote is in the final table once.
    assert set(before["smiles"]) <= set(scored_before)
    study = _load_study(out)
    states = {t.state.name for t in study.get_trials(deepcopy=False)}
    assert "RUNNING" not in states


@pytest.mark.parametrize("sampler", ["random", "cmaes"])
def test_workers_share_one_log_without_rescoring(fake, tmp_path, sampler):
    log_path = tmp_path / "scored.txt"
    objective = Counting(log_path)
    table = optimize(fake, objective, budget=40, sampler=sampler, batch_size=8, out_dir=tmp_path / "w",
                     workers=2, progress=False)
    scored = log_path.read_text().split()   # written by both worker processes
    assert len(scored) == len(set(scored)) == 40
    assert len(table) == 40 and set(table["worker"]) == {0, 1}
    if sampler == "cmaes":  # one CMA-ES per worker, told apart by their stream
        from molvae.samplers import ATTR

        streams = {t.system_attrs[ATTR][0] for t in _load_study(tmp_path / "w").trials if ATTR in t.system_attrs}
        assert streams == {0, 1}


# ---------------------------------------------------------------------------- lead, start, Pareto


def test_lead_optimization_respects_the_similarity_floor(fake, library):
    lead = fake.library[3]
    table = optimize(fake, "qed", budget=30, sampler="random", batch_size=16, lead=lead,
                     similarity_threshold=0.4, trust_radius=1.5, progress=False)
    sims = chem.tanimoto(lead, table["smiles"].tolist())
    feasible = table["feasible"].to_numpy()
    assert feasible.any() and (~feasible).any()
    assert (sims[feasible] >= 0.4).all()
    assert np.allclose(table["lead_similarity_raw"], sims)
    assert (table.loc[~feasible, "score"] == 0).all()
    assert lead in set(table["smiles"])     # the lead (box centre) is tried first
    assert table.attrs["summary"]["search_region"] == "trust_region"


def test_scaffold_filter(fake):
    table = optimize(fake, "qed", budget=20, sampler="random", batch_size=16, scaffold="c1ccccc1",
                     progress=False)
    has = [chem.to_mol(s).HasSubstructMatch(chem.to_mol("c1ccccc1")) for s in table["smiles"]]
    assert (table["feasible"].to_numpy() == np.array(has)).all()


def test_start_molecules_are_tried_first(fake):
    start = fake.library[10:13]
    table = optimize(fake, "qed", budget=12, sampler="tpe", batch_size=4, start=start, progress=False)
    first = table.sort_values("oracle_call")["smiles"].head(3).tolist()
    assert first == start


def test_multi_objective_pareto_front_is_non_dominated(fake):
    from molvae.scoring import Component, Objective

    easy = Objective([Component("sa", transform={"type": "reverse_sigmoid", "low": 2, "high": 6})])
    objectives = ["qed", easy]
    table = optimize(fake, objectives, budget=40, batch_size=10, progress=False)
    cols = [c for c in table.columns if c.endswith("_score")]
    assert len(cols) == 2 and "score" not in table.columns
    assert table.attrs["summary"]["sampler"] == "nsga2"
    v = table[cols].to_numpy()
    front = table["pareto"].to_numpy()
    assert front.any()
    for i in range(len(v)):
        dominated = ((v >= v[i]).all(1) & (v > v[i]).any(1)).any()
        assert dominated != front[i]
    assert table["pareto"].iloc[: front.sum()].all()   # the front comes first


def test_an_impossible_scaffold_is_reported_not_scored_as_zero(fake, tmp_path, caplog):
    """Issue 13 item 7: no feasible molecule in the whole run must be said, not shown as 0."""
    with caplog.at_level("WARNING"):
        table = optimize(fake, "qed", budget=20, sampler="random", batch_size=16, scaffold="[U]",
                         out_dir=tmp_path / "run", progress=False)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["n_feasible"] == 0 and not table["feasible"].any() and s["oracle_calls"] == 20
    assert any(w.startswith("no feasible molecule among the 20 scored (scaffold rejected 20)")
               for w in s["warnings"]), s["warnings"]
    assert "no feasible molecule" in caplog.text
    ok = optimize(fake, "qed", budget=20, sampler="random", batch_size=16, progress=False)
    assert ok.attrs["summary"]["warnings"] == [] and ok.attrs["summary"]["n_feasible"] == 20


# ---------------------------------------------------------------------------- failing objectives


class Failing(Counting):
    """A custom objective that raises for a whole batch when it holds a fluorine compound (the
    way a docking wrapper fails on a molecule it cannot prepare), and returns NaN for chlorine
    compounds."""

    def __call__(self, smiles):
        self.calls.append(list(smiles))
        bad = [s for s in smiles if "F" in s]
        if bad:
            raise RuntimeError(f"docking failed for {bad[0]}")
        return [math.nan if "Cl" in s else chem.PROPERTIES["qed"](chem.to_mol(s)) for s in smiles]


def test_molecules_the_objective_fails_on_are_recorded_and_never_rescored(fake, tmp_path):
    """Issue 13 item 2: the run goes on, the failures are in molecules.csv with their error,
    and a re-run neither scores them again nor aborts."""
    out = tmp_path / "run"
    first = Failing()
    table = optimize(fake, first, budget=40, sampler="random", batch_size=8, out_dir=out, progress=False)
    rows = pd.read_csv(out / "molecules.csv")
    rows["error"] = rows["error"].fillna("")
    fluorine, chlorine = rows["smiles"].str.contains("F"), rows["smiles"].str.contains("Cl")
    assert fluorine.any() and (chlorine & ~fluorine).any()  # the test meets both kinds
    failed = rows["error"] != ""
    assert (failed == (fluorine | chlorine)).all()
    for smiles, error in rows.loc[fluorine, ["smiles", "error"]].itertuples(index=False):
        assert error == f"custom raised RuntimeError: docking failed for {smiles}"
    assert (rows.loc[chlorine & ~fluorine, "error"] == "custom returned nan, not a number").all()
    assert not rows.loc[failed, "feasible"].any() and (rows.loc[failed, "score"] == 0).all()
    assert list(rows["oracle_call"]) == list(range(1, 41))  # failures count against the budget
    s = table.attrs["summary"]
    assert s["n_failed"] == failed.sum() and s["n_feasible"] == (~failed).sum()
    assert any("could not be scored" in w for w in s["warnings"])

    again = Failing()
    table = optimize(fake, again, budget=60, sampler="random", batch_size=8, out_dir=out, progress=False)
    assert not set(again.scored) & set(rows["smiles"])  # nothing of the first run scored again
    after = pd.read_csv(out / "molecules.csv")
    assert list(after["oracle_call"]) == list(range(1, 61)) and after["smiles"].is_unique
    assert table.attrs["summary"]["n_failed"] == after["error"].notna().sum() > s["n_failed"]


def test_an_objective_that_fails_on_everything_stops_the_run(fake, tmp_path):
    def broken(smiles):
        raise OSError("receptor.pdbqt not found")

    with pytest.raises(MolvaeError, match=r"failed on every one of the first 3\d molecules.*receptor\.pdbqt"):
        optimize(fake, broken, budget=500, sampler="random", batch_size=8, out_dir=tmp_path / "run",
                 progress=False)
    rows = pd.read_csv(tmp_path / "run" / "molecules.csv")  # written, to see what failed
    assert loop.FAILING_STOP <= len(rows) < loop.FAILING_STOP + 8
    assert rows["error"].str.contains("receptor.pdbqt not found").all()


def test_more_workers_than_free_cores_is_warned_about(fake, tmp_path, monkeypatch):
    """Issue 13 item 8: 2 workers on a busy 2-core machine ran 4.8x slower than one."""
    from molvae.optimize.run import oversubscription_warning as warning

    assert warning(1, cpus=1, load=8.0) is None  # one worker: nothing to split
    assert warning(4, cpus=8, load=0.2) is None
    assert warning(2, cpus=2, load=1.6).startswith("2 workers but 1 free CPU core (2 usable, load 1.6)")
    assert "Use 4 workers" in warning(6, cpus=4, load=0.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    table = optimize(fake, "qed", budget=16, sampler="random", batch_size=8, workers=2,
                     out_dir=tmp_path / "run", progress=False)
    s = table.attrs["summary"]
    assert s["workers"] == 2 and s["warnings"][0].startswith("2 workers but 1 free CPU core")


def test_cli_names_the_flags_and_runs_code_only_when_allowed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Issue 13 items 7 and 13, as typed at the command line."""
    from molvae.cli import main

    no_model = str(tmp_path / "no-model")  # the flags are checked before any model loads
    assert main(["optimize", "--model", no_model, "--out", str(tmp_path / "a"), "--lead", "CCO",
                 "--min-similarity", "2"]) == 1
    assert "error: --min-similarity must be in [0, 1]" in capsys.readouterr().err
    assert main(["optimize", "--model", no_model, "--out", str(tmp_path / "a"), "--min-similarity", "0.5"]) == 1
    assert "--min-similarity needs --lead" in capsys.readouterr().err

    site = tmp_path / "site"
    site.mkdir()
    (site / "my_scorer.py").write_text(
        "from pathlib import Path\n"
        "def score(smiles):\n"
        f"    Path({str(tmp_path / 'called')!r}).touch()\n"
        "    return [len(s) / 100 for s in smiles]\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("MOLVAE_ALLOW_CODE", raising=False)
    monkeypatch.setattr(loop, "STALL_BATCHES", 3)  # an undertrained decoder repeats itself
    toml = tmp_path / "objective.toml"
    toml.write_text('[[component]]\nproperty = "my_scorer:score"\n')
    args = ["optimize", "--model", str(tiny_model_dir), "--objective", str(toml), "--budget", "4",
            "--batch-size", "8", "--components", "4", "--sampler", "random", "--out", str(tmp_path / "b")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{toml}: component 1 ('my_scorer:score')" in err and "--allow-code" in err
    assert not (tmp_path / "called").exists()
    assert main(args + ["--allow-code"]) == 0
    assert (tmp_path / "called").exists() and "molecules scored" in capsys.readouterr().out


# ---------------------------------------------------------------------------- metrics, baseline


def test_pmo_auc():
    assert top_k_auc(np.ones(1000), 10, 1000) == pytest.approx(0.95)
    assert top_k_auc(np.ones(500), 10, 1000) == pytest.approx(0.95)          # padded to the budget
    assert top_k_auc(np.ones(500), 10, 1000, finish=False) == pytest.approx(0.45)
    rising = np.linspace(0, 1, 1000)
    assert 0.4 < top_k_auc(rising, 10, 1000) < 0.5
    assert pareto_mask(np.array([[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4]])).tolist() == [True, True, True, False]


def test_prior_baseline_has_the_same_outputs(fake, tmp_path):
    objective = Counting()
    table = sample_prior_baseline(fake, objective, budget=20, batch_size=16, out_dir=tmp_path / "p",
                                  progress=False)
    assert len(objective.scored) == 20 == len(set(objective.scored)) == len(table)
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["sampler"] == "prior" and s["oracle_calls"] == 20 and "auc_top10" in s


# ---------------------------------------------------------------------------- a real tiny model


def test_real_model_end_to_end_and_cli(tiny_model_dir, tiny_model, tmp_path, monkeypatch, capsys):
    """A real (tiny, undertrained) model from conftest: decode, score, write, CLI."""
    from molvae.cli import main

    path, model = tiny_model_dir, tiny_model
    monkeypatch.setattr(loop, "STALL_BATCHES", 3)  # an undertrained decoder repeats itself
    objective = Counting()
    table = optimize(model, objective, budget=6, sampler="cmaes", batch_size=8, n_components=4,
                     out_dir=tmp_path / "run", progress=False)
    s = table.attrs["summary"]
    assert s["stop_reason"] in ("budget", "stalled") and 1 <= len(table) <= 6
    assert len(objective.scored) == len(set(objective.scored)) == len(table)
    assert all(chem.is_valid_molecule(x) and chem.canonical(x) == x for x in table["smiles"])
    assert s["explained_variance"] > 0 and s["n_components"] == 4

    rc = main(["optimize", "--model", str(path), "--objective", "qed", "--budget", "4", "--batch-size", "8",
               "--components", "4", "--sampler", "random", "--out", str(tmp_path / "cli")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "molecules scored" in printed and "smiles" in printed
    assert (tmp_path / "cli" / "curve.png").exists()


def test_bench_optimize_table_and_resume(fake, tmp_path, monkeypatch):
    from molvae import benchmark

    out = tmp_path / "bench.md"
    first = benchmark.benchmark_optimize(fake, tasks=["qed", "celecoxib"], samplers=["cmaes", "random"],
                                         seeds=2, budgets=[24], batch_size=8, out=out, progress=False)
    runs = first.runs
    assert len(runs) == 2 * 3 * 2  # tasks x (prior + 2 samplers) x seeds
    assert set(runs["method"]) == {"prior", "cmaes", "random"} and (runs["oracle_calls"] == 24).all()
    assert (runs["auc_top10"] > 0).all() and (runs["auc_top10"] <= runs["top10_mean"] + 1e-9).all()
    assert "| qed | 24 | cmaes |" in first.markdown and out.exists() and out.with_suffix(".csv").exists()

    # An interrupted benchmark: the last finished run is lost; only it runs again.
    checkpoint = out.with_suffix(".runs.jsonl")
    lines = checkpoint.read_text().splitlines()
    assert len(lines) == 12
    checkpoint.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # and a torn last line
    calls = []
    real = benchmark.optimize
    monkeypatch.setattr(benchmark, "optimize", lambda *a, **k: calls.append(k) or real(*a, **k))
    again = benchmark.benchmark_optimize(fake, tasks=["qed", "celecoxib"], samplers=["cmaes", "random"],
                                         seeds=2, budgets=[24], batch_size=8, out=out, progress=False)
    assert len(calls) == 1 and calls[0]["sampler"] == "random" and calls[0]["seed"] == 1
    timings = ["wall_s", "calls_per_s", "overhead_fraction", "decode_s", "score_s", "sampler_s"]
    pd.testing.assert_frame_equal(again.runs.drop(columns=timings), runs.drop(columns=timings))
    calls.clear()
    benchmark.benchmark_optimize(fake, tasks=["qed", "celecoxib"], samplers=["cmaes", "random"],
                                 seeds=2, budgets=[24], batch_size=8, out=out, progress=False)
    assert calls == []  # everything reused, the re-measured run included
    # Other settings measure afresh.
    benchmark.benchmark_optimize(fake, tasks=["qed"], samplers=["random"], seeds=1, budgets=[24],
                                 batch_size=4, out=out, progress=False)
    assert len(calls) == 1


def test_bench_resume_never_reuses_an_adaptive_run_made_with_other_adaptation_settings(fake, tmp_path,
                                                                                       monkeypatch):
    """`cmaes+retrain` names the adaptation defaults of the molvae that ran it: once they
    change (or for a runs file written before the settings were recorded), the run is
    measured again instead of being passed off as the new default's."""
    from molvae import benchmark

    out = tmp_path / "bench.md"
    kw = dict(tasks=["qed"], samplers=["cmaes", "cmaes+retrain"], seeds=1, budgets=[24], batch_size=8,
              out=out, progress=False)
    benchmark.benchmark_optimize(fake, **kw)
    checkpoint = out.with_suffix(".runs.jsonl")
    recs = [json.loads(x) for x in checkpoint.read_text().splitlines()]
    adaptive = [r for r in recs if r["key"][1] == "cmaes+retrain"]
    assert len(adaptive) == 1 and adaptive[0]["adapt"]["lr"] == AdaptConfig().lr
    assert all("adapt" not in r for r in recs if r["key"][1] != "cmaes+retrain")
    calls = []
    real = benchmark.optimize
    monkeypatch.setattr(benchmark, "optimize", lambda *a, **k: calls.append(k) or real(*a, **k))
    benchmark.benchmark_optimize(fake, **kw)
    assert calls == []                                   # same settings: all reused
    for edit in (lambda r: r["adapt"].update(lr=123.0),  # as if the default lr had been 123
                 lambda r: r.pop("adapt")):              # a runs file from before the field
        lines = []
        for r in map(json.loads, checkpoint.read_text().splitlines()):
            if r["key"][1] == "cmaes+retrain":
                edit(r)
            lines.append(json.dumps(r))
        checkpoint.write_text("\n".join(lines) + "\n")
        calls.clear()
        benchmark.benchmark_optimize(fake, **kw)
        assert [(c["sampler"], c["adapt"]) for c in calls] == [("cmaes", "retrain")]


def test_bench_resume_reuses_adaptive_runs_recorded_before_a_setting_was_added(fake, tmp_path, monkeypatch):
    """A setting added to AdaptConfig later (``policy`` and its companions) is read, in a run
    recorded without it, as the behaviour before it (``ADDED_SETTINGS``): such runs are
    reused for a method that asks for that behaviour, and measured again for one that runs
    other values, as ``cmaes+retrain`` does since its defaults sample 16 from the policy and
    add 32 graph children from the start."""
    from molvae import benchmark
    from molvae.optimize.adapt import ADDED_SETTINGS, AdaptConfig

    assert AdaptConfig().policy != ADDED_SETTINGS["policy"]  # the default changed since
    out = tmp_path / "bench.md"
    before = "cmaes+retrain:policy=0/policy_from_start=true/graph=0/graph_from_start=false/parent_k=0/screen=1"
    kw = dict(tasks=["qed"], samplers=[before, "cmaes+retrain"], seeds=1, budgets=[24], batch_size=8,
              out=out, progress=False)
    benchmark.benchmark_optimize(fake, **kw)
    checkpoint = out.with_suffix(".runs.jsonl")
    calls = []
    real = benchmark.optimize
    monkeypatch.setattr(benchmark, "optimize", lambda *a, **k: calls.append(k) or real(*a, **k))
    recs = [json.loads(x) for x in checkpoint.read_text().splitlines()]
    adaptive = [r for r in recs if r["key"][1] in (before, "cmaes+retrain")]
    assert len(adaptive) == 2 and all(set(ADDED_SETTINGS) <= set(r["adapt"]) for r in adaptive)
    for rec in adaptive:
        for key in ADDED_SETTINGS:
            rec["adapt"].pop(key)                         # as written before the settings existed
    checkpoint.write_text("".join(json.dumps(r) + "\n" for r in recs))
    benchmark.benchmark_optimize(fake, **kw)
    assert len(calls) == 1                                # only the default's run is measured again
    assert calls[0]["adapt"] == "retrain"
    benchmark.benchmark_optimize(fake, **kw)
    assert len(calls) == 1                                # and then reused


@pytest.mark.parametrize("kwargs,match", [
    ({"seeds": 0}, r"seeds must be a whole number from 1 to 100, got 0"),
    ({"seeds": 100_000}, r"seeds must be a whole number from 1 to 100, got 100000"),
    ({"seeds": 2.5}, r"seeds must be a whole number"),
    ({"budgets": []}, r"budgets must be whole numbers from 1 to 1,000,000"),
    ({"budgets": [1000, 10**12]}, r"budgets must be whole numbers from 1 to 1,000,000, got 1000000000000"),
    ({"budgets": [0]}, r"budgets must be whole numbers from 1 to 1,000,000, got 0"),
    ({"budgets": [1e3]}, r"budgets must be whole numbers"),
])
def test_bench_optimize_refuses_absurd_seeds_and_budgets_before_any_run(fake, tmp_path, kwargs, match):
    """A benchmark of 10^12 calls or 100,000 seeds would run for years: refused at once."""
    from molvae import benchmark

    args = dict(tasks=["qed"], samplers=["cmaes"], seeds=1, budgets=[24], out=tmp_path / "b.md", progress=False)
    with pytest.raises(MolvaeError, match=match):
        benchmark.benchmark_optimize(fake, **{**args, **kwargs})
    assert not (tmp_path / "b.runs.jsonl").exists()


def test_bench_optimize_compares_a_sampler_with_its_adapting_self(fake, tmp_path, monkeypatch):
    from molvae import benchmark

    with pytest.raises(MolvaeError, match=r"unknown method 'cmaes\+magic'.*cmaes\+retrain"):
        benchmark.benchmark_optimize(fake, tasks=["qed"], samplers=["cmaes", "cmaes+magic"], seeds=1,
                                     budgets=[24], out=tmp_path / "x.md", progress=False)
    with pytest.raises(MolvaeError, match="unknown method 'cmaez'"):
        benchmark.benchmark_optimize(fake, tasks=["qed"], samplers=["cmaez"], seeds=1, budgets=[24],
                                     progress=False)
    assert not (tmp_path / "x.runs.jsonl").exists()  # refused before any run
    calls = []
    real = benchmark.optimize
    monkeypatch.setattr(benchmark, "optimize", lambda *a, **k: calls.append(k) or real(*a, **k))
    result = benchmark.benchmark_optimize(fake, tasks=["qed"], samplers=["cmaes", "cmaes+retrain"], seeds=1,
                                          budgets=[24], batch_size=8, progress=False)
    assert [(c["sampler"], c["adapt"]) for c in calls] == [("cmaes", "none"), ("cmaes", "retrain")]
    assert set(result.runs["method"]) == {"prior", "cmaes", "cmaes+retrain"}
    assert (result.runs["oracle_calls"] == 24).all()
    # A setting of the adaptation rides in the method's name: a candidate beside the default.
    calls.clear()
    result = benchmark.benchmark_optimize(fake, tasks=["qed"], samplers=["cmaes+retrain:lr=1e-3/molecules=64"],
                                          seeds=1, budgets=[24], batch_size=8, progress=False)
    assert [c["adapt"] for c in calls] == ["retrain:lr=1e-3/molecules=64"]
    assert set(result.runs["method"]) == {"prior", "cmaes+retrain:lr=1e-3/molecules=64"}
    with pytest.raises(MolvaeError, match="unknown adapt setting 'speed'"):
        benchmark.benchmark_optimize(fake, tasks=["qed"], samplers=["cmaes+retrain:speed=2"], seeds=1,
                                     budgets=[24], progress=False)
