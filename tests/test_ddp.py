"""Data-parallel training under torchrun: 2 CPU processes (gloo) share the data and one model."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from molvae.model import load_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_torchrun_two_cpu_processes_train_one_model(small_smiles, tmp_path):
    from molvae.data import prepare

    smi = tmp_path / "mols.smi"
    smi.write_text("\n".join(small_smiles[:160]) + "\n")
    prepared = tmp_path / "prepared"
    n_train = prepare(smi, prepared, valid_fraction=0.1, progress=False).train.shape[0]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOLVAE_QUIET": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "molvae", "train", "--data", str(prepared), "--out", str(out), "--epochs", "2",
           "--batch-size", "16", "--device", "cpu", "--threads", "1", "--latent-dim", "8",
           "--model-option", "embed_dim=16", "--model-option", "enc_hidden=32",
           "--model-option", "dec_hidden=32", "--model-option", "dec_layers=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert row["world_size"] == "2"
        per_rank = [int(n) for n in row["rank_molecules"].split(";")]
        # both processes trained, on disjoint halves of the training set
        assert per_rank == [n_train // 2, n_train // 2]
        assert int(float(row["molecules_per_s"])) > 0
    # one writer: a single complete checkpoint and a loadable best model
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    vae = load_model(out, device="cpu")
    assert vae.latent_dim == 8
    assert len(vae.sample(4, seed=0)) == 4
