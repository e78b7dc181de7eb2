"""Hostile input: giant, malformed and binary SMILES through data preparation and generation.

A hostile row must become one reject with a reason, and a hostile lead one error message;
never a dead process. RDKit can crash the interpreter (a 20,000-atom chain overflows the
stack of its SMILES writer), so the runs that meet such input happen in a subprocess, where
a crash is a failed assertion instead of a dead test session.
"""

import json
import random
import subprocess
import sys

import pandas as pd
import pytest

from molvae.data import bundled


def _run(code: str, timeout: int = 180) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-2000:]}"
    return res


def test_giant_smiles_rows_become_rejects(tmp_path):
    rows = bundled("test")[:198] + ["C" * 20_000, "C" * 5_000_000]
    src = tmp_path / "in.csv"
    src.write_text("smiles\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    res = _run("import sys; from molvae.cli import main; "
               f"sys.exit(main(['data', 'prepare', {str(src)!r}, '--out', {str(out)!r}]))")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in"] == 200 and summary["kept"] + summary["duplicates"] + summary["rejected"] == 200
    rejects = pd.read_csv(out / "rejects.csv", keep_default_na=False).set_index("row")
    assert "too long: 20,000 characters" in rejects.loc[199, "reason"]
    assert "too long: 5,000,000 characters" in rejects.loc[200, "reason"]
    # the file stays readable in a spreadsheet: a cell holds at most 32,767 characters
    assert rejects["input"].str.len().max() < 2_000
    assert "5,000,000 characters" in rejects.loc[200, "input"]


def test_giant_and_malformed_molecules_into_generation_are_errors(tiny_model_dir, tmp_path):
    giant = "C" * 20_000
    smi = tmp_path / "giant.smi"
    smi.write_text(f"CCO\n{giant}\n")
    model = str(tiny_model_dir)
    calls = [
        ["neighbors", "--model", model, giant],
        ["interpolate", "--model", model, "CCO", giant],
        ["interpolate", "--model", model, "C(C", "CCO"],
        ["neighbors", "--model", model, "CC\tO"],
        ["optimize", "--model", model, "--lead", giant, "--budget", "10", "--out", str(tmp_path / "opt")],
    ]
    code = ("import sys; from molvae.cli import main\n"
            f"for argv in {calls!r}:\n"
            "    print('rc', main(argv), flush=True)\n"
            "    print('---', file=sys.stderr, flush=True)\n"
            f"print('rc', main(['reconstruct', '--model', {model!r}, {str(smi)!r}]))\n")
    res = _run(code)
    rcs = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("rc ")]
    errors = res.stderr.split("---\n")
    assert rcs == ["1", "1", "1", "1", "1", "0"], res.stderr[-3000:]
    for err, expect in zip(errors, ["too long", "too long", "molecule A", "position 3", "too long"]):
        assert err.startswith("error:") and expect in err and "Traceback" not in err, err[:500]
    for err in errors[:5]:
        assert len(err) < 1_000  # the 20,000 characters are not echoed back
    # reconstruct reports the giant row as not encodable and goes on
    table = res.stdout.split("rc 1\n")[-1]
    assert "too long: 20,000 characters" in table and "CCO" in table


# ---------------------------------------------------------------- fuzz

ODD_ATOMS = ["[U]", "[U+6]", "[Fe+2]", "[Xe]", "[Og]", "[C+8]", "[N-7]", "[999U]", "[H+]", "[*]",
             "[Na+].[Cl-]", "O", "[Pt]", "[Li]C", "C[Hg]C", "[2H]C", "[C@@]", "[se]1cccc1", "[Cn]",
             "[Zz]", "[c+]"]
SMILES_CHARS = "CNOSFPclnos()[]=#@+-123456789%/\\.*Br"


def _garbage_field(rng: random.Random, known: list[str]) -> bytes:
    kind = rng.choice(["valid", "valid", "bytes", "giant", "malformed", "odd", "empty", "delim"])
    if kind == "valid":
        return rng.choice(known).encode()
    if kind == "bytes":
        return bytes(rng.choice([b for b in range(1, 256) if b != 10]) for _ in range(rng.randint(1, 60)))
    if kind == "giant":
        unit = rng.choice(["C", "c1ccccc1", "C(", "[C@H](O)", "C1CC1"])
        return (unit * (rng.choice([200, 3_000, 25_000, 300_000]) // len(unit))).encode()
    if kind == "malformed":
        return "".join(rng.choice(SMILES_CHARS) for _ in range(rng.randint(1, 60))).encode()
    if kind == "odd":
        atom = rng.choice(ODD_ATOMS)
        return rng.choice([atom, f"C{atom}", f"{rng.choice(known)}.{atom}", f"{atom}{atom}"]).encode()
    if kind == "empty":
        return rng.choice([b"", b" ", b"\t", b'""', b"   "])
    mol = rng.choice(known)
    return rng.choice([f"{mol},extra", f'"{mol},x"', f"{mol}\tx", f'"{mol}', f'{mol}"', f'"{mol}"',
                       f"'{mol}'", f'"{mol}""x"', f"{mol};x", f"{mol}\r"]).encode()


def test_fuzz_prepare_accounts_for_every_garbage_row(tmp_path):
    rng = random.Random(13)
    known = bundled("test")[:200]
    lines = [_garbage_field(rng, known) + b",id%d" % i for i in range(1000)]
    lines[500] = b"C" * 5_000_000 + b",giant"
    src = tmp_path / "fuzz.csv"
    src.write_bytes(b"smiles,id\n" + b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    res = _run("from molvae.data import prepare; "
               f"prepare({str(src)!r}, {str(out)!r}, progress=False, workers=1)", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["rows_in"] == 1000
    assert s["kept"] + s["duplicates"] + s["rejected"] == 1000
    assert s["kept"] > 100  # the valid molecules among the garbage survive
    rejects = pd.read_csv(out / "rejects.csv", keep_default_na=False, dtype=str)
    prepared = pd.read_csv(out / "prepared.csv", keep_default_na=False, dtype=str)
    assert len(rejects) == s["duplicates"] + s["rejected"] and len(prepared) == s["kept"]
    assert (rejects["reason"].str.strip() != "").all()
    # every input row is exactly once either kept or rejected
    rows = sorted(int(r) for r in list(rejects["row"]) + list(prepared["row"]))
    assert rows == list(range(1, 1001))
    assert rejects["reason"].str.startswith("duplicate of row").sum() == s["duplicates"]
    # a kept row keeps its own id: no shifted or merged fields
    assert all(i == f"id{int(r) - 1}" for r, i in zip(prepared["row"], prepared["id"]))
    # no inorganic molecule was kept as training data
    from molvae import chem

    for smi in prepared["smiles"]:
        mol = chem.to_mol(smi)
        elements = {a.GetSymbol() for a in mol.GetAtoms()}
        assert "C" in elements and elements <= chem.ORGANIC_ELEMENTS, smi
