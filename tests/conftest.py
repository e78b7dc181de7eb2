"""Shared fixtures: small slices of the bundled MOSES data, and a cache folder per session."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Tests must not read or fill the user's ~/.cache/molvae.
    os.environ.setdefault("MOLVAE_CACHE", str(tmp_path_factory.mktemp("molvae-cache")))
    yield


@pytest.fixture(scope="session")
def train_smiles():
    from molvae.data import bundled

    return bundled("train")


@pytest.fixture(scope="session")
def small_smiles(train_smiles):
    return train_smiles[:512]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, train_smiles):
    """A tiny VAE trained for a few seconds on 300 bundled molecules (shared by tests that
    need a real model, not a good one)."""
    from molvae.data import prepare
    from molvae.train import TrainConfig, train

    d = tmp_path_factory.mktemp("tiny-model")
    src = d / "mols.smi"
    src.write_text("\n".join(train_smiles[:300]) + "\n")
    prepare(src, d / "data", progress=False)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, patience=0, seed=0, device="cpu",
                      model={"embed_dim": 16, "enc_hidden": 32, "dec_hidden": 64, "dec_layers": 1,
                             "latent_dim": 8})
    train(d / "data", d / "model", cfg)
    return d / "model"


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from molvae.model import load_model

    return load_model(tiny_model_dir, device="cpu")
