"""Tests for molvae.scoring: transforms, aggregation, filters, TOML validation, presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from molvae import chem
from molvae.errors import MolvaeError
from molvae.scoring import (
    CELECOXIB, PARALLEL_MIN, PRESETS, RAW_INFEASIBLE_SCORE, Component, MultiObjective, Objective, Transform,
    as_multi_objective, as_objective, load_objective, objective_from_dict, preset,
)

HERE = Path(__file__).parent
OBJECTIVES = HERE.parent / "pipelines" / "objectives"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1c(=O)c2c(ncn2C)n(C)c1=O"
NITROBENZENE = "O=[N+]([O-])c1ccccc1"


@pytest.fixture
def custom_module(monkeypatch):
    """Put tests/ on sys.path so 'custom_scorer_example:...' imports as a user module would."""
    monkeypatch.syspath_prepend(str(HERE))
    import custom_scorer_example

    custom_scorer_example.CALLS.clear()
    return custom_scorer_example


def write(tmp_path: Path, text: str, name: str = "objective.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- transforms


def test_sigmoid_is_half_at_midpoint_and_rises():
    t = Transform("sigmoid", low=2.0, high=6.0)
    x = np.linspace(-10, 20, 301)
    y = t(x)
    assert t([4.0])[0] == pytest.approx(0.5)
    assert np.all(np.diff(y) >= 0) and y[0] < 1e-6 and y[-1] > 1 - 1e-6
    assert t([6.0])[0] > 0.99 and t([2.0])[0] < 0.01  # k=0.5: low/high mark the ends
    assert t([1e6, -1e6]).tolist() == [1.0, 0.0]  # no overflow far outside


def test_reverse_sigmoid_mirrors_sigmoid():
    x = np.linspace(0, 10, 41)
    up, down = Transform("sigmoid", low=3, high=7, k=0.3), Transform("reverse_sigmoid", low=3, high=7, k=0.3)
    np.testing.assert_allclose(up(x) + down(x), 1.0)
    assert np.all(np.diff(down(x)) <= 0)


def test_double_sigmoid_is_a_window():
    t = Transform("double_sigmoid", low=250, high=450)  # REINVENT defaults 100/150/150
    inside, edges, outside = t([300, 350, 400]), t([250, 450]), t([100, 150, 600, 900])
    assert np.all(inside > 0.99)
    np.testing.assert_allclose(edges, 0.5, atol=1e-6)
    assert np.all(outside < 1e-6)


def test_step_clip_and_missing_values():
    window = Transform("step", low=1, high=3)
    assert window([0, 1, 2, 3, 4]).tolist() == [0, 1, 1, 1, 0]
    assert Transform("step", high=0)([0, 1, 5]).tolist() == [1, 0, 0]
    clip = Transform("clip", low=0.2, high=0.6)
    np.testing.assert_allclose(clip([0.0, 0.2, 0.4, 0.6, 1.0]), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(Transform("reverse_clip", low=0.2, high=0.6)([0.4]), [0.5])
    for t in (window, clip, Transform("sigmoid", low=0, high=1), Transform()):
        assert t([math.nan])[0] == 0.0  # not computable scores 0, never NaN


# ---------------------------------------------------------------------------- aggregation


def constant(value: float):
    def fn(smiles):
        return [value] * len(smiles)
    return fn


@pytest.mark.parametrize("aggregate, expected", [
    ("geometric", 0.25 ** 0.25 * 0.81 ** 0.75),
    ("arithmetic", (0.25 + 3 * 0.81) / 4),
])
def test_weighted_aggregation_by_hand(aggregate, expected):
    obj = Objective([Component(constant(0.25), name="a", weight=1.0),
                     Component(constant(0.81), name="b", weight=3.0)], aggregate=aggregate)
    table = obj.score(["CCO", "c1ccccc1"])
    np.testing.assert_allclose(table["score"], expected)
    assert table["a"].tolist() == [0.25, 0.25] and table["b_raw"].tolist() == [0.81, 0.81]


def test_geometric_mean_is_zero_when_one_component_is_zero():
    obj = Objective([Component(constant(0.0), name="a"), Component(constant(0.9), name="b")])
    assert obj(["CCO"]) == [0.0]
    arith = Objective([Component(constant(0.0), name="a"), Component(constant(0.9), name="b")],
                      aggregate="arithmetic")
    assert arith(["CCO"]) == [pytest.approx(0.45)]


def test_zero_weight_is_reported_but_not_scored():
    obj = Objective([Component("qed"), Component("logp", weight=0)])
    table = obj.score([ASPIRIN])
    assert table["score"][0] == pytest.approx(table["qed"][0])
    assert table["logp_raw"][0] == pytest.approx(chem.properties(ASPIRIN)["logp"])


def test_unscaled_property_cannot_enter_a_mean():
    with pytest.raises(MolvaeError, match=r"component 2 \('logp'\).*identity.*transform"):
        Objective([Component("qed"), Component("logp")])
    Objective([Component("qed"), Component("similarity", reference=ASPIRIN)])  # both in [0, 1]


def test_column_names_and_default_suffixes():
    obj = Objective([Component("similarity", reference=ASPIRIN),
                     Component("similarity", reference=CAFFEINE),
                     Component("qed", name="drug_likeness")])
    assert obj.names == ["similarity", "similarity_2", "drug_likeness"]
    assert list(obj.score(["CCO"]).columns) == [
        "smiles", "score", "feasible", "error", "similarity_raw", "similarity", "similarity_2_raw",
        "similarity_2", "drug_likeness_raw", "drug_likeness"]
    with pytest.raises(MolvaeError, match="already used by component 1"):
        Objective([Component("qed", name="x"), Component("sa", name="x")])


# ---------------------------------------------------------------------------- filters, validity


def test_hard_filter_makes_molecule_infeasible():
    obj = Objective([Component("qed"), Component("forbidden", smarts="[N+](=O)[O-]", filter=True)])
    table = obj.score([NITROBENZENE, ASPIRIN])
    assert table["feasible"].tolist() == [False, True]
    assert table["score"][0] == 0.0 and table["score"][1] == pytest.approx(table["qed"][1])
    assert table["qed_raw"][0] > 0  # raw values stay visible: the chemist sees why


def test_invalid_smiles_score_zero():
    obj = preset("qed")
    table = obj.score(["C1CC", "not a smiles", "", None, ASPIRIN])
    assert table["score"].tolist()[:4] == [0.0] * 4
    assert table["feasible"].tolist() == [False] * 4 + [True]
    assert table["qed_raw"][:4].isna().all()


def test_substructure_required_and_forbidden():
    acid = "C(=O)[OH]"
    obj = Objective([Component("substructure", smarts=acid, name="acid", weight=0),
                     Component("forbidden", smarts=acid, name="no_acid", weight=0),
                     Component("qed")])
    table = obj.score([ASPIRIN, "c1ccccc1", "OC(=O)CCC(=O)O"])
    assert table["acid_raw"].tolist() == [1, 0, 2]  # raw = number of matches
    assert table["acid"].tolist() == [1, 0, 1]
    assert table["no_acid"].tolist() == [0, 1, 0]


def test_similarity_to_itself_is_one():
    for fp in ("morgan_bits", "morgan_counts"):
        obj = Objective([Component("similarity", reference=ASPIRIN, fingerprint=fp)])
        same, other = obj([ASPIRIN, CAFFEINE])
        assert same == pytest.approx(1.0) and 0 <= other < 0.3
    bits = Objective([Component("similarity", reference=ASPIRIN)])([CAFFEINE])[0]
    assert bits == pytest.approx(chem.tanimoto(ASPIRIN, [CAFFEINE])[0])


def test_alerts_and_lipinski():
    obj = Objective([Component("alerts", weight=0), Component("lipinski", weight=0),
                     Component("alerts", catalogs=["pains"], filter=True)])
    table = obj.score([ASPIRIN, CAFFEINE, "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O"])
    assert table["alerts_raw"][0] == len(chem.structural_alerts(ASPIRIN)) == 1  # phenol ester
    assert table["alerts"].tolist()[:2] == [0, 1]
    assert table["lipinski_raw"].tolist() == [0, 0, 2] and table["lipinski"].tolist() == [1, 1, 0]
    assert table["feasible"].all() and table["score"].tolist() == [1.0, 1.0, 1.0]  # filters only


# ---------------------------------------------------------------------------- custom functions


def test_custom_function_by_name(custom_module):
    obj = Objective([Component("custom_scorer_example:carbon_fraction")], allow_code=True)
    table = obj.score(["CCO", "CC", "bad"])
    np.testing.assert_allclose(table["carbon_fraction"], [2 / 3, 1.0, 0.0])
    assert table["feasible"].tolist() == [True, True, False]
    assert custom_module.CALLS == [["CCO", "CC"]]  # one call per batch, valid molecules only


def test_custom_function_skipped_for_infeasible_and_gets_params(tmp_path, custom_module):
    path = write(tmp_path, """
[[component]]
property = "forbidden"
smarts = "[N+](=O)[O-]"
filter = true
[[component]]
property = "custom_scorer_example:carbon_fraction"
[[component]]
property = "custom_scorer_example:length_over"
params = { scale = 100.0 }
transform = { type = "clip", low = 0, high = 1 }
""")
    table = load_objective(path, allow_code=True).score([NITROBENZENE, "CCO"])
    assert custom_module.CALLS == [["CCO"]]  # the nitro compound never reached it
    assert math.isnan(table["carbon_fraction_raw"][0])
    assert table["length_over_raw"][1] == pytest.approx(0.03)
    assert table["score"][1] == pytest.approx(math.sqrt(2 / 3 * 0.03))


def test_custom_function_from_file_and_python_callable(tmp_path):
    path = write(tmp_path, f"""
[[component]]
property = "{(HERE / 'custom_scorer_example.py').as_posix()}:carbon_fraction"
""")
    assert load_objective(path, allow_code=True)(["CO"]) == [pytest.approx(0.5)]
    obj = as_objective(lambda smiles: [len(s) for s in smiles])
    assert obj.names == ["custom"] and obj(["CCO", "C"]) == [3.0, 1.0]


def test_custom_function_must_return_one_value_per_smiles(custom_module):
    obj = Objective([Component("custom_scorer_example:one_value")], allow_code=True)
    with pytest.raises(MolvaeError, match="returned 1 values for 2 SMILES"):
        obj(["CCO", "CC"])


def test_custom_values_outside_unit_interval_rejected_in_a_mean():
    obj = Objective([Component("qed"), Component(constant(-7.5), name="dock")])
    with pytest.raises(MolvaeError, match=r"'dock'.*-7\.5, outside \[0, 1\]"):
        obj([ASPIRIN])


def test_a_molecule_the_function_fails_on_fails_alone(custom_module):
    """Issue 13 item 2: one molecule that makes a custom function raise must not sink the
    batch; a NaN, inf, None or text instead of a number is a failure too, not a feasible 0."""
    obj = Objective([Component("custom_scorer_example:fails_on_nitrogen")], allow_code=True)
    table = obj.score(["CCO", "CCN", "CCCC", "bad"])
    assert table["feasible"].tolist() == [True, False, True, False]
    assert table["error"][1] == "custom_scorer_example:fails_on_nitrogen raised ValueError: cannot prepare CCN"
    assert table["error"][0] == table["error"][2] == table["error"][3] == ""  # 'bad': invalid, not failed
    assert table["score"].tolist() == [0.03, 0.0, 0.04, 0.0]
    # the batch first, then one molecule at a time to find the culprit
    assert custom_module.CALLS == [["CCO", "CCN", "CCCC"], ["CCO"], ["CCN"], ["CCCC"]]

    odd = Objective([Component("custom_scorer_example:odd_values")], allow_code=True).score(["C"] * 5)
    assert odd["feasible"].tolist() == [False, False, False, False, True]
    assert [e.rpartition("returned ")[2] for e in odd["error"][:4]] == [
        "nan, not a number", "inf, not a number", "None, not a number", "'3.0', not a number"]
    assert odd["score"].tolist() == [0.0, 0.0, 0.0, 0.0, 0.5]
    multi = MultiObjective({"a": Objective([Component("qed")]),
                            "b": Objective([Component("custom_scorer_example:odd_values")], allow_code=True)})
    table = multi.score(["CCO", "CO"])
    assert table["feasible"].tolist() == [False, False] and "returned nan" in table["error"][0]


PLANTED = """
from pathlib import Path
Path({marker!r}).with_suffix(".imported").touch()   # runs on import


def score(smiles):
    Path({marker!r}).with_suffix(".called").touch()
    return [1.0 for _ in smiles]
"""


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A module that leaves a marker file when it is imported and another when it is called."""
    package = tmp_path / "site"
    package.mkdir()
    marker = tmp_path / "marker"
    (package / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delenv("MOLVAE_ALLOW_CODE", raising=False)
    import sys

    # A module imported by an earlier test would still point at that test's marker.
    monkeypatch.delitem(sys.modules, "planted", raising=False)
    return marker


def test_a_file_cannot_run_the_code_it_names(tmp_path, planted):
    """Issue 13 item 13: an objective file passed between colleagues must not run code."""
    path = write(tmp_path, '[[component]]\nproperty = "planted:score"\n')
    with pytest.raises(MolvaeError) as err:
        load_objective(path)
    message = str(err.value)
    assert message.startswith(f"{path}: component 1 ('planted:score')"), message
    assert "--allow-code" in message and "allow_code=True" in message and "MOLVAE_ALLOW_CODE=planted" in message
    with pytest.raises(MolvaeError, match="would run code"):  # the same table reached from a pipeline
        as_objective({"component": [{"property": "planted:score"}]}, source="run.toml [optimize]")
    assert not planted.with_suffix(".imported").exists() and not planted.with_suffix(".called").exists()

    # The standard library is never a scoring function, whoever allows it.
    shell = write(tmp_path, '[[component]]\nproperty = "subprocess:getoutput"\n', "shell.toml")
    for allow in (False, True):
        with pytest.raises(MolvaeError, match=r"component 1 \('subprocess:getoutput'\): .*standard library"):
            load_objective(shell, allow_code=allow)
    import subprocess

    as_file = write(tmp_path, f'[[component]]\nproperty = "{subprocess.__file__}:getoutput"\n', "file.toml")
    with pytest.raises(MolvaeError, match="standard library"):
        load_objective(as_file, allow_code=True)


def test_code_runs_when_allowed_from_outside_the_file(tmp_path, planted, monkeypatch):
    path = write(tmp_path, '[[component]]\nproperty = "planted:score"\n')
    monkeypatch.setenv("MOLVAE_ALLOW_CODE", "other.module, planted_not")  # not this one
    with pytest.raises(MolvaeError, match="would run code"):
        load_objective(path)
    assert not planted.with_suffix(".imported").exists()
    monkeypatch.setenv("MOLVAE_ALLOW_CODE", "other.module,planted")
    assert load_objective(path)(["CCO"]) == [1.0]
    assert planted.with_suffix(".called").exists()
    monkeypatch.delenv("MOLVAE_ALLOW_CODE")
    assert load_objective(path, allow_code=True)(["CCO"]) == [1.0]
    # a .py file is allowed by its path
    example = HERE / "custom_scorer_example.py"
    by_file = write(tmp_path, f'[[component]]\nproperty = "{example.as_posix()}:length_over"\n', "f.toml")
    with pytest.raises(MolvaeError, match="would run code"):
        load_objective(by_file)
    monkeypatch.setenv("MOLVAE_ALLOW_CODE", str(example))
    assert load_objective(by_file)(["CCCC"]) == [0.4]
    # allowed, a misspelt function is still named with a suggestion
    monkeypatch.syspath_prepend(str(HERE))
    misspelt = write(tmp_path, '[[component]]\nproperty = "custom_scorer_example:lenght_over"\n', "m.toml")
    with pytest.raises(MolvaeError, match=r"has no function 'lenght_over' \(did you mean 'length_over'\?\)"):
        load_objective(misspelt, allow_code=True)
    # a Python callable is the caller's own code: it always runs
    monkeypatch.delenv("MOLVAE_ALLOW_CODE")
    assert Objective([Component(lambda smiles: [0.25] * len(smiles), name="mine")])(["CCO"]) == [0.25]


# ---------------------------------------------------------------------------- TOML validation


@pytest.mark.parametrize("text, expected", [
    ('[[component]]\nproperty = "qed"\n[[component]]\nproperty = "sa"\nwieght = 2\n'
     'transform = { type = "reverse_sigmoid", low = 2, high = 6 }',
     "component 2 ('sa'): unknown key 'wieght' (did you mean 'weight'?)"),
    ('[[component]]\nproperty = "qde"', "component 1 ('qde'): unknown property 'qde' (did you mean 'qed'?)"),
    ('[[component]]\nproperty = "forbidden"\nsmarts = "[N+(=O"', "component 1 ('forbidden'): 'smarts' '[N+(=O'"),
    ('[[component]]\nproperty = "similarity"\nreference = "C1CCx"',
     "component 1 ('similarity'): 'reference' 'C1CCx' is not a valid SMILES"),
    ('[[component]]\nproperty = "similarity"', "similarity needs 'reference'"),
    ('[[component]]\nproperty = "mw"\ntransform = { type = "sigmoud", low = 1, high = 2 }',
     "unknown type 'sigmoud' (did you mean 'sigmoid'?)"),
    ('[[component]]\nproperty = "mw"\ntransform = { type = "sigmoid", low = 100 }', "needs 'high'"),
    ('[[component]]\nproperty = "mw"\ntransform = { type = "sigmoid", low = 1, high = 2, kk = 1 }',
     "transform: unknown key 'kk' (did you mean 'k'?)"),
    ('[[component]]\nproperty = "mw"\ntransform = { type = "clip", low = 5, high = 2 }', "low (5.0) must be below high"),
    ('[[component]]\nproperty = "qed"\nweight = "heavy"', "component 1 ('qed'): 'weight' must be a finite number"),
    ('[[component]]\nproperty = "qed"\nfilter = "yes"', "'filter' must be true or false"),
    ('[[component]]\nproperty = "qed"\nsmarts = "C"', "key 'smarts' does not apply to property 'qed'"),
    ('[[component]]\nproperty = "mw"\nfilter = true\ntransform = { type = "sigmoid", low = 1, high = 2 }',
     "a filter needs a transform that gives 0"),
    ('[[component]]\nproperty = "no_such_module_xyz:fn"', "cannot import 'no_such_module_xyz'"),
    ('[[component]]\nproperty = "math:sqrt"', "names the Python standard library ('math')"),
    ('aggergate = "geometric"\n[[component]]\nproperty = "qed"', "unknown key 'aggergate' (did you mean 'aggregate'?)"),
    ('aggregate = "harmonic"\n[[component]]\nproperty = "qed"', "'aggregate' 'harmonic' is unknown"),
    ('aggregate = "geometric"', "no components"),
    ('[[component]]\nweight = 1', "'property' is missing"),
    ('[[component\nproperty = "qed"', "invalid TOML"),
])
def test_toml_errors_name_file_component_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(MolvaeError) as err:
        load_objective(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message, message


def test_missing_file_and_unknown_preset():
    with pytest.raises(MolvaeError, match="not found"):
        as_objective("no/such/objective.toml")
    with pytest.raises(MolvaeError, match=r"unknown objective preset 'drug_lik' \(did you mean 'drug_like'\?\).*qed"):
        as_objective("drug_lik")


def test_to_dict_round_trip():
    obj = load_objective(OBJECTIVES / "lead_optimization.toml")
    again = objective_from_dict(obj.to_dict(), source="round trip")
    molecules = [CELECOXIB, ASPIRIN, "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1C"]
    pd.testing.assert_frame_equal(obj.score(molecules), again.score(molecules))


# ---------------------------------------------------------------------------- presets, examples


def test_presets_score_known_drugs_sensibly():
    drug_like = preset("drug_like")
    aspirin, caffeine, alkane = drug_like([ASPIRIN, CAFFEINE, "C" * 30])
    assert aspirin > 0.5 and caffeine > 0.3 and alkane < 0.1
    assert preset("qed")([ASPIRIN])[0] == pytest.approx(chem.properties(ASPIRIN)["qed"])
    assert preset("celecoxib_rediscovery")([CELECOXIB])[0] == pytest.approx(1.0)
    assert preset(f"similarity:{CAFFEINE}")([CAFFEINE])[0] == pytest.approx(1.0)
    assert set(PRESETS) >= {"qed", "penalized_logp", "logp", "drug_like", "celecoxib_rediscovery"}


def test_penalized_logp_preset_is_raw_with_heavy_atom_cap():
    obj = preset("penalized_logp")
    table = obj.score(["C" * 30, "C" * 39, ASPIRIN, "nonsense"])
    assert table["score"][0] > 8  # long alkanes are what pLogP rewards
    assert table["score"][0] == pytest.approx(chem.properties("C" * 30)["penalized_logp"])
    assert table["score"][2] < 0  # raw, not squeezed into [0, 1]
    assert table["feasible"].tolist() == [True, False, True, False]
    assert table["score"][1] == table["score"][3] == RAW_INFEASIBLE_SCORE < table["score"][2]


@pytest.mark.parametrize("path", sorted(OBJECTIVES.glob("*.toml")), ids=lambda p: p.name)
def test_example_objective_files_load_and_score(path):
    obj = as_objective(path)
    table = obj.score([ASPIRIN, CAFFEINE, CELECOXIB, "invalid("])
    assert table["feasible"].tolist()[:3] == [True, True, True] and not table["feasible"][3]
    assert table["score"].notna().all()


@pytest.mark.parametrize("name", ["drug_like", "drug_profile"])
def test_objective_file_matches_preset(name):
    molecules = [ASPIRIN, CAFFEINE, CELECOXIB, NITROBENZENE]
    assert load_objective(OBJECTIVES / f"{name}.toml")(molecules) == preset(name)(molecules)


def test_drug_profile_prefers_the_profile():
    # Celecoxib (MW 381, logP 3.5, TPSA 78) sits inside the profile; aspirin (MW 180) and
    # caffeine (logP -1) each miss a window.
    celecoxib, aspirin, caffeine = preset("drug_profile")([CELECOXIB, ASPIRIN, CAFFEINE])
    assert celecoxib > 0.5 > max(aspirin, caffeine)


# ---------------------------------------------------------------------------- multi-objective


def test_multi_objective_splits_components_and_shares_filters():
    multi = as_multi_objective(OBJECTIVES / "pareto_qed_sa_similarity.toml")
    assert multi.names == ["qed", "easy_synthesis", "similarity"]
    assert multi.directions == ["maximize"] * 3
    big = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O"  # two Lipinski violations
    table = multi.score([ASPIRIN, big])
    assert list(table.columns).count("lipinski_raw") == 1  # the shared filter appears once
    assert table["feasible"].tolist() == [True, False]
    vectors = multi([ASPIRIN, big])
    assert vectors[1] == [0.0, 0.0, 0.0] and len(vectors[0]) == 3
    assert vectors[0][0] == pytest.approx(preset("qed")([ASPIRIN])[0])


def test_multi_objective_from_named_objectives():
    multi = MultiObjective({"drug": preset("drug_like"), "plogp": preset("penalized_logp")})
    table = multi.score([ASPIRIN, "C" * 39])
    assert table["feasible"].tolist() == [True, False]
    assert table.loc[1, "plogp_score"] == RAW_INFEASIBLE_SCORE and table.loc[1, "drug_score"] == 0.0
    assert table.loc[0, "drug_score"] == pytest.approx(preset("drug_like")([ASPIRIN])[0])


# ---------------------------------------------------------------------------- parallel batches


def test_parallel_batch_matches_serial(monkeypatch):
    calls = []
    real_map = chem.parallel_map

    def spy(fn, items, **kwargs):
        calls.append((len(items), kwargs["workers"], kwargs["min_parallel"]))
        return real_map(fn, items, **kwargs)

    monkeypatch.setattr(chem, "parallel_map", spy)
    groups = ["", "O", "N", "C(=O)O", "c1ccccc1", "Cl", "C#N", "[N+](=O)[O-]", "OC", "S"]
    molecules = [f"{'C' * i}{g}{'C' * j}" for i in range(1, 21) for g in groups for j in range(10)]
    molecules += ["C1CC", "xyz"]
    assert len(molecules) >= 2000
    obj = Objective([
        Component("similarity", reference=ASPIRIN, fingerprint="morgan_counts"),
        Component("logp", transform={"type": "sigmoid", "low": 0, "high": 5}),
        Component("forbidden", smarts="[N+](=O)[O-]", filter=True),
        Component("heavy_atoms", transform={"type": "step", "high": 25}, filter=True),
    ])
    serial = obj.score(molecules, workers=1, progress=False)
    parallel = obj.score(molecules, workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)
    n = len(molecules)
    assert calls == [(n, 1, PARALLEL_MIN), (n, 2, PARALLEL_MIN)] and n >= PARALLEL_MIN  # pool path
    assert 0 < serial["feasible"].sum() < len(molecules)


def test_python_api_is_checked_like_toml():
    with pytest.raises(MolvaeError, match=r"component 1 \('mw'\): transform 'sigmoid' needs 'high'"):
        Objective([Component("mw", transform=Transform("sigmoid", low=100))])
    with pytest.raises(MolvaeError, match="transform 'identity' takes no 'low'"):
        Objective([Component("mw", transform=Transform("identity", low=1))])
    obj = as_objective({"infeasible_score": -1, "component": [{"property": "qed"}]}, source="run.toml: [optimize]")
    assert obj(["bad"]) == [-1.0] and obj.source == "run.toml: [optimize]"
    multi = as_multi_objective({"a": "qed", "b": {"component": [{"property": "similarity", "reference": "CCO"}]}})
    assert multi.names == ["a", "b"] and multi(["CCO"])[0][1] == pytest.approx(1.0)


def test_molvae_run_runs_a_pipelines_code_only_with_allow_code(tmp_path, planted, capsys):
    # A pipeline file, like an objective file, may not run the code it names; the person running
    # it allows it with `molvae run --allow-code` (the same flag as `molvae optimize`).
    from molvae.cli import main

    pipe = tmp_path / "p.toml"
    pipe.write_text(f'run_dir = "{tmp_path / "run"}"\n[optimize]\n'  # the shipped model
                    'objective = { component = [{ property = "planted:score" }] }\n'
                    'budget = 8\nbatch_size = 4\ncompare_prior = false\n')
    assert main(["run", "--check", str(pipe)]) == 1
    assert main(["run", str(pipe)]) == 1
    assert "would run code" in capsys.readouterr().out
    assert not planted.with_suffix(".imported").exists()
    assert main(["run", "--check", "--allow-code", str(pipe)]) == 0
    assert not planted.with_suffix(".called").exists()  # checking imports, scores nothing
    assert main(["run", "--allow-code", str(pipe)]) == 0
    assert planted.with_suffix(".called").exists()
    scored = pd.read_csv(tmp_path / "run" / "optimize" / "molecules.csv")
    assert len(scored) >= 1 and (scored["score"] == 1.0).all()
