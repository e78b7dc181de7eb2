"""Generation: prior samples with flags and properties, reconstruction, interpolation,
analogs around a lead, and the CLI commands that write them."""

import pandas as pd
import pytest

from molvae import chem
from molvae.cli import main
from molvae.errors import MolvaeError
from molvae.generate import interpolate, neighbors, prototype, reconstruct, reconstruction_rate, sample


def test_sample_columns_and_flags(tiny_model, train_smiles):
    table = sample(tiny_model, 200, seed=1, training=train_smiles)
    assert list(table.columns) == ["smiles", "selfies", "valid", "unique", "novel", "qed", "logp", "sa", "mw"]
    assert len(table) == 200
    valid = table[table["valid"]]
    assert len(valid) > 0
    # valid means RDKit parses it and it has at least two heavy atoms
    assert all(chem.is_valid_molecule(s) for s in valid["smiles"])
    assert not table.loc[~table["valid"], "unique"].any()
    # unique marks the first occurrence of each valid molecule
    assert valid[valid["unique"]]["smiles"].is_unique
    assert set(valid[valid["unique"]]["smiles"]) == set(valid["smiles"])
    # novel = not in the training set
    train = set(train_smiles)
    assert all((s not in train) == bool(n) for s, n in zip(valid["smiles"], valid["novel"]))
    assert valid["qed"].between(0, 1).all()
    # the same seed gives the same molecules
    assert sample(tiny_model, 200, seed=1, properties=False)["smiles"].tolist() == table["smiles"].tolist()


def test_greedy_prototype_is_deterministic(tiny_model):
    assert prototype(tiny_model) == prototype(tiny_model)


def test_reconstruct_reports_unencodable_rows(tiny_model, train_smiles):
    table = reconstruct(tiny_model, train_smiles[:20] + ["C[Se]C", "garbage"])
    assert len(table) == 22
    assert table["encoded"].tolist()[-2:] == [False, False]
    assert "[Se]" in table["reason"].iloc[-2]
    rate = reconstruction_rate(table)
    assert 0.0 <= rate <= 1.0
    assert rate == table["exact"][:20].mean()


def test_interpolation_path(tiny_model, train_smiles):
    a, b = train_smiles[0], train_smiles[1]
    for method in ("linear", "slerp"):
        path = interpolate(tiny_model, a, b, steps=6, method=method)
        assert path["step"].tolist() == list(range(7)) and path["t"].iloc[-1] == 1.0
        # consecutive duplicates are marked
        assert path["duplicate"].tolist() == [False] + [path["smiles"][i] == path["smiles"][i - 1] for i in range(1, 7)]
    with pytest.raises(MolvaeError, match="method"):
        interpolate(tiny_model, a, b, method="cubic")


def test_neighbors_sorted_by_similarity(tiny_model, train_smiles):
    lead = train_smiles[3]
    table = neighbors(tiny_model, lead, n=10, radius=0.5)
    assert 0 < len(table) <= 10
    assert table["smiles"].is_unique and chem.canonical(lead) not in set(table["smiles"])
    assert table["similarity"].is_monotonic_decreasing
    expected = chem.tanimoto(chem.canonical(lead), table["smiles"].tolist())
    assert table["similarity"].tolist() == pytest.approx(list(expected))
    with pytest.raises(MolvaeError, match="lead"):
        neighbors(tiny_model, "not-a-molecule")


def test_cli_sample_and_reconstruct(tiny_model_dir, tmp_path, capsys, train_smiles):
    out = tmp_path / "s.csv"
    assert main(["sample", "--model", str(tiny_model_dir), "-n", "50", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 50 and "valid" in capsys.readouterr().out
    src = tmp_path / "in.smi"
    src.write_text("\n".join(train_smiles[:10]) + "\n")
    assert main(["reconstruct", "--model", str(tiny_model_dir), str(src), "--out", str(tmp_path / "r.csv")]) == 0
    assert "exact reconstruction rate" in capsys.readouterr().out
    assert main(["interpolate", "--model", str(tiny_model_dir), train_smiles[0], train_smiles[1], "--steps", "3"]) == 0
    assert main(["sample", "--model", str(tmp_path / "missing"), "-n", "5"]) == 1


# ---------------------------------------------------------------- nonsense refused, outputs where asked (issue 13)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(n=-3), "-n"), (dict(n=0), "-n"), (dict(n=10_000_000), "-n"),
    (dict(radius=-1.0), "--radius"), (dict(radius=0.0), "--radius"), (dict(radius=float("nan")), "--radius"),
])
def test_neighbors_refuses_nonsense(tiny_model, train_smiles, kwargs, flag):
    with pytest.raises(MolvaeError, match=flag):
        neighbors(tiny_model, train_smiles[3], **kwargs)


@pytest.mark.parametrize("n", [0, -1, 10_000_000])
def test_sample_refuses_nonsense_n(tiny_model, n):
    with pytest.raises(MolvaeError, match="-n"):
        sample(tiny_model, n)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0, 0.0, 1e-300, 1e300])
def test_sample_refuses_nonsense_temperature(tiny_model, temperature):
    # nan used to reach torch.multinomial and end in "probability tensor contains inf or nan"
    with pytest.raises(MolvaeError, match="temperature"):
        sample(tiny_model, 5, greedy=False, temperature=temperature)


def test_interpolate_refuses_absurd_steps(tiny_model, train_smiles):
    with pytest.raises(MolvaeError, match="--steps"):
        interpolate(tiny_model, train_smiles[0], train_smiles[1], steps=10_000_000)


def test_sample_decodes_in_bounded_chunks(tiny_model, monkeypatch):
    # Memory must not grow with n: the network and the chemistry see one chunk at a time,
    # and a sample no larger than one chunk is the same as before chunking.
    import molvae.generate as gen

    whole = sample(tiny_model, 150, seed=3, properties=False)
    sizes = []
    real = type(tiny_model).decode_ids

    def spy(self, z, *a, **k):
        sizes.append(len(z))
        return real(self, z, *a, **k)

    monkeypatch.setattr(type(tiny_model), "decode_ids", spy)
    monkeypatch.setattr(gen, "SAMPLE_CHUNK", 64)
    chunked = sample(tiny_model, 150, seed=3)
    assert sizes == [64, 64, 22]
    assert len(chunked) == 150 and list(chunked.columns) == list(sample(tiny_model, 5).columns)
    props = chem.properties_many(chunked["smiles"].tolist(), workers=1, progress=False)
    pd.testing.assert_series_equal(chunked["qed"], props["qed"])
    assert chunked["unique"].sum() == chunked.loc[chunked["valid"], "smiles"].nunique()  # across chunks
    assert chunked["smiles"].tolist()[:64] == sample(tiny_model, 64, seed=3, properties=False)["smiles"].tolist()
    monkeypatch.setattr(gen, "SAMPLE_CHUNK", 1000)
    assert sample(tiny_model, 150, seed=3, properties=False)["smiles"].tolist() == whole["smiles"].tolist()


def test_interpolate_says_whether_the_endpoints_are_the_molecules_asked_for(tiny_model, train_smiles, caplog):
    a, b = train_smiles[0], train_smiles[1]
    with caplog.at_level("WARNING", logger="molvae.generate"):
        path = interpolate(tiny_model, a, b, steps=4)
    exact = path["is_endpoint_exact"]
    assert exact.iloc[0] == (path["smiles"].iloc[0] == chem.standardize(a)[0])
    assert exact.iloc[-1] == (path["smiles"].iloc[-1] == chem.standardize(b)[0])
    assert exact.iloc[1:-1].isna().all()
    for end, t, ok in (("A", "t=0", exact.iloc[0]), ("B", "t=1", exact.iloc[-1])):
        warned = [r.getMessage() for r in caplog.records if t in r.getMessage()]
        assert bool(warned) == (not ok)
        if warned:
            assert f"not molecule {end}" in warned[0] and "Tanimoto" in warned[0]


def test_reconstruct_writes_no_file_unless_asked(tiny_model_dir, tmp_path, capsys, monkeypatch, train_smiles):
    src = tmp_path / "in.smi"
    src.write_text("\n".join(train_smiles[:5]) + "\n")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["reconstruct", "--model", str(tiny_model_dir), str(src)]) == 0
    assert list(work.iterdir()) == []
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "input,encoded,reason,reconstructed,exact" and len(lines) == 6
    assert "exact reconstruction rate" in captured.err


def test_unwritable_out_fails_before_sampling(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import molvae.generate as gen

    def no_work(*a, **k):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(gen, "sample", no_work)
    assert main(["sample", "--model", str(tiny_model_dir), "-n", "5", "--out", "/no/such/dir/x.csv"]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "/no/such/dir" in err
    assert main(["reconstruct", "--model", str(tiny_model_dir), str(tmp_path / "x.smi"),
                 "--out", "/no/such/dir/r.csv"]) == 1
    assert "--out" in capsys.readouterr().err


def test_reconstruct_limit_must_be_positive(tiny_model_dir, tmp_path, capsys, train_smiles):
    src = tmp_path / "in.smi"
    src.write_text("\n".join(train_smiles[:5]) + "\n")
    assert main(["reconstruct", "--model", str(tiny_model_dir), str(src), "--limit", "-3"]) == 1
    assert "--limit" in capsys.readouterr().err


def test_bench_decode_compares_both_paths_on_the_same_points(tiny_model_dir, tmp_path, capsys):
    import json

    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--model", str(tiny_model_dir), "-n", "40", "--batch-sizes", "8,40",
                 "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["batch_size"] for r in rows] == [8, 40]
    assert all(r["identical"] and r["reference_per_s"] > 0 and r["fused_per_s"] > 0 for r in rows)
    assert "speedup" in capsys.readouterr().out
    for bad in (["-n", "0"], ["--batch-sizes", "-4"], ["-n", "10" * 20], ["--batch-sizes", "16,abc"],
                ["--batch-sizes", ","], ["--batch-sizes", "1e400"]):
        capsys.readouterr()
        assert main(["bench", "decode", "--model", str(tiny_model_dir), *bad]) == 1
        assert "--batch-sizes" in capsys.readouterr().err or bad[0] == "-n"


def test_bench_decode_times_the_bf16_copy_beside_fp32(tiny_model_dir):
    """With bf16 decoding, both paths are timed in bf16 too, and the share of rows that keep
    their fp32 tokens is reported (a user deciding on bf16 wants both the speed and this)."""
    from molvae.generate import benchmark_decoding
    from molvae.model import MolVAE, load_model

    fp32 = load_model(tiny_model_dir, device="cpu")
    rows = benchmark_decoding(MolVAE(fp32.module, fp32.vocab, "cpu", precision="fp32"), 24, [8], repeats=1)
    assert rows[0]["identical"] and "bf16_fused_per_s" not in rows[0]
    bf16 = MolVAE(fp32.module, fp32.vocab, "cpu", precision="bf16")
    rows = benchmark_decoding(bf16, 24, [8, 24], repeats=1)
    for r in rows:
        assert r["identical"] and r["bf16_reference_per_s"] > 0 and r["bf16_fused_per_s"] > 0
        assert 0.7 <= r["bf16_same_rows"] <= 1 and r["bf16_vs_fp32_fused"] > 0
