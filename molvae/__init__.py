"""molvae: a SELFIES sequence VAE for molecule generation and latent-space optimization.

Python API (each name is imported on first use, so ``import molvae`` stays fast)::

    import molvae
    model = molvae.load_model()                   # the pretrained default model
    mu, logvar = model.encode(["CC(=O)Oc1ccccc1C(=O)O"])
    smiles = model.decode(model.sample_prior(10))
    table = molvae.sample(model, 1000)            # DataFrame: smiles, valid, unique, novel, QED, ...
    best = molvae.optimize(model, "qed", budget=1000)

The package layout follows the data's journey: chem -> tokens -> data -> model -> train ->
generate -> scoring -> optimize -> metrics -> pipeline -> report -> cli.
"""

import os as _os

# On a CPU shared with other work, OpenMP threads that spin while waiting for each other
# made ChemNet ~3x and GRU training up to 26x slower (measured on a busy 2-core machine);
# passive waiting costs little when the cores are free. Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {
    "load_model": "molvae.model", "MolVAE": "molvae.model", "ModelConfig": "molvae.model",
    "train": "molvae.train", "TrainConfig": "molvae.train",
    "prepare": "molvae.data", "load_prepared": "molvae.data",
    "sample": "molvae.generate", "reconstruct": "molvae.generate", "interpolate": "molvae.generate",
    "neighbors": "molvae.generate",
    "Objective": "molvae.scoring", "Component": "molvae.scoring", "MultiObjective": "molvae.scoring",
    "optimize": "molvae.optimize",
    "moses_metrics": "molvae.metrics",
    "MolvaeError": "molvae.errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'molvae' has no attribute {name!r}")
