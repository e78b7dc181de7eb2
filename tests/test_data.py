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


# ---------------------------------------------------------------- hostile and odd input (issue 13)


def _reasons(out):
    rejects = pd.read_csv(out / "rejects.csv", keep_default_na=False)
    return dict(zip(rejects["row"], rejects["reason"]))


def test_inorganic_rows_are_rejected_with_the_element_named(tmp_path, small_smiles):
    rows = small_smiles[:20] + ["[Na+].[Cl-]", "O", "[U]", "[U+6]", "[Fe+2]", "CC(=O)[O-].[Na+]"]
    src = tmp_path / "in.csv"
    pd.DataFrame({"smiles": rows}).to_csv(src, index=False)
    d = prepare(src, tmp_path / "out", progress=False)
    reasons = _reasons(tmp_path / "out")
    assert "carbon" in reasons[21] and "carbon" in reasons[22]
    assert "U" in reasons[23] and "U" in reasons[24] and "Fe" in reasons[25]
    kept = set(d.train_smiles + d.valid_smiles)
    assert "Cl" not in kept and "O" not in kept and "CC(=O)O" in kept


def test_too_long_molecules_name_the_real_limit(tmp_path, small_smiles):
    # The vocabulary is built from the short molecules that fit (longest ~ 40 tokens); the
    # reason must still quote the limit the user set (100), and say "too long" where the
    # long molecule also needs a token ([Ring3], [Branch3]) that short ones never use.
    rows = small_smiles[:30] + ["C" * 300, "C1" + "C" * 300 + "C1", "CC(" + "C" * 300 + ")C"]
    src = tmp_path / "in.csv"
    pd.DataFrame({"smiles": rows}).to_csv(src, index=False)
    prepare(src, tmp_path / "out", progress=False)
    reasons = _reasons(tmp_path / "out")
    for row in (31, 32, 33):
        assert reasons[row].startswith("too long") and "> max_len 100" in reasons[row], reasons[row]


@pytest.mark.parametrize("bad", [0, -5, 100_000])
def test_max_len_out_of_range_is_an_error(tmp_path, bad):
    src = tmp_path / "in.smi"
    src.write_text("CCO\n")
    with pytest.raises(MolvaeError, match="max-len"):
        prepare(src, tmp_path / "out", max_len=bad, progress=False)


def test_max_len_cli_zero_is_an_error(tmp_path, capsys):
    src = tmp_path / "in.smi"
    src.write_text("CCO\n")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--max-len", "0"]) == 1
    assert "--max-len" in capsys.readouterr().err


def test_a_tab_or_extra_delimiter_inside_a_field_is_never_silently_cut(tmp_path):
    # "CC\tO" in a CSV would be read by RDKit as ethane named "O"; a TSV row with an extra
    # tab has more fields than the header: each becomes one reject, the other rows stay.
    src = tmp_path / "in.csv"
    src.write_text('smiles,name\nCCO,ethanol\n"CC\tO",tabbed\nc1ccccc1,benzene\nCCN,a,b\n')
    prepare(src, tmp_path / "out", progress=False)
    reasons = _reasons(tmp_path / "out")
    assert sorted(reasons) == [2, 4]
    assert "position 3" in reasons[2]
    assert "3 fields" in reasons[4] and "header has 2" in reasons[4]
    tsv = tmp_path / "in.tsv"
    tsv.write_text("smiles\tname\nCCO\tethanol\nCCN\tmethyl\tamine\nc1ccccc1\tbenzene\n")
    d = prepare(tsv, tmp_path / "out2", progress=False)
    assert d.summary["rows_in"] == 3 and d.summary["kept"] == 2
    assert "3 fields" in _reasons(tmp_path / "out2")[2]


def test_broken_quotes_and_bad_bytes_reject_one_row_not_the_file(tmp_path):
    # An unclosed quote must not swallow the rows after it; a line that is not UTF-8 is one
    # reject, not a file that cannot be read.
    src = tmp_path / "in.csv"
    src.write_bytes(b'smiles,name\nCCO,a\n"CCN,b\nc1ccccc1,c\nCC\xffO,d\nCCCl,e\n')
    d = prepare(src, tmp_path / "out", progress=False)
    s = d.summary
    assert (s["rows_in"], s["kept"], s["rejected"]) == (5, 3, 2)
    reasons = _reasons(tmp_path / "out")
    assert "quot" in reasons[2] and "UTF-8" in reasons[4]


def test_header_only_file_is_an_error(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("smiles,name\n")
    with pytest.raises(MolvaeError, match="no molecules"):
        prepare(src, tmp_path / "out", progress=False)
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "no molecules" in capsys.readouterr().err


def test_no_usable_molecule_is_an_error_naming_the_rejects(tmp_path):
    src = tmp_path / "in.smi"
    src.write_text("xx\n[U]\n")
    with pytest.raises(MolvaeError, match="rejects.csv"):
        prepare(src, tmp_path / "out", progress=False)
    assert len(pd.read_csv(tmp_path / "out" / "rejects.csv")) == 2


def test_a_csv_named_txt_is_read_as_csv(tmp_path, small_smiles):
    src = tmp_path / "in.txt"
    src.write_text("smiles,name\n" + "".join(f"{s},m{i}\n" for i, s in enumerate(small_smiles[:32])))
    d = prepare(src, tmp_path / "out", progress=False)
    assert (d.summary["rows_in"], d.summary["kept"], d.summary["rejected"]) == (32, 32, 0)
    table = pd.read_csv(tmp_path / "out" / "prepared.csv")
    assert table["name"].tolist()[:2] == ["m0", "m1"]
    tsv = tmp_path / "in2.txt"
    tsv.write_text("id\tSMILES\tpIC50\n1\tCCO\t5.0\n2\tc1ccccc1\t6.1\n")
    t, col = read_smiles_table(tsv)
    assert col == "SMILES" and t["pIC50"].tolist() == ["5.0", "6.1"]


def test_out_that_is_a_file_fails_before_the_work(tmp_path, monkeypatch):
    import molvae.chem

    src = tmp_path / "in.smi"
    src.write_text("CCO\n")
    target = tmp_path / "taken"
    target.write_text("not a folder")

    def no_work(*a, **k):
        raise AssertionError("standardized before checking --out")

    monkeypatch.setattr(molvae.chem, "parallel_map", no_work)
    with pytest.raises(MolvaeError, match="--out") as err:
        prepare(src, target, progress=False)
    assert "taken" in str(err.value) and "not a folder" in str(err.value)
    with pytest.raises(MolvaeError, match="--out"):
        prepare(src, target / "sub", progress=False)


def test_preparing_a_small_file_does_not_import_torch(tmp_path):
    # Importing torch took 10 of the 12 s that preparing 31 molecules took on a loaded
    # 2-core machine; `molvae data prepare` never needs it.
    import subprocess
    import sys

    src = tmp_path / "in.smi"
    src.write_text("CCO\nc1ccccc1\n")
    code = ("import sys; from molvae.data import prepare; "
            f"d = prepare({str(src)!r}, {str(tmp_path / 'o')!r}, progress=False); "
            "print(d.summary['kept'], 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "False"], res.stderr
