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
