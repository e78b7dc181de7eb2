"""The HTML report: every section has content, nothing is fetched from outside, every image
decodes in a real browser (headless Chromium), and absent data leaves its section out."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from molvae import chem
from molvae.report import pareto_front, report_from_run_dir, running_curves, write_report

CHROMIUM = Path("/usr/bin/chromium")


# ---------------------------------------------------------------------------- inputs


def _non_dominated(values: np.ndarray) -> np.ndarray:
    """Brute force, independent of the module: i is on the front if no j dominates it."""
    n = len(values)
    out = np.ones(n, bool)
    for i in range(n):
        for j in range(n):
            if j != i and np.all(values[j] >= values[i]) and np.any(values[j] > values[i]):
                out[i] = False
                break
    return out


@pytest.fixture(scope="module")
def inputs(train_smiles):
    smiles = train_smiles[:300]
    props = chem.properties_many(smiles, progress=False)
    rng = np.random.default_rng(0)

    # An optimization run that improves: molecules arrive roughly in order of rising QED.
    order = np.argsort(props["qed"].to_numpy() + rng.normal(0, 0.08, len(smiles)))
    opt = pd.DataFrame({"smiles": [smiles[i] for i in order]})
    opt["qed_raw"] = props["qed"].to_numpy()[order]
    opt["qed"] = opt["qed_raw"]
    opt["sa_raw"] = props["sa"].to_numpy()[order]
    opt["sa"] = (10 - opt["sa_raw"]) / 9
    opt["feasible"] = opt["sa_raw"] < 4.5
    opt["score"] = np.where(opt["feasible"], np.sqrt(opt["qed"] * opt["sa"]), 0.0)
    opt["oracle_call"] = np.arange(1, len(opt) + 1)
    opt["trial"] = np.arange(len(opt)) // 4  # batched ask/tell: 4 molecules per trial
    opt = opt[["smiles", "score", "feasible", "qed_raw", "qed", "sa_raw", "sa", "oracle_call", "trial"]]

    multi = opt.drop(columns=["score"]).rename(columns={"qed": "qed_score", "sa": "sa_score"})
    multi["pareto"] = _non_dominated(multi[["qed_score", "sa_score"]].to_numpy())

    generated = train_smiles[300:400]
    samples = pd.DataFrame({"smiles": generated, "selfies": ""})
    samples = pd.concat([samples, chem.properties_many(generated, progress=False)], axis=1)
    samples.loc[[3, 17], ["smiles", "qed", "logp", "sa", "mw"]] = ["", np.nan, np.nan, np.nan, np.nan]
    samples["valid"] = samples["smiles"] != ""
    samples["unique"] = samples["valid"]
    samples["novel"] = samples["valid"] & (np.arange(len(samples)) % 7 != 0)
    samples = samples[["smiles", "selfies", "valid", "unique", "novel", "qed", "logp", "sa", "mw"]]

    # A latent map: PCA of Morgan bits stands in for PCA of encoder means (same shape of data).
    group = smiles[:150] + samples.loc[samples["valid"], "smiles"].tolist()[:60] + opt["smiles"].tolist()[-20:]
    x = chem.fingerprint_matrix(group).astype(float)
    x -= x.mean(0)
    coords = x @ np.linalg.svd(x, full_matrices=False)[2][:2].T
    qed = dict(zip(smiles, props["qed"])) | dict(zip(samples["smiles"], samples["qed"]))
    latent = {"coords": coords, "values": np.array([qed[s] for s in group]),
              "property": "qed", "labels": ["training"] * 150 + ["generated"] * 60 + ["optimized"] * 20}

    moses = {"valid": 0.912, "unique@1000": 1.0, "unique@10k": 0.995, "FCD/Test": 1.84, "SNN/Test": 0.51,
             "Frag/Test": 0.98, "Scaf/Test": 0.61, "IntDiv": 0.85, "novelty": 0.93}
    epochs = np.arange(1, 9)
    train_metrics = pd.DataFrame({
        "epoch": epochs, "loss": 40 / epochs + 10, "recon": 38 / epochs + 8, "kl": 1 + np.log(epochs),
        "beta": np.minimum(0.05, epochs * 0.01), "val_loss": 42 / epochs + 11,
        "val_recon_rate": 1 - 1 / (epochs + 1), "active_units": np.minimum(epochs * 6, 40)})
    settings = {"name": "qed <& sa> test", "model": {"latent": 128, "hidden": 256},
                "optimize": {"budget": 300, "sampler": "TPE", "objectives": ["qed", "sa"]}}
    provenance = {"molvae": "0.1.0", "torch": "2.13.0", "rdkit": "2026.09.1", "cuda": None,
                  "device": "cpu", "date": "2026-01-01T00:00:00"}
    return dict(smiles=smiles, opt=opt, multi=multi, samples=samples, latent=latent, moses=moses,
                train_metrics=train_metrics, settings=settings, provenance=provenance)


@pytest.fixture(scope="module")
def reports(inputs, tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    full = write_report(
        d / "full.html", title="QED × SA <run>", settings=inputs["settings"], provenance=inputs["provenance"],
        samples=inputs["samples"], training_smiles=inputs["smiles"], optimization=inputs["opt"],
        optimization_summary={"budget": 300, "best": {"smiles": inputs["opt"]["smiles"].iloc[-1], "score": 0.9}},
        latent=inputs["latent"], moses_metrics=inputs["moses"], training_metrics=inputs["train_metrics"],
        top_n=12)
    multi = write_report(d / "multi.html", title="Pareto run", settings={}, provenance=inputs["provenance"],
                         optimization=inputs["multi"], pareto_objectives=["qed", "sa"], top_n=8)
    return {"full": full, "multi": multi}


# ---------------------------------------------------------------------------- parsing


class _Sections(HTMLParser):
    """Collects each report section's images, tables and text, and every src/href."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.links: list[str] = []
        self._current: str | None = None
        self._depth = 0
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "section" and "report-section" in (a.get("class") or ""):
            self._current, self._depth = a["id"], 0
            self.sections[self._current] = {"img": 0, "table": 0, "text": ""}
        if self._current is None:
            return
        if tag == "section":
            self._depth += 1
        if tag in ("img", "table"):
            self.sections[self._current][tag] += 1
        self._in_h2 = tag == "h2" or self._in_h2

    def handle_endtag(self, tag):
        if self._current is not None and tag == "section":
            self._depth -= 1
            if self._depth == 0:
                self._current = None
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._current is not None and not self._in_h2:
            self.sections[self._current]["text"] += data.strip()


def _parse(path: Path) -> _Sections:
    p = _Sections()
    p.feed(path.read_text(encoding="utf-8"))
    return p


# ---------------------------------------------------------------------------- tests


def test_full_report_has_every_section_with_content(reports):
    parsed = _parse(reports["full"])
    assert list(parsed.sections) == ["settings", "best", "progress", "generated", "properties",
                                     "latent", "moses", "training"]
    for sid, content in parsed.sections.items():
        assert content["img"] or content["table"], f"section {sid} has no picture or table"
    assert parsed.sections["best"]["img"] >= 12          # the molecule grid
    assert parsed.sections["generated"]["img"] >= 12
    html = reports["full"].read_text()
    assert "MOSES CharRNN" in html and "0.073" in html  # the reference row beside the run's figures
    # Names are escaped: the run title and a settings value cannot inject markup.
    assert "QED × SA &lt;run&gt;" in html and "qed &lt;&amp; sa&gt; test" in html
    assert "<run>" not in html


def test_report_is_self_contained(reports):
    for path in reports.values():
        parsed = _parse(path)
        external = [u for u in parsed.links if not u.startswith(("data:image/png;base64,",
                                                                   "data:image/svg+xml;base64,", "#"))]
        assert external == [], f"{path.name} links outside itself: {external[:3]}"
        text = path.read_text()
        assert not re.search(r"(?:https?:)?//[\w.-]+\.\w+/", text.split("<script>")[0].split("</style>")[0])
        assert "<link" not in text and "@import" not in text and "url(" not in text


def test_multi_objective_report_shows_the_front(reports, inputs):
    parsed = _parse(reports["multi"])
    assert list(parsed.sections) == ["settings", "best", "progress", "pareto"]
    front = int(inputs["multi"]["pareto"].sum())
    assert f"{front} of 300 molecules are non-dominated" in reports["multi"].read_text()
    # The grid shows the front molecules (at most top_n=8 of them).
    assert parsed.sections["best"]["img"] == min(front, 8)


def test_absent_data_leaves_sections_out(tmp_path):
    path = write_report(tmp_path / "r.html", title="empty", settings={}, provenance={})
    parsed = _parse(path)
    assert parsed.sections == {}
    assert "<nav></nav>" in path.read_text()
    path = write_report(tmp_path / "r.html", title="metrics only", settings={"seed": 1}, provenance={},
                        moses_metrics={"valid": 0.5}, samples=pd.DataFrame(columns=["smiles", "valid"]))
    assert list(_parse(path).sections) == ["settings", "moses"]
    # Samples drawn without a training set have an empty 'novel' column: no novelty is claimed.
    samples = pd.DataFrame({"smiles": ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"], "valid": True,
                            "unique": True, "novel": np.nan})
    path = write_report(tmp_path / "r.html", title="samples", settings={}, provenance={}, samples=samples)
    parsed = _parse(path)
    assert list(parsed.sections) == ["generated", "properties"]
    assert parsed.sections["generated"]["img"] == 3
    assert "novel" not in path.read_text().split('id="generated"')[1]


def test_pareto_front_and_running_curves():
    rng = np.random.default_rng(1)
    values = rng.random((80, 3))
    values[5] = [np.nan, 1, 1]  # a molecule that could not be scored is never on the front
    front = pareto_front(values)
    assert not front[5]
    rest = np.delete(np.arange(80), 5)
    assert np.array_equal(front[rest], _non_dominated(values[rest]))
    best, top = running_curves([0.1, 0.5, 0.3, 0.9, np.nan], top_k=2)
    assert best.tolist() == [0.1, 0.5, 0.5, 0.9, 0.9]
    assert np.allclose(top, [0.05, 0.3, 0.4, 0.7, 0.7])


def test_report_from_run_dir(tmp_path, inputs):
    run = tmp_path / "run"
    for sub in ("train", "evaluate", "sample", "optimize", "data"):
        (run / sub).mkdir(parents=True)
    inputs["train_metrics"].to_csv(run / "train" / "metrics.csv", index=False)
    (run / "evaluate" / "metrics.json").write_text(json.dumps(inputs["moses"]))
    inputs["samples"].head(30).to_csv(run / "sample" / "samples.csv", index=False)
    inputs["multi"].to_csv(run / "optimize" / "molecules.csv", index=False)
    (run / "optimize" / "summary.json").write_text(json.dumps({"objectives": ["qed", "sa"], "budget": 300}))
    pd.DataFrame({"smiles": inputs["smiles"][:50], "split": ["train"] * 45 + ["valid"] * 5}).to_csv(
        run / "data" / "prepared.csv", index=False)
    (run / "resolved.toml").write_text('name = "from-disk"\n[model]\nlatent = 64\n')
    (run / "provenance.json").write_text(json.dumps(inputs["provenance"]))
    lat = inputs["latent"]
    np.savez(run / "latent.npz", coords=lat["coords"], values=lat["values"], property=np.array("qed"),
             labels=np.array(lat["labels"]))
    path = report_from_run_dir(run)
    assert path == run / "report.html"
    parsed = _parse(path)
    assert list(parsed.sections) == ["settings", "best", "progress", "pareto", "generated", "properties",
                                     "latent", "moses", "training"]
    assert "molvae run: from-disk" in path.read_text()


def test_broken_run_file_names_the_file(tmp_path):
    from molvae.errors import MolvaeError

    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "metrics.json").write_text("{not json")
    with pytest.raises(MolvaeError, match="metrics.json"):
        report_from_run_dir(tmp_path)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium) to render the report")
def test_report_renders_in_headless_chromium(reports, tmp_path):
    for name, path in reports.items():
        profile = tmp_path / f"profile-{name}"
        res = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", path.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
        shutil.rmtree(profile, ignore_errors=True)
        m = re.search(r'<pre id="img-check"[^>]*>(.*?)</pre>', res.stdout, re.S)
        assert m and m.group(1).strip(), f"{name}: the on-load check did not run; stderr: {res.stderr[-800:]}"
        check = json.loads(m.group(1).replace("&quot;", '"'))
        expected = len(_parse(path).sections)
        assert check["sections"] == expected
        assert check["images"] >= expected - 1  # every section but settings has a picture here
        assert check["broken_images"] == 0, f"{name}: {check}"
        assert check["empty_sections"] == [], f"{name}: {check}"


# ---------------------------------------------------------------------------- what a chemist checks

PAINS_MOLECULE = "Oc1ccc(CCNC(=O)c2ccccc2)cc1O"      # a catechol: PAINS catechol_A and Brenk catechol
BRENK_MOLECULE = "O=C(C=Cc1ccccc1)c1ccccc1"           # a chalcone: Brenk Michael acceptor, no PAINS
LEAD = "CC(=O)Nc1ccc(OCC(=O)NC2CCCCC2)cc1"                # clean, and three analogs (Tanimoto 0.69-1.0)
ANALOGS = ["CC(=O)Nc1ccc(OCC(=O)NC2CCCCCC2)cc1", "CC(=O)Nc1ccc(OCC(=O)NC2CCCC2)cc1",
           "CC(=O)Nc1ccc(OCC(=O)NC2CCCCC2)cc1C"]


@pytest.fixture(scope="module")
def chemist_run(inputs, tmp_path_factory):
    """A pipeline-shaped run folder whose best molecules include near-duplicates of the top
    molecule and two molecules with structural alerts, plus the prior-sampling baseline."""
    run = tmp_path_factory.mktemp("chemist-run")
    opt = inputs["opt"].copy()
    extra = pd.DataFrame({"smiles": [LEAD, *ANALOGS, PAINS_MOLECULE, BRENK_MOLECULE],
                          "score": [0.99, 0.985, 0.98, 0.975, 0.97, 0.965], "feasible": True})
    opt = pd.concat([opt, extra], ignore_index=True)
    opt["oracle_call"] = np.arange(1, len(opt) + 1)
    (run / "optimize" / "prior").mkdir(parents=True)
    opt.to_csv(run / "optimize" / "molecules.csv", index=False)
    summary = {"sampler": "cmaes", "batch_size": 16, "objective": "qed x sa", "budget": 306,
               "oracle_calls": 306, "top1": 0.99, "top10_mean": 0.95, "feasible_fraction": 0.8,
               "stop_reason": "budget", "wall_s": 61.5, "wall_s_total": 61.5, "valid_fraction": 0.97,
               "time": {"score_s": 12.3, "decode_s": 20.1, "storage_background_s": 0.4},
               "overhead_fraction": 0.8}
    (run / "optimize" / "summary.json").write_text(json.dumps(summary))
    prior = inputs["opt"].sample(frac=1.0, random_state=1).reset_index(drop=True)
    prior["score"] = prior["score"] * 0.8
    prior["oracle_call"] = np.arange(1, len(prior) + 1)
    prior.to_csv(run / "optimize" / "prior" / "molecules.csv", index=False)
    (run / "optimize" / "prior" / "summary.json").write_text(json.dumps(
        {**summary, "sampler": "prior", "top1": float(prior["score"].max()), "wall_s": 20.0}))
    from molvae.pipeline import load_pipeline
    pipe_file = run / "p.toml"
    pipe_file.write_text('[optimize]\nobjective = "qed"\n[report]\n')
    (run / "config.json").write_text(json.dumps(load_pipeline(pipe_file, run_dir=run).to_dict()))
    (run / "provenance.json").write_text(json.dumps(inputs["provenance"]))
    return report_from_run_dir(run, top_n=12, training_smiles=inputs["smiles"][:100], progress=False)


def _cards(path: Path) -> list[str]:
    best = path.read_text().split('id="best"')[1].split("</section>")[0]
    return best.split('<figure class="mol">')[1:]


def _card_smiles(card: str) -> str:
    import html as _html
    return _html.unescape(re.search(r'<div class="smiles">(.*?)</div>', card).group(1))


def test_report_shows_the_prior_comparison(chemist_run):
    parsed = _parse(chemist_run)
    assert "prior" in parsed.sections
    text = parsed.sections["prior"]["text"]
    assert parsed.sections["prior"]["table"] >= 1
    assert "Best score" in text and "Top-10 mean" in text and "prior" in text.lower()
    html = chemist_run.read_text()
    assert "storage_background_s" not in html.split("<details")[0]  # raw fields only behind a fold


def test_report_summary_is_labelled_figures(chemist_run):
    progress = chemist_run.read_text().split('id="progress"')[1].split("</section>")[0]
    visible = progress.split("<details")[0]
    for label in ("Best score", "Top-10 mean", "Molecules scored", "Wall time", "Time spent scoring"):
        assert label in visible, label
    assert "1 min 2 s" in visible and "12.3 s (20%" in visible   # units a person reads
    assert "overhead_fraction" not in visible and "storage_background_s" not in visible


def test_settings_show_the_value_used_not_a_dash(chemist_run):
    settings = _parse(chemist_run).sections["settings"]["text"]
    assert "—" not in settings
    assert "cmaes" in settings and "16" in settings    # the sampler and batch size the stage used


def test_best_molecules_are_diverse_and_alerts_are_flagged(chemist_run):
    from rdkit.Chem import DataStructs

    cards = _cards(chemist_run)
    smiles = [_card_smiles(c) for c in cards]
    assert smiles[0] == LEAD and not set(ANALOGS) & set(smiles)   # the best of its cluster, once
    assert "3 close analogs" in cards[0]
    fps = [chem.morgan_fp(s) for s in smiles]
    for i in range(len(fps)):
        sims = DataStructs.BulkTanimotoSimilarity(fps[i], fps[i + 1:])
        assert max(sims, default=0) < 0.6, smiles[i]
    by_smiles = dict(zip(smiles, cards))
    assert "PAINS" in by_smiles[PAINS_MOLECULE] and "catechol" in by_smiles[PAINS_MOLECULE]
    assert "Brenk" in by_smiles[BRENK_MOLECULE] and "Michael_acceptor" in by_smiles[BRENK_MOLECULE]
    assert "PAINS" not in by_smiles[BRENK_MOLECULE]
    assert "no PAINS or Brenk alert" in by_smiles[LEAD]


def test_plot_legends_stay_off_the_data(inputs, tmp_path, monkeypatch):
    """Every legend of every plot lies outside every panel's data area."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from molvae import report

    figures = []
    real_png = report._png
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or real_png(fig))
    write_report(tmp_path / "r.html", title="legends", settings={}, provenance={}, samples=inputs["samples"],
                 training_smiles=inputs["smiles"], optimization=inputs["opt"], prior=inputs["opt"],
                 latent=inputs["latent"],
                 training_metrics=inputs["train_metrics"], top_n=4, progress=False)
    write_report(tmp_path / "m.html", title="legends", settings={}, provenance={}, optimization=inputs["multi"],
                 pareto_objectives=["qed", "sa"], top_n=4, progress=False)
    legends = 0
    for fig in figures:
        FigureCanvasAgg(fig)
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        for leg in list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend()]:
            legends += 1
            box = leg.get_window_extent(renderer)
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, "legend cut off"
            for ax in axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), f"legend over the data of {ax.get_xlabel()}"
    assert legends >= 4
