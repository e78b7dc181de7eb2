"""Reading SMILES tables and preparing datasets: every row is accounted for."""

import gzip
import json

import pandas as pd
import pytest

from molvae.cli import main
from molvae.data import extract_moses, load_prepared, prepare, read_smiles_table
from molvae.errors import MolvaeError
from molvae.tokens import Vocabulary

BIG = "C" * 150 + "c1ccccc1" + "C(C)" * 70  # ~300 heavy atoms


def test_prepare_accounts_for_every_row(tmp_path, small_smiles):
    vocab_dir = prepare_small(tmp_path / "base", small_smiles)
    rows = small_smiles[:50] + [
        "not a smiles",            # invalid
        "",                        # empty row
        "CC(=O)[O-].[Na+]",        # salt: kept as acetic acid
        small_smiles[0],           # duplicate of row 1
        BIG,                       # 300-atom molecule: too long
        "C[Se]C",                  # element outside the vocabulary
        "c1cccc1",                 # cannot be kekulized
    ]
    src = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"m{i}" for i in range(len(rows))], "SMILES": rows}).to_csv(src, index=False)
    d = prepare(src, tmp_path / "out", vocab=vocab_dir.vocab, progress=False)
    s = d.summary
    assert s["rows_in"] == len(rows) == 57
    assert s["kept"] + s["duplicates"] + s["rejected"] == s["rows_in"]
    assert s["duplicates"] == 1
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv", keep_default_na=False)
    assert len(rejects) == s["duplicates"] + s["rejected"] == 6
    reasons = dict(zip(rejects["row"], rejects["reason"]))
    assert "invalid SMILES" in reasons[51]
    assert reasons[52] == "empty SMILES"
    assert reasons[54] == "duplicate of row 1"
    assert "too long" in reasons[55]
    assert "[Se]" in reasons[56]
    assert "invalid" in reasons[57]
    table = pd.read_csv(tmp_path / "out" / "prepared.csv")
    assert "CC(=O)O" in set(table["smiles"])          # the salt row, standardized
    assert set(table.columns) >= {"row", "smiles", "selfies", "split", "id"}  # ids come along
    assert len(d.train) + len(d.valid) == s["kept"]


def prepare_small(out, smiles):
    src = out.parent / (out.name + ".smi")
    out.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("\n".join(smiles) + "\n")
    return prepare(src, out, progress=False)


def test_split_is_deterministic_and_cached(tmp_path, small_smiles):
    a = prepare_small(tmp_path / "a", small_smiles)
    b = prepare_small(tmp_path / "b", small_smiles)
    assert a.valid_smiles == b.valid_smiles and len(a.valid_smiles) == round(0.05 * 512)
    assert (a.train == b.train).all()
    # a second preparation of the same input into the same folder loads the cache
    c = prepare(tmp_path / "a.smi", tmp_path / "a", progress=False)
    assert c.summary == a.summary
    other = prepare(tmp_path / "a.smi", tmp_path / "seed1", seed=1, progress=False)
    assert other.valid_smiles != a.valid_smiles


def test_tensors_decode_back_to_the_smiles(tmp_path, small_smiles):
    d = prepare_small(tmp_path / "p", small_smiles)
    assert d.train.shape[1] == d.vocab.seq_len
    assert [d.vocab.decode(r.tolist()) for r in d.train[:50]] == d.train_smiles[:50]


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "file not found"),
    ("empty.csv", b"", "file is empty"),
    ("blank.smi", b"\n\n  \n", "file is empty"),
    ("binary.csv", bytes(range(256)) * 10, "binary"),
    ("nocol.csv", b"name,value\na,1\nb,2\n", "no SMILES column"),
    ("bad.csv.gz", b"definitely not gzip", "gzip"),
])
def test_bad_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MolvaeError, match=message) as err:
        prepare(path, tmp_path / "out", progress=False)
    assert name in str(err.value)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    rc = main(["data", "prepare", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "nope.csv: file not found" in err and "Traceback" not in err


def test_cli_prepare_prints_counts(tmp_path, capsys):
    src = tmp_path / "mols.tsv"
    src.write_text("smiles\tname\nCCO\tethanol\nCCO\tagain\nxx\tbroken\nc1ccccc1\tbenzene\n")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "rows in:" in out and " 4" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (summary["kept"], summary["duplicates"], summary["rejected"]) == (2, 1, 1)


def test_read_formats(tmp_path):
    (tmp_path / "a.smi").write_text("CCO ethanol\nc1ccccc1 benzene\n")
    t, col = read_smiles_table(tmp_path / "a.smi")
    assert t[col].tolist() == ["CCO", "c1ccccc1"] and t["name"].tolist() == ["ethanol", "benzene"]
    with gzip.open(tmp_path / "b.csv.gz", "wt") as f:
        f.write("id,smiles,pIC50\n1,CCO,5.1\n2,,6.0\n")
    t, col = read_smiles_table(tmp_path / "b.csv.gz")
    assert col == "smiles" and len(t) == 2 and t["pIC50"].tolist() == ["5.1", "6.0"]


def test_load_prepared_from_raw_file_and_corrupt_cache(tmp_path, small_smiles):
    src = tmp_path / "raw.csv"
    pd.DataFrame({"smiles": small_smiles[:100]}).to_csv(src, index=False)
    d = load_prepared(src)
    assert len(d.train) + len(d.valid) == 100
    (d.path / "encoded.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(MolvaeError, match="encoded.safetensors"):
        load_prepared(d.path)
    with pytest.raises(MolvaeError, match="not a prepared dataset folder"):
        load_prepared(tmp_path)


def test_extract_moses_from_a_wheel(tmp_path):
    import zipfile

    wheel = tmp_path / "molsets-0.3.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("train", "test", "test_scaffolds"):
            zf.writestr(f"moses/dataset/data/{name}.csv.gz", gzip.compress(b"SMILES\nCCO\n"))
    paths = extract_moses(wheel, tmp_path / "moses")
    assert sorted(paths) == ["test", "test_scaffolds", "train"]
    assert read_smiles_table(paths["train"])[0]["SMILES"].tolist() == ["CCO"]
    (tmp_path / "junk.whl").write_bytes(b"junk")
    with pytest.raises(MolvaeError, match="not a zip"):
        extract_moses(tmp_path / "junk.whl", tmp_path / "m2")
