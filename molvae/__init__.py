"""molvae: a SELFIES sequence VAE for molecule generation and latent-space optimization.

Python API (each name is imported on first use, so ``import molvae`` stays fast; every name
keeps working however often it is used, see ``_CALLABLE_MODULES``)::

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
import sys as _sys
import types as _types

# On a CPU shared with other work, OpenMP threads that spin while waiting for each other
# made ChemNet ~3x and GRU training up to 26x slower (measured on a busy 2-core machine);
# passive waiting costs little when the cores are free. Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {
    "load_model": "molvae.model", "MolVAE": "molvae.model", "ModelConfig": "molvae.model",
    "TrainConfig": "molvae.train",
    "prepare": "molvae.data", "load_prepared": "molvae.data",
    "sample": "molvae.generate", "reconstruct": "molvae.generate", "interpolate": "molvae.generate",
    "neighbors": "molvae.generate",
    "Objective": "molvae.scoring", "Component": "molvae.scoring", "MultiObjective": "molvae.scoring",
    "moses_metrics": "molvae.metrics",
    "MolvaeError": "molvae.errors",
}
# Public functions named like the module that holds them. Importing a submodule binds it on
# this package under its own name, so a function ``molvae.train`` would be replaced by the
# module ``molvae.train`` as soon as anything imported it (the second ``molvae.train(...)`` in
# a notebook then failed: 'module' object is not callable). Instead these names are the
# modules themselves, made callable as their function: ``molvae.optimize(model, "qed")`` and
# ``molvae.optimize.fit_latent_pca`` both work, whichever import came first. Importing them
# eagerly would bind the function for good, but costs 3.6 s (torch) on every ``import molvae``.
_CALLABLE_MODULES = ("optimize", "train")


class _CallableModule(_types.ModuleType):
    """A module that, called, calls its function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __signature__(self):  # what help() and notebooks show for molvae.optimize(...)
        import inspect

        return inspect.signature(getattr(self, self.__name__.rpartition(".")[2]))


class _Package(_types.ModuleType):
    def __setattr__(self, name, value):
        # The import system binds each submodule here with setattr, once, when it loads it.
        if name in _CALLABLE_MODULES and isinstance(value, _types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    import importlib

    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"molvae.{name}")  # binds (and so converts) it here
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'molvae' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_CALLABLE_MODULES))
