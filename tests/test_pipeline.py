"""TOML pipelines: validation names file/section/key, run folders, resume after a kill,
and several pipelines where one is broken."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from molvae.cli import main
from molvae.errors import MolvaeError
from molvae.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent

TINY_TRAIN = """
[train]
epochs = {epochs}
batch_size = 32
lr = 0.003
latent_dim = 8
beta = 0.01          # a small KL weight keeps z informative, so decodes differ
patience = 0
model = {{ embed_dim = 16, enc_hidden = 32, dec_hidden = 64, dec_layers = 1 }}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, train_smiles):
    d = tmp_path_factory.mktemp("pipe-data")
    p = d / "mols.csv"
    pd.DataFrame({"smiles": train_smiles[:160], "id": range(160)}).to_csv(p, index=False)
    return p


@pytest.mark.parametrize("body, message", [
    ("[sample]\nnn = 10\n", r"\[sample\]: unknown key 'nn' \(did you mean 'n'\?\)"),
    ("[sampel]\nn = 10\n", r"unknown key or section 'sampel' \(did you mean 'sample'\?\)"),
    ("[sample]\nn = 'ten'\n", r"\[sample\]\.n: expected int"),
    ("[data]\ninput = 'nowhere.csv'\n", r"\[data\] input: file 'nowhere.csv' not found"),
    ("[optimize]\nlead = 'C1CC'\n", r"\[optimize\] lead: 'C1CC' is not a valid SMILES"),
    ("[optimize]\nobjective = 'qde'\n", r"unknown objective preset 'qde'.*did you mean 'qed'"),
    ("[optimize]\nobjective = { component = [{ property = 'qed', wieght = 2 }] }\n",
     r"unknown key 'wieght'.*did you mean 'weight'"),
    ("[optimize]\nstart = ['CCO', 'xyz']\n", r"\[optimize\] start\[1\]: 'xyz' is not a valid SMILES"),
    ("[optimize]\ndonors = 'nowhere.smi'\n", r"\[optimize\] donors: 'nowhere.smi' is neither a file nor a valid SMILES"),
    ("[optimize]\ndonors = ['CCO', 7]\n", r"\[optimize\] donors\[1\]: '7' is not a valid SMILES"),
    ("[optimize]\ndonors = 3\n", r"\[optimize\] donors: expected a SMILES, a list of SMILES or a file"),
    ("[optimize]\ndonors = ['CCO']\nadapt = 'none'\n", r"\[optimize\] donors: set, but this search does not adapt"),
    ("[optimize]\ndonors = ['CCO']\nadapt = 'retrain:graph=0'\n", r"\[optimize\] donors: set, but this search makes no graph children"),
    ("seed = 0\n", r"no stage to run"),
    ("[train]\nepochs = 1\n", r"\[train\]: needs a \[data\] section"),
    ("[data]\n[train]\nmodel = { dec_hiden = 8 }\n", r"\[train\] model: unknown key 'dec_hiden' \(did you mean 'dec_hidden'\?\)"),
    ("[sample]\nn = 5\n[report]\nlatent_propery = 'qed'\n", r"\[report\]: unknown key 'latent_propery'"),
    ("[optimize]\nadapt = 'retrian'\n", r"\[optimize\] adapt: 'retrian' is not one of auto, none, retrain \(did you mean 'retrain'\?\)"),
    ("[optimize]\nadapt = 'retrain'\nadapt_every = 0\n", r"\[optimize\] adapt_every: must be >= 1"),
    ("[optimize]\nadapt_every = 100\nsampler = 'tpe'\n", r"\[optimize\] adapt_every: set, but this search does not adapt"),
    ("[optimize]\nadapt_after_plateau = 500\nlead = 'CCO'\n", r"\[optimize\] adapt_after_plateau: set, but this search does not adapt"),
        ("[optimize]\nadapt = 'none'\nadapt_every = 100\n", r"\[optimize\] adapt_every: set, but this search does not adapt"),
        ("[optimize]\nadapt = 'auto:lr=1'\n", r"\[optimize\] adapt: adapt 'auto' takes no settings"),
    ("[optimize]\nadapt = 'retrain'\nadapt_after_plateau = -1\n", r"\[optimize\] adapt_after_plateau: must be >= 0"),
    ("[optimize]\nadapt = 'retrain'\nsampler = 'tpe'\n", r"\[optimize\] adapt: .*suits cmaes and random, not 'tpe'"),
    ("[optimize]\nadapt = 'retrain'\nobjectives = { a = 'qed', b = 'logp' }\n", r"\[optimize\] adapt: .*one objective"),
    ("[optimize]\nadapt = 7\n", r"\[optimize\]\.adapt: expected str"),
    ("[optimize]\nadapt = 'retrain:lr=fast'\n", r"\[optimize\] adapt: adapt setting lr must be a number, got 'fast'"),
    ("[optimize]\nadapt = 'retrain:speed=2'\n", r"\[optimize\] adapt: unknown adapt setting 'speed'"),
])
def test_validation_errors_name_file_section_and_key(tmp_path, body, message):
    path = write(tmp_path / "bad.toml", body)
    with pytest.raises(MolvaeError, match=message) as err:
        load_pipeline(path)
    assert "bad.toml" in str(err.value)


def test_reference_and_shipped_pipelines_validate():
    for name in ("reference", "quickstart", "lead_optimization", "multi_objective", "train_moses"):
        pipe = load_pipeline(ROOT / "pipelines" / f"{name}.toml")
        assert pipe.stages()
    ref = load_pipeline(ROOT / "pipelines" / "reference.toml")
    assert ref.stages() == ["data", "train", "evaluate", "sample", "optimize", "report"]


def _run(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "molvae", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(cond, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _kill_when(cmd_args, cwd, env, cond):
    proc = _run(cmd_args, cwd, env)
    assert _wait_for(cond, proc), proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(cmd_args, cwd, env):
    proc = _run(cmd_args, cwd, env)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out


def test_kill_during_training_and_optimization_then_resume(tmp_path, small_file):
    """Kill `molvae run` mid-training and mid-optimization; re-running finishes each pipeline
    with every epoch trained once and every molecule scored once."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MOLVAE_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # 1) training: kill once two epoch checkpoints exist, then resume to the end
    train_pipe = write(tmp_path / "train.toml", f"""
run_dir = "{tmp_path / 'train-run'}"
[data]
input = "{small_file}"
valid_fraction = 0.1
{TINY_TRAIN.format(epochs=6)}
""")
    metrics = tmp_path / "train-run" / "train" / "metrics.csv"
    _kill_when(["-q", "run", str(train_pipe)], tmp_path, env,
               lambda: metrics.exists() and len(pd.read_csv(metrics)) >= 2)
    assert not (tmp_path / "train-run" / "train" / "DONE").exists()
    _finish(["-q", "run", str(train_pipe)], tmp_path, env)
    assert pd.read_csv(metrics)["epoch"].tolist() == list(range(1, 7))  # each epoch once

    # 2) optimization with the shipped model: kill once some molecules are scored
    budget = 200
    opt_pipe = write(tmp_path / "opt.toml", f"""
run_dir = "{tmp_path / 'opt-run'}"
[optimize]
objective = "qed"
budget = {budget}
batch_size = 16
compare_prior = false
""")
    molecules = tmp_path / "opt-run" / "optimize" / "molecules.csv"

    def some_scored():
        try:
            return molecules.exists() and 30 <= len(pd.read_csv(molecules)) < budget
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            return False

    _kill_when(["-q", "run", str(opt_pipe)], tmp_path, env, some_scored)
    scored_before = set(pd.read_csv(molecules)["smiles"])
    assert not (tmp_path / "opt-run" / "optimize" / "DONE").exists()
    _finish(["-q", "run", str(opt_pipe)], tmp_path, env)
    table = pd.read_csv(molecules)
    assert table["smiles"].is_unique                       # never re-scored
    assert scored_before <= set(table["smiles"])           # nothing lost
    assert len(table) == budget
    assert sorted(table["oracle_call"]) == list(range(1, budget + 1))
    assert (tmp_path / "opt-run" / "optimize" / "DONE").exists()


def test_two_pipelines_one_broken(tmp_path, small_file, capsys):
    good = write(tmp_path / "good.toml", f"""
run_dir = "{tmp_path / 'good-run'}"
[data]
input = "{small_file}"
""")
    broken = write(tmp_path / "broken.toml", "[data]\ninptu = 'x.csv'\n")
    rc = main(["run", str(broken), str(good)])
    out = capsys.readouterr().out
    assert rc == 1
    assert (tmp_path / "good-run" / "data" / "DONE").exists()
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(("good", "broken"))}
    assert "ok" in lines["good"] and "invalid" in lines["broken"] and "inptu" in lines["broken"]
    # re-running skips the finished stage; provenance and resolved config are recorded
    assert main(["run", str(good)]) == 0
    prov = json.loads((tmp_path / "good-run" / "provenance.json").read_text())
    assert {"molvae", "torch", "rdkit", "cuda", "device"} <= set(prov)
    assert json.loads((tmp_path / "good-run" / "config.json").read_text())["data"]["valid_fraction"] == 0.05
    assert "already complete" in (tmp_path / "good-run" / "run.log").read_text()


STALE_PIPE = """
run_dir = "{run}"
model = "{model}"
[sample]
n = 20
[optimize]
objective = "{objective}"
budget = 12
batch_size = 6
[report]
latent_molecules = 40
top_n = 4
"""


def test_edited_stage_reruns_and_unchanged_stages_are_kept(tmp_path, tiny_model_dir):
    """Edit [optimize] objective and re-run: optimize re-runs with the new objective, the log
    names the key (old -> new), [sample] is untouched, and config.json matches the results."""
    from molvae.pipeline import run_pipeline

    run = tmp_path / "run"
    path = tmp_path / "p.toml"
    write(path, STALE_PIPE.format(run=run, model=tiny_model_dir, objective="qed"))
    run_pipeline(load_pipeline(path), progress=False)
    assert "qed_raw" in pd.read_csv(run / "optimize" / "molecules.csv").columns
    samples_before = (run / "sample" / "samples.csv").stat().st_mtime_ns

    write(path, STALE_PIPE.format(run=run, model=tiny_model_dir, objective="logp"))
    run_pipeline(load_pipeline(path), progress=False)
    columns = pd.read_csv(run / "optimize" / "molecules.csv").columns
    assert "logp_raw" in columns and "qed_raw" not in columns
    assert "logp" in json.loads((run / "optimize" / "summary.json").read_text())["objective"].lower()
    assert (run / "sample" / "samples.csv").stat().st_mtime_ns == samples_before  # not re-run
    second = (run / "run.log").read_text().split("pipeline p ")[-1]  # the log of the second run
    assert "[sample] already complete" in second
    assert "[optimize] settings changed: objective: 'qed' -> 'logp'" in second
    assert "[report] inputs changed: stage optimize re-runs" in second
    assert json.loads((run / "config.json").read_text())["optimize"]["objective"] == "logp"
    # The rebuilt report shows the new objective's run, the settings used and the prior baseline.
    html = (run / "report.html").read_text()
    settings = html.split('id="settings"')[1].split("</section>")[0]
    assert "<th>objective</th><td>logp</td>" in settings and "—" not in settings
    assert "cmaes" in settings                                   # the sampler the stage used
    assert 'id="prior"' in html and (run / "optimize" / "prior" / "summary.json").exists()
    assert (run / "report" / "training_properties.csv").exists()


def test_optimize_stage_adapts_the_model_and_old_run_folders_stay_complete(tmp_path, tiny_model_dir):
    """[optimize] adapt = "retrain" runs rounds of model adaptation (their weights in the stage
    folder). A stage run with adapt = "none" records no adaptation key, as run folders made
    before the key existed, so those stay complete under adapt = "none"; left out, adapt is
    "auto", which adapts this CMA-ES search, so the unadapted stage re-runs."""
    from molvae.pipeline import run_pipeline

    run = tmp_path / "run"
    path = tmp_path / "p.toml"
    body = STALE_PIPE.format(run=run, model=tiny_model_dir, objective="qed")
    write(path, body.replace('budget = 12', 'budget = 12\nadapt = "none"'))
    run_pipeline(load_pipeline(path), progress=False)
    stage = json.loads((run / "optimize" / "stage.json").read_text())
    assert not [k for k in json.dumps(stage).split('"') if k.startswith("adapt")]  # as before the key
    assert "adapt" not in json.loads((run / "optimize" / "run.json").read_text())

    write(path, body)
    run_pipeline(load_pipeline(path), progress=False)
    second = (run / "run.log").read_text().split("pipeline p ")[-1]
    assert "[optimize] settings changed: adapt" in second
    assert json.loads((run / "optimize" / "run.json").read_text())["adapt"]["method"] == "retrain"
    assert json.loads((run / "config.json").read_text())["optimize"]["adapt"] == "retrain"

    write(path, body.replace('budget = 12', 'budget = 12\nadapt = "retrain:lr=1e-3"\nadapt_every = 6\nadapt_after_plateau = 0'))
    run_pipeline(load_pipeline(path), progress=False)
    third = (run / "run.log").read_text().split("pipeline p ")[-1]
    assert "[optimize] settings changed: adapt" in third
    summary = json.loads((run / "optimize" / "summary.json").read_text())
    assert summary["adapt"] == "retrain" and summary["adapt_rounds"] >= 1
    state = json.loads((run / "optimize" / "adapt" / "state.json").read_text())
    assert (run / "optimize" / "adapt" / state["weights"]).exists()
    config = json.loads((run / "config.json").read_text())["optimize"]
    assert config["adapt"] == "retrain:lr=1e-3" and config["adapt_every"] == 6 and config["adapt_after_plateau"] == 0
    assert json.loads((run / "optimize" / "run.json").read_text())["adapt"]["lr"] == 1e-3  # the setting reached the run


def test_optimize_stage_takes_donors_from_a_file_and_reruns_when_the_file_changes(tmp_path, tiny_model_dir,
                                                                                  train_smiles):
    """[optimize] donors = "library.smi" (beside the pipeline) reaches the search: run.json
    records the set, bad rows land in donor_rejects.csv, and an edited library makes the stage
    stale, as an edited objective file does."""
    from molvae.pipeline import run_pipeline

    run = tmp_path / "run"
    path = tmp_path / "p.toml"
    lib = tmp_path / "library.smi"
    lib.write_text("\n".join(train_smiles[2000:2040] + ["not_a_molecule", "[Fe+2]"]) + "\n")
    body = STALE_PIPE.format(run=run, model=tiny_model_dir, objective="qed").replace(
        "budget = 12", 'budget = 12\ndonors = "library.smi"\ncompare_prior = false')
    body = body.split("[report]")[0]
    write(path, body)
    run_pipeline(load_pipeline(path), progress=False)
    rec = json.loads((run / "optimize" / "run.json").read_text())
    assert rec["donors"]["molecules"] == 40 and rec["adapt"]["donor"] == 0.25
    assert len(pd.read_csv(run / "optimize" / "donor_rejects.csv")) == 2
    assert json.loads((run / "config.json").read_text())["optimize"]["adapt_settings"]["donor"] == 0.25

    run_pipeline(load_pipeline(path), progress=False)
    assert "[optimize] already complete" in (run / "run.log").read_text().split("pipeline p ")[-1]
    lib.write_text("\n".join(train_smiles[2000:2030]) + "\n")
    run_pipeline(load_pipeline(path), progress=False)
    assert "[optimize] inputs changed" in (run / "run.log").read_text().split("pipeline p ")[-1]
    assert json.loads((run / "optimize" / "run.json").read_text())["donors"]["molecules"] == 30


def test_optimize_stage_reruns_when_the_adapt_defaults_it_ran_with_change(tmp_path, tiny_model_dir, monkeypatch):
    """The stage records the adaptation settings it resolved, not only the words of the file:
    under a molvae whose retrain defaults differ, adapt = "retrain" is stale, not complete."""
    import dataclasses

    from molvae.optimize import adapt as adapt_mod
    from molvae.pipeline import run_pipeline

    run = tmp_path / "run"
    path = tmp_path / "p.toml"
    body = STALE_PIPE.format(run=run, model=tiny_model_dir, objective="qed")
    write(path, body.replace('budget = 12', 'budget = 12\nadapt = "retrain"\nadapt_every = 6\nadapt_after_plateau = 0'))
    run_pipeline(load_pipeline(path), progress=False)
    assert json.loads((run / "optimize" / "run.json").read_text())["adapt"]["lr"] == adapt_mod.AdaptConfig.lr

    @dataclasses.dataclass
    class NewDefaults(adapt_mod.AdaptConfig):
        lr: float = 1e-3

    monkeypatch.setattr(adapt_mod, "AdaptConfig", NewDefaults)
    run_pipeline(load_pipeline(path), progress=False)
    assert "[optimize] settings changed: adapt" in (run / "run.log").read_text().split("pipeline p ")[-1]
    assert json.loads((run / "optimize" / "run.json").read_text())["adapt"]["lr"] == 1e-3


def test_retrained_model_reruns_the_stages_that_read_it(tmp_path, small_file):
    """A [train] edit re-runs training and the sampling that used the old model, but not the
    data stage; a section removed from the file takes its results out of the run folder."""
    from molvae.pipeline import run_pipeline

    run = tmp_path / "run"
    path = tmp_path / "p.toml"
    body = f'run_dir = "{run}"\n[data]\ninput = "{small_file}"\nvalid_fraction = 0.1\n' + TINY_TRAIN
    write(path, body.format(epochs=1) + "[sample]\nn = 10\n")
    run_pipeline(load_pipeline(path), progress=False)
    stamp = {s: (run / s / "DONE").stat().st_mtime_ns for s in ("data", "train", "sample")}

    write(path, body.format(epochs=2) + "[sample]\nn = 10\n")
    run_pipeline(load_pipeline(path), progress=False)
    assert (run / "data" / "DONE").stat().st_mtime_ns == stamp["data"]
    assert (run / "train" / "DONE").stat().st_mtime_ns != stamp["train"]
    assert pd.read_csv(run / "train" / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert (run / "sample" / "DONE").stat().st_mtime_ns != stamp["sample"]   # new model, new samples
    second = (run / "run.log").read_text().split("pipeline p ")[-1]
    assert "[train] settings changed: epochs: 1 -> 2" in second
    assert "[sample] inputs changed: stage train re-runs" in second
    assert (run / "train.previous" / "DONE").exists()                        # kept aside, not lost

    write(path, body.format(epochs=2))                                          # [sample] removed
    run_pipeline(load_pipeline(path), progress=False)
    assert not (run / "sample").exists() and (run / "sample.previous" / "samples.csv").exists()
    assert "sample" not in json.loads((run / "config.json").read_text())


def test_run_folder_from_before_stage_records(tmp_path, small_file):
    """A stage finished by an older molvae (DONE, no stage.json) is kept when config.json shows
    it ran with today's settings, and re-run when it shows other settings."""
    from molvae.pipeline import run_pipeline

    run = tmp_path / "run"
    path = write(tmp_path / "p.toml", f'run_dir = "{run}"\n[data]\ninput = "{small_file}"\n')
    run_pipeline(load_pipeline(path), progress=False)
    done = (run / "data" / "DONE").stat().st_mtime_ns

    def as_older_molvae(valid_fraction):
        (run / "data" / "stage.json").unlink()
        old = load_pipeline(path).to_dict(resolve=False)     # older config.json: unresolved
        old["data"]["valid_fraction"] = valid_fraction
        (run / "config.json").write_text(json.dumps(old))

    as_older_molvae(0.05)                                      # the default: same settings
    run_pipeline(load_pipeline(path), progress=False)
    assert (run / "data" / "DONE").stat().st_mtime_ns == done and (run / "data" / "stage.json").exists()

    as_older_molvae(0.2)                                       # ran with other settings
    run_pipeline(load_pipeline(path), progress=False)
    assert (run / "data" / "DONE").stat().st_mtime_ns != done
    assert "[data] settings changed: valid_fraction: 0.2 -> 0.05" in (run / "run.log").read_text()
