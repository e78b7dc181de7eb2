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
