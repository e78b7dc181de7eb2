"""The Python API in a notebook: every public name of ``molvae`` works, and keeps working when
it is used again in the same process. (Issue 11: after the first call ``molvae.optimize`` was
the submodule, so a second ``molvae.optimize(...)`` raised "'module' object is not callable";
``molvae.train`` likewise.)"""

from __future__ import annotations

import inspect

import pytest

import molvae

#: The public API that ``import molvae`` documents.
API = ["load_model", "MolVAE", "ModelConfig", "train", "TrainConfig", "prepare", "load_prepared",
       "sample", "reconstruct", "interpolate", "neighbors", "Objective", "Component",
       "MultiObjective", "optimize", "moses_metrics", "MolvaeError"]

ASPIRIN, CAFFEINE = "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"


def test_the_api_list_is_complete():
    # A name added to molvae's API without a use below makes this fail.
    public = {n for n in dir(molvae) if not n.startswith("_")}
    assert public - {"__version__"} >= set(API)
    assert set(molvae._LAZY) | set(molvae._CALLABLE_MODULES) == set(API)


@pytest.fixture
def small_pca(monkeypatch):
    from molvae.optimize import region

    monkeypatch.setattr(region, "PCA_MOLECULES", 300)  # the shipped default encodes 5000


def test_every_public_name_works_twice_in_one_process(tiny_model_dir, tmp_path, train_smiles, small_pca):
    data_dir = tiny_model_dir.parent / "data"  # prepared by the tiny model's fixture
    src = tmp_path / "mols.smi"
    src.write_text("\n".join(train_smiles[:40]) + "\n")
    smiles = train_smiles[:20]

    def train(i):
        cfg = molvae.TrainConfig(epochs=1, batch_size=64, patience=0, seed=0, device="cpu",
                                 model={"embed_dim": 8, "enc_hidden": 16, "dec_hidden": 16,
                                        "dec_layers": 1, "latent_dim": 4})
        return molvae.train(data_dir, tmp_path / f"model{i}", cfg)

    def objective(i):
        return molvae.Objective([molvae.Component("qed"), molvae.Component("logp", transform={"type": "sigmoid", "low": 0, "high": 5})])

    def raises(i):
        with pytest.raises(molvae.MolvaeError):
            molvae.optimize(model, "qed", budget=0)
        return molvae.MolvaeError

    model = None
    for i in (1, 2):
        model = molvae.load_model(tiny_model_dir, device="cpu")
        assert isinstance(model, molvae.MolVAE)
        assert molvae.ModelConfig(vocab_size=10, seq_len=20).latent_dim > 0
        assert train(i)  # a summary of the training run
        assert len(molvae.prepare(src, tmp_path / f"data{i}", workers=1, progress=False).train) > 0
        assert len(molvae.load_prepared(data_dir).train) > 0
        assert len(molvae.sample(model, 8, properties=False, progress=False)) == 8
        assert len(molvae.reconstruct(model, smiles[:4])) == 4
        assert len(molvae.interpolate(model, ASPIRIN, CAFFEINE, steps=3)) >= 3
        assert len(molvae.neighbors(model, ASPIRIN, n=4)) > 0
        obj = objective(i)
        assert obj.score([ASPIRIN])["score"].between(0, 1).all()
        multi = molvae.MultiObjective({"qed": molvae.Objective([molvae.Component("qed")]), "both": obj})
        assert list(multi.names) == ["qed", "both"]
        table = molvae.optimize(model, "qed", budget=6, batch_size=4, progress=False)
        # the tiny model decodes few distinct molecules: the search may stall before 6
        assert 1 <= len(table) <= 6 and table["score"].between(0, 1).all()
        # one valid molecule: no similarity metrics (their bf16 path is for CPUs with
        # avx512_bf16/AMX; a timing probe for it once took ~70 s on an AVX2-only CPU)
        metrics = molvae.moses_metrics([ASPIRIN, "not a smiles"], test=None, test_scaffolds=None,
                                       properties=False, n_jobs=1, unique_k=(10,))
        assert metrics["valid"] == 0.5
        assert issubclass(raises(i), Exception)


def test_a_function_and_its_module_share_a_name(small_pca):
    # Both roles of molvae.optimize / molvae.train, in whichever order a notebook uses them.
    import molvae.optimize as optimize_module
    from molvae import optimize
    from molvae.optimize import optimize as optimize_function
    from molvae.train import TrainConfig, train

    assert optimize is molvae.optimize is optimize_module
    assert callable(molvae.optimize) and callable(molvae.train)
    assert molvae.optimize.pareto_mask([[1, 0], [0, 1], [0, 0]]).tolist() == [True, True, False]
    assert molvae.train.TrainConfig is TrainConfig is molvae.TrainConfig
    # help() and a notebook's signature tooltip show the function's arguments
    assert inspect.signature(molvae.optimize) == inspect.signature(optimize_function)
    assert inspect.signature(molvae.train) == inspect.signature(train)
