"""Scoring objectives: turn molecules into numbers that an optimizer maximizes.

An :class:`Objective` is a list of :class:`Component`\\ s. Each component computes a raw
value for a molecule, maps it into [0, 1] with a :class:`Transform`, and carries a weight;
the weighted geometric mean (default) or arithmetic mean of the transformed values is the
molecule's score. A component with ``filter = true`` is a hard constraint instead: a molecule
it scores 0 is *infeasible* and gets the objective's ``infeasible_score`` (0 by default).
A :class:`MultiObjective` keeps several objectives apart, one value each, for a Pareto front.

Python::

    from molvae.scoring import Component, Objective, Transform
    obj = Objective([
        Component("qed"),
        Component("mw", transform=Transform("double_sigmoid", low=250, high=450,
                                            coef_div=500, coef_si=20, coef_se=20)),
        Component("forbidden", smarts="[N+](=O)[O-]", filter=True),
    ])
    table = obj.score(["CCO", "c1ccccc1O"])   # DataFrame, columns: see Objective.score
    values = obj(["CCO"])                     # list[float]: an Objective is a scoring function

TOML (:func:`load_objective`)::

    aggregate = "geometric"          # or "arithmetic"
    # infeasible_score = 0.0         # optional; see Objective
    [[component]]
    property = "qed"
    weight = 1.0
    [[component]]
    property = "mw"
    transform = { type = "double_sigmoid", low = 250, high = 450, coef_div = 500, coef_si = 20, coef_se = 20 }
    [[component]]
    property = "similarity"
    reference = "CC(=O)Oc1ccccc1C(=O)O"
    transform = { type = "clip", low = 0.0, high = 0.6 }
    [[component]]
    property = "forbidden"
    smarts = "[N+](=O)[O-]"
    filter = true
    [[component]]
    property = "mypackage.docking:score"   # a custom function, imported by name
    params = { receptor = "5ht1b.pdbqt" }  # passed as keyword arguments
    transform = { type = "reverse_sigmoid", low = -12, high = -6 }

A transform is an inline table (or a ``[component.transform]`` table); ``transform =
"identity"`` is accepted for the one transform without parameters. Every key is checked: a
misspelt key, an unknown property or transform, a missing parameter, a wrong type, a SMARTS or
reference SMILES that RDKit cannot parse, or a custom function that cannot be imported raises
:class:`~molvae.errors.MolvaeError` naming the file, the component and the key.

Component keys
    ``property`` (required), ``name`` (column name; default the property, ``_2``, ``_3`` …
    when repeated), ``weight`` (>= 0, default 1; 0 = reported only, not scored), ``filter``
    (bool), ``transform``; and per property: ``reference``, ``fingerprint``, ``radius``,
    ``n_bits`` (similarity), ``smarts`` (substructure, forbidden), ``catalogs`` (alerts),
    ``params`` (custom).

Properties (raw value)
    ``qed logp sa penalized_logp mw tpsa hbd hba rotatable_bonds heavy_atoms rings
    lipinski_violations``: RDKit descriptors from :data:`molvae.chem.PROPERTIES`
    (``penalized_logp`` is the unnormalized logP − SA − ring penalty, see
    :func:`molvae.chem.penalized_logp`).
    ``similarity``: Tanimoto to ``reference``; ``fingerprint = "morgan_bits"`` (default:
    Morgan bit vector, ``radius`` 2, ``n_bits`` 2048, as :func:`molvae.chem.tanimoto`) or
    ``"morgan_counts"`` (unfolded Morgan counts, as GuacaMol/PMO's ECFP4 similarity).
    ``substructure``: number of matches of ``smarts``; default transform step(low=1), so the
    score is 1 when present. ``forbidden``: the same count; default step(high=0), 1 = absent.
    ``alerts``: number of structural alerts from ``catalogs`` (default ``["pains", "brenk"]``;
    also ``nih``, ``zinc``); default step(high=0), 1 = no alert.
    ``lipinski``: rule-of-five violations; default step(high=1), 1 = passes (one violation
    is allowed, as in Lipinski's rule).
    ``"package.module:function"`` or ``"path/to/file.py:function"`` (relative to the TOML
    file): a custom function ``f(smiles: list[str], **params) -> list[float]``, imported by
    name, called once per batch in this process, only on the valid molecules still feasible
    after the RDKit filters and earlier custom filters (so a costly docking run skips
    molecules a filter already rejected). A molecule on which it raises, or for which it
    returns ``None``, NaN, ±inf or something not a number, has *failed*: it is infeasible and
    the score table's ``error`` column says why (when the whole batch raises, the molecules
    are retried one by one to find the culprits; the others score normally).

Code named by a file runs only when the person running molvae allows it
    A ``module:function`` (or ``file.py:function``) reference names code to run, so a file
    alone cannot run it: the reference is imported only with ``allow_code=True`` (``molvae
    ... --allow-code``), or when the module (or the .py file's path) is listed in the
    environment variable :data:`ALLOW_CODE_ENV` (``MOLVAE_ALLOW_CODE=mypackage.docking,other``;
    a package allows its submodules). The standard library is never a scoring function, even
    when allowed (``subprocess:getoutput`` would run the SMILES as a shell command). A Python
    callable passed to :class:`Component` is the caller's own code and always runs.

Transforms (x = raw value; REINVENT's formulas where REINVENT has the transform)
    ``identity``: x itself (for values already in [0, 1], or a raw single-property objective).
    ``clip(low, high)``: (clip(x, low, high) − low) / (high − low). ``reverse_clip``: 1 − that.
    ``sigmoid(low, high, k=0.5)``: 1 / (1 + 10^(10k (mid − x) / (high − low))), mid = (low +
    high) / 2: 0.5 at mid, ≈0.003 at low and ≈0.997 at high with k = 0.5.
    ``reverse_sigmoid``: 1 − sigmoid.
    ``double_sigmoid(low, high, coef_div=100, coef_si=150, coef_se=150)``: a window,
    1/(1 + 10^(coef_se (low − x)/coef_div)) − 1/(1 + 10^(coef_si (high − x)/coef_div));
    0.5 at each edge, ≈1 inside; each edge is ``coef/coef_div`` decades per unit wide.
    ``step(low, high)``: 1 if low <= x <= high else 0 (either bound may be left out).
    NaN (not computable) maps to 0 under every transform.

A raw value that RDKit could not compute is NaN and transforms to 0. Presets:
:data:`PRESETS`, :func:`preset`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import numbers
import os
import sys
import sysconfig
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
from scipy.special import expit

from . import chem
from .errors import MolvaeError

SPECIAL_PROPERTIES = ("similarity", "substructure", "forbidden", "alerts", "lipinski")
#: Every built-in property name; anything with a ':' is a custom function.
PROPERTY_NAMES = tuple(chem.PROPERTIES) + SPECIAL_PROPERTIES
#: Properties already in [0, 1], so the identity transform may enter a mean.
BOUNDED_PROPERTIES = frozenset({"qed", "similarity"})
TRANSFORM_TYPES = ("identity", "clip", "reverse_clip", "sigmoid", "reverse_sigmoid",
                   "double_sigmoid", "step")
AGGREGATES = ("geometric", "arithmetic")
FINGERPRINTS = ("morgan_bits", "morgan_counts")
ALERT_CATALOGS = ("pains", "brenk", "nih", "zinc")
#: Batches at least this large are scored in worker processes; below, a pool costs more.
PARALLEL_MIN = 2000
#: Default score of an infeasible molecule when the objective reports a raw, unbounded value
#: (e.g. penalized logP): 0 would rank an invalid decode above every molecule with a
#: negative logP, so it sits far below any value a molecule under the heavy-atom cap reaches.
RAW_INFEASIBLE_SCORE = -100.0
CELECOXIB = "CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F"

#: Environment variable listing the modules (or .py files) that objective files may name.
ALLOW_CODE_ENV = "MOLVAE_ALLOW_CODE"
#: Characters of a failed molecule's error text kept in the ``error`` column.
ERROR_CHARS = 300

_LN10 = math.log(10.0)
_RESERVED_COLUMNS = ("smiles", "score", "feasible", "error")


# ---------------------------------------------------------------------------- transforms

# type -> (required parameters, optional parameters)
_TRANSFORM_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "identity": ((), ()),
    "clip": (("low", "high"), ()),
    "reverse_clip": (("low", "high"), ()),
    "sigmoid": (("low", "high"), ("k",)),
    "reverse_sigmoid": (("low", "high"), ("k",)),
    "double_sigmoid": (("low", "high"), ("coef_div", "coef_si", "coef_se")),
    "step": ((), ("low", "high")),
}


@dataclass(frozen=True)
class Transform:
    """Maps raw values into [0, 1]; see the module docstring for each type's formula."""

    type: str = "identity"
    low: float | None = None
    high: float | None = None
    k: float = 0.5
    coef_div: float = 100.0
    coef_si: float = 150.0
    coef_se: float = 150.0

    def __call__(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=float)
        missing = np.isnan(x)
        x = np.where(missing, 0.0, x)  # keeps NaN out of the arithmetic below
        lo, hi, t = self.low, self.high, self.type
        if t == "identity":
            y = x
        elif t in ("clip", "reverse_clip"):
            y = (np.clip(x, lo, hi) - lo) / (hi - lo)
            y = 1.0 - y if t == "reverse_clip" else y
        elif t in ("sigmoid", "reverse_sigmoid"):
            # REINVENT's 1 / (1 + 10^(10k (mid - x) / (high - low))), written with expit so
            # that values far from the window cannot overflow.
            z = 10.0 * self.k * (x - (lo + hi) / 2.0) / (hi - lo) * _LN10
            y = expit(-z) if t == "reverse_sigmoid" else expit(z)
        elif t == "double_sigmoid":
            rise = expit(self.coef_se * (x - lo) / self.coef_div * _LN10)
            fall = expit(self.coef_si * (x - hi) / self.coef_div * _LN10)
            y = np.clip(rise - fall, 0.0, 1.0)
        elif t == "step":
            ok = np.ones_like(x, dtype=bool)
            if lo is not None:
                ok &= x >= lo
            if hi is not None:
                ok &= x <= hi
            y = ok.astype(float)
        else:
            raise MolvaeError(f"unknown transform type {t!r}; valid: {', '.join(TRANSFORM_TYPES)}")
        return np.where(missing, 0.0, y)

    def to_dict(self) -> dict[str, Any]:
        """The TOML inline table for this transform (only the parameters its type uses)."""
        required, optional = _TRANSFORM_PARAMS.get(self.type, ((), ()))
        out: dict[str, Any] = {"type": self.type}
        for key in required + optional:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


#: Transforms that give exactly 0 to a failing molecule, so they can serve as hard filters.
_FILTER_TRANSFORMS = ("step", "clip", "reverse_clip")

_DEFAULT_TRANSFORMS = {
    "substructure": Transform("step", low=1),
    "forbidden": Transform("step", high=0),
    "alerts": Transform("step", high=0),
    "lipinski": Transform("step", high=1),
}


# ---------------------------------------------------------------------------- components


@dataclass
class Component:
    """One term of an objective.

    Args:
        property: a property name (see the module docstring), ``"package.module:function"``,
            or a Python callable ``f(list[str]) -> list[float]``.
        transform: a :class:`Transform`, a dict like the TOML inline table, ``"identity"``,
            or ``None`` for the property's default (identity, or a step for the 0/1 checks).
        weight: weight in the mean; 0 keeps the columns in the table without scoring them.
        filter: a hard constraint: transformed value 0 makes the molecule infeasible. Filters
            do not enter the mean.
        name: column name in score tables; default the property name.
        reference, fingerprint, radius, n_bits: for ``similarity``.
        smarts: for ``substructure`` and ``forbidden``.
        catalogs: alert catalogs for ``alerts``.
        params: keyword arguments for a custom function.
    """

    property: str | Callable[..., Sequence[float]]
    transform: Transform | Mapping[str, Any] | str | None = None
    weight: float = 1.0
    filter: bool = False
    name: str | None = None
    reference: str | None = None
    smarts: str | None = None
    fingerprint: str = "morgan_bits"
    radius: int = 2
    n_bits: int = 2048
    catalogs: Sequence[str] = ("pains", "brenk")
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Resolved:
    """A checked component: its final name and transform, and how to compute its raw value."""

    component: Component
    kind: str                     # property name, or "custom"
    transform: Transform
    spec: tuple | None            # picklable recipe for the RDKit raw value (None for custom)
    function: Callable | None     # custom function
    bounded: bool | None          # transformed value known in [0, 1]? None = unknown (custom)

    @property
    def name(self) -> str:
        return self.component.name  # type: ignore[return-value]

    @property
    def scoring(self) -> bool:
        return not self.component.filter and self.component.weight > 0


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise MolvaeError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise MolvaeError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _parse_transform(spec: Any, where: str) -> Transform:
    """A checked :class:`Transform` from a Transform, a type name or a TOML-style table."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, Transform):
        kind = spec.type
    elif isinstance(spec, Mapping):
        kind = spec.get("type")
        if kind is None:
            raise MolvaeError(f"{where}: transform needs a 'type' ({', '.join(TRANSFORM_TYPES)})")
    else:
        raise MolvaeError(f"{where}: 'transform' must be a table like {{ type = \"sigmoid\", low = 0, "
                          f"high = 1 }} or \"identity\", got {spec!r}")
    if kind not in _TRANSFORM_PARAMS:
        raise MolvaeError(f"{where}: transform: unknown type {kind!r}{_suggest(kind, TRANSFORM_TYPES)}; "
                          f"valid: {', '.join(TRANSFORM_TYPES)}")
    required, optional = _TRANSFORM_PARAMS[kind]
    allowed = required + optional
    if isinstance(spec, Transform):
        t = spec
        given = {k for k in ("low", "high") if getattr(t, k) is not None}
    else:
        for key in spec:
            if key != "type" and key not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
                raise MolvaeError(f"{where}: transform: unknown key {key!r}{_suggest(key, allowed)}; "
                                  f"{kind!r} {takes}")
        values = {key: _number(spec[key], where, f"transform.{key}") for key in allowed if key in spec}
        t = Transform(kind, **values)
        given = set(values)
    missing = [k for k in required if getattr(t, k) is None]
    if missing:
        raise MolvaeError(f"{where}: transform {kind!r} needs {' and '.join(repr(k) for k in missing)}, "
                          f"e.g. transform = {{ type = \"{kind}\", low = 0, high = 1 }}")
    extra = sorted(given - set(allowed))
    if extra:
        raise MolvaeError(f"{where}: transform {kind!r} takes no {' or '.join(repr(k) for k in extra)}")
    if kind == "step":
        if t.low is None and t.high is None:
            raise MolvaeError(f"{where}: transform 'step' needs 'low', 'high' or both")
        if t.low is not None and t.high is not None and t.low > t.high:
            raise MolvaeError(f"{where}: transform 'step': low ({t.low}) is above high ({t.high})")
    elif required and not t.low < t.high:  # type: ignore[operator]
        raise MolvaeError(f"{where}: transform {kind!r}: low ({t.low}) must be below high ({t.high}); "
                          f"use the reverse_ form to score low values high")
    for key in ("k", "coef_div", "coef_si", "coef_se"):
        if key in allowed and not getattr(t, key) > 0:
            raise MolvaeError(f"{where}: transform {kind!r}: {key!r} must be positive, "
                              f"got {getattr(t, key)}")
    return t


_FILE_MODULES: dict[Path, Any] = {}


def _allow_list() -> list[str]:
    return [a.strip() for a in os.environ.get(ALLOW_CODE_ENV, "").split(",") if a.strip()]


def _stdlib_file(path: Path) -> bool:
    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    return any(path.is_relative_to(r) and "site-packages" not in path.parts for r in roots)


def _check_code_allowed(ref: str, module_name: str, path: Path | None, where: str,
                        allow_code: bool) -> None:
    """Refuse to import code that a file names unless the person running molvae allowed it
    (see "Code named by a file" in the module docstring). Runs nothing itself."""
    top = module_name.partition(".")[0]
    if (path is None and top in sys.stdlib_module_names) or (path is not None and _stdlib_file(path)):
        raise MolvaeError(f"{where}: 'property' {ref!r} names the Python standard library "
                          f"({module_name!r}), which is never a scoring function, even with "
                          f"--allow-code; write the function in a module of your own")
    if allow_code:
        return
    allowed = _allow_list()
    if path is None and any(module_name == a or module_name.startswith(a + ".") for a in allowed):
        return
    if path is not None and any(a.endswith(".py") and Path(a).resolve() == path for a in allowed):
        return
    name = str(path) if path is not None else module_name
    raise MolvaeError(f"{where}: 'property' {ref!r} would run code ({name}), and a file alone may not "
                      f"run code. If you trust it, allow it from outside the file: the --allow-code "
                      f"flag, allow_code=True in Python, or {ALLOW_CODE_ENV}={name} in the environment")


def _import_function(ref: str, where: str, base_dir: Path | None, allow_code: bool = False) -> Callable:
    """Import ``package.module:function`` (or ``file.py:function``) without evaluating text,
    once :func:`_check_code_allowed` allows it."""
    module_name, _, func_name = ref.rpartition(":")
    if not module_name or not func_name:
        raise MolvaeError(f"{where}: 'property' {ref!r}: write a custom function as "
                          f"'package.module:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            path = path.resolve()
            if not path.is_file():
                raise MolvaeError(f"{where}: 'property' {ref!r}: file {str(path)!r} not found")
            _check_code_allowed(ref, module_name, path, where, allow_code)
            module = _FILE_MODULES.get(path)
            if module is None:
                spec = importlib.util.spec_from_file_location(f"molvae_custom_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                spec.loader.exec_module(module)  # type: ignore[union-attr]
                _FILE_MODULES[path] = module
        else:
            top = module_name.partition(".")[0]
            if top not in sys.stdlib_module_names and importlib.util.find_spec(top) is None:
                raise ModuleNotFoundError(f"No module named {top!r}")  # found without running it
            _check_code_allowed(ref, module_name, None, where, allow_code)
            module = importlib.import_module(module_name)
    except MolvaeError:
        raise
    except Exception as exc:  # ImportError, or any error raised while the module runs
        raise MolvaeError(f"{where}: 'property': cannot import {module_name!r} "
                          f"({type(exc).__name__}: {exc}); check the name and that it is installed "
                          f"or on PYTHONPATH") from exc
    fn = getattr(module, func_name, None)
    if fn is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise MolvaeError(f"{where}: 'property': module {module_name!r} has no function "
                          f"{func_name!r}{_suggest(func_name, public)}")
    if not callable(fn):
        raise MolvaeError(f"{where}: 'property': {ref!r} is not a function")
    return fn


def _custom_default_name(prop: str | Callable) -> str:
    name = prop.rpartition(":")[2] if isinstance(prop, str) else getattr(prop, "__name__", "")
    return name if name.isidentifier() else "custom"


def _resolve(c: Component, index: int, source: str, base_dir: Path | None,
             allow_code: bool = False) -> _Resolved:
    """Check one component and work out how to compute it; errors name the component."""
    prop = c.property
    label = c.name or (prop if isinstance(prop, str) else _custom_default_name(prop))
    where = f"{source}: component {index} ({label!r})"
    if c.name is not None and (not isinstance(c.name, str) or not c.name.strip()):
        raise MolvaeError(f"{where}: 'name' must be a non-empty string, got {c.name!r}")
    weight = _number(c.weight, where, "weight")
    if weight < 0:
        raise MolvaeError(f"{where}: 'weight' must be >= 0, got {weight}")
    if not isinstance(c.filter, bool):
        raise MolvaeError(f"{where}: 'filter' must be true or false, got {c.filter!r}")

    function: Callable | None = None
    if callable(prop):
        kind, function = "custom", prop
    elif isinstance(prop, str) and ":" in prop:
        kind, function = "custom", _import_function(prop, where, base_dir, allow_code)
    elif isinstance(prop, str) and prop in PROPERTY_NAMES:
        kind = prop
    else:
        raise MolvaeError(f"{where}: unknown property {prop!r}{_suggest(prop, PROPERTY_NAMES)}; valid: "
                          f"{', '.join(PROPERTY_NAMES)}, or a custom function as 'package.module:function'")

    for key, kinds in (("reference", ("similarity",)), ("smarts", ("substructure", "forbidden"))):
        if getattr(c, key) is not None and kind not in kinds:
            raise MolvaeError(f"{where}: key {key!r} does not apply to this property "
                              f"(it is for {', '.join(kinds)})")
    if c.params and kind != "custom":
        raise MolvaeError(f"{where}: key 'params' does not apply to this property "
                          f"(it is for custom functions)")

    spec: tuple | None = None
    if kind == "similarity":
        if not isinstance(c.reference, str) or not c.reference.strip():
            raise MolvaeError(f"{where}: similarity needs 'reference', the SMILES to compare with")
        if chem.to_mol(c.reference) is None:
            raise MolvaeError(f"{where}: 'reference' {c.reference!r} is not a valid SMILES "
                              f"(RDKit could not parse it); give the reference molecule as SMILES")
        if c.fingerprint not in FINGERPRINTS:
            raise MolvaeError(f"{where}: 'fingerprint' {c.fingerprint!r} is unknown"
                              f"{_suggest(c.fingerprint, FINGERPRINTS)}; valid: {', '.join(FINGERPRINTS)}")
        radius = _integer(c.radius, where, "radius", 0)
        n_bits = _integer(c.n_bits, where, "n_bits", 1)
        spec = ("similarity", c.reference.strip(), c.fingerprint, radius, n_bits)
    elif kind in ("substructure", "forbidden"):
        if not isinstance(c.smarts, str) or not c.smarts.strip():
            raise MolvaeError(f"{where}: {kind} needs 'smarts', the pattern to match")
        if _pattern(c.smarts) is None:
            raise MolvaeError(f"{where}: 'smarts' {c.smarts!r} is not valid SMARTS "
                              f"(RDKit could not parse it)")
        spec = ("matches", c.smarts)
    elif kind == "alerts":
        catalogs = c.catalogs
        if isinstance(catalogs, str) or not isinstance(catalogs, Sequence) or not catalogs:
            raise MolvaeError(f"{where}: 'catalogs' must be a non-empty list, e.g. [\"pains\", \"brenk\"]")
        for name in catalogs:
            if name not in ALERT_CATALOGS:
                raise MolvaeError(f"{where}: 'catalogs': unknown catalog {name!r}"
                                  f"{_suggest(name, ALERT_CATALOGS)}; valid: {', '.join(ALERT_CATALOGS)}")
        spec = ("alerts", tuple(sorted(set(catalogs))))
    elif kind == "lipinski":
        spec = ("property", "lipinski_violations")
    elif kind != "custom":
        spec = ("property", kind)
    if kind == "custom" and not isinstance(c.params, Mapping):
        raise MolvaeError(f"{where}: 'params' must be a table of keyword arguments, got {c.params!r}")

    transform = (_parse_transform(c.transform, where) if c.transform is not None
                 else _DEFAULT_TRANSFORMS.get(kind, Transform()))
    if c.filter and not (transform.type in _FILTER_TRANSFORMS
                         or (transform.type == "identity" and kind == "custom")):
        raise MolvaeError(f"{where}: a filter needs a transform that gives 0 to failing molecules "
                          f"({', '.join(_FILTER_TRANSFORMS)}), not {transform.type!r}; e.g. "
                          f"transform = {{ type = \"step\", high = 500 }}")
    bounded = None if kind == "custom" and transform.type == "identity" else (
        transform.type != "identity" or kind in BOUNDED_PROPERTIES)
    component = replace(c, transform=transform, weight=weight)
    return _Resolved(component, kind, transform, spec, function, bounded)


# ---------------------------------------------------------------------------- raw values


@lru_cache(maxsize=256)
def _pattern(smarts: str) -> Chem.Mol | None:
    try:
        return Chem.MolFromSmarts(smarts)
    except Exception:  # some malformed SMARTS raise instead of returning None
        return None


@lru_cache(maxsize=8)
def _count_generator(radius: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius)


def _fingerprint(mol: Chem.Mol, kind: str, radius: int, n_bits: int):
    if kind == "morgan_counts":
        # Unfolded counts: the same Tanimoto as the legacy AllChem.GetMorganFingerprint(mol, r)
        # that GuacaMol, TDC and PMO use for their similarity oracles.
        return _count_generator(radius).GetSparseCountFingerprint(mol)
    return chem.morgan_fp(mol, radius, n_bits)


@lru_cache(maxsize=64)
def _reference_fp(smiles: str, kind: str, radius: int, n_bits: int):
    return _fingerprint(chem.to_mol(smiles), kind, radius, n_bits)


_CATALOG_IDS = {
    "pains": FilterCatalogParams.FilterCatalogs.PAINS,
    "brenk": FilterCatalogParams.FilterCatalogs.BRENK,
    "nih": FilterCatalogParams.FilterCatalogs.NIH,
    "zinc": FilterCatalogParams.FilterCatalogs.ZINC,
}


@lru_cache(maxsize=8)
def _catalog(names: tuple[str, ...]) -> FilterCatalog:
    params = FilterCatalogParams()
    for name in names:
        params.AddCatalog(_CATALOG_IDS[name])
    return FilterCatalog(params)


def _raw_value(mol: Chem.Mol, spec: tuple) -> float:
    kind = spec[0]
    try:
        if kind == "property":
            return float(chem.PROPERTIES[spec[1]](mol))
        if kind == "similarity":
            _, ref, fp, radius, n_bits = spec
            return float(DataStructs.TanimotoSimilarity(_reference_fp(ref, fp, radius, n_bits),
                                                        _fingerprint(mol, fp, radius, n_bits)))
        if kind == "matches":
            return float(len(mol.GetSubstructMatches(_pattern(spec[1]))))
        if kind == "alerts":
            return float(len(_catalog(spec[1]).GetMatches(mol)))
    except Exception:  # one odd molecule (e.g. a QED failure) must not stop a batch
        return math.nan
    raise ValueError(f"unknown raw-value spec {spec!r}")  # a bug, not a user error


def raw_row(specs: tuple[tuple, ...], smiles: str) -> tuple[float, ...] | None:
    """Raw values of one molecule for each spec, or ``None`` if the SMILES is invalid.

    Module level and free of objective objects so that :func:`molvae.chem.parallel_map` can
    send it, with ``functools.partial(raw_row, specs)``, to worker processes.
    """
    mol = chem.to_mol(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return tuple(_raw_value(mol, spec) for spec in specs)


def compute_raw(smiles: Sequence[str], specs: Sequence[tuple], workers: int | None = None,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validity mask and raw RDKit values (rows = molecules, columns = specs) for a batch.

    Batches of :data:`PARALLEL_MIN` molecules or more run on ``workers`` processes (default:
    all cores); smaller ones run here.
    """
    specs = tuple(specs)
    rows = chem.parallel_map(partial(raw_row, specs), smiles, workers=workers, desc="scoring",
                             progress=progress, min_parallel=PARALLEL_MIN)
    valid = np.array([r is not None for r in rows], dtype=bool)
    raw = np.full((len(rows), len(specs)), np.nan)
    for i, r in enumerate(rows):
        if r is not None and specs:
            raw[i] = r
    return valid, raw


# ---------------------------------------------------------------------------- objectives


class Objective:
    """A weighted combination of components; call it on a list of SMILES to score them.

    Args:
        components: the :class:`Component` list (names must be unique; defaults are filled).
        aggregate: ``"geometric"`` (weighted geometric mean: any scored component at 0 gives
            0) or ``"arithmetic"`` (weighted mean).
        infeasible_score: score of invalid or infeasible molecules. Default 0, except for an
            objective that reports one raw unbounded property (identity transform on, e.g.,
            penalized logP), where it is :data:`RAW_INFEASIBLE_SCORE` so that an invalid
            molecule never outranks a valid one with a negative value.
        source: where the objective came from, for error messages (a file name).
        base_dir: folder that relative ``file.py:function`` references are resolved against.
        description: free text, kept for reports.
        allow_code: import the ``module:function`` references of the components (else only
            those listed in :data:`ALLOW_CODE_ENV`; see the module docstring).

    With exactly one scored component the score is its transformed value as is (so an
    identity transform reports raw penalized logP). With several, each must lie in [0, 1]:
    identity is then accepted only for qed, similarity, or a custom function that returns
    values in [0, 1].
    """

    def __init__(self, components: Sequence[Component], aggregate: str = "geometric",
                 infeasible_score: float | None = None, source: str = "objective",
                 base_dir: str | Path | None = None, description: str = "", allow_code: bool = False):
        self.source = source
        self.description = description
        self.allow_code = bool(allow_code)
        if aggregate not in AGGREGATES:
            raise MolvaeError(f"{source}: 'aggregate' {aggregate!r} is unknown"
                              f"{_suggest(aggregate, AGGREGATES)}; valid: {', '.join(AGGREGATES)}")
        self.aggregate = aggregate
        components = list(components)
        if not components:
            raise MolvaeError(f"{source}: an objective needs at least one component")
        base = Path(base_dir) if base_dir is not None else None
        self.base_dir = base
        resolved = []
        for i, c in enumerate(components, 1):
            if not isinstance(c, Component):
                raise MolvaeError(f"{source}: component {i} must be a Component, got {type(c).__name__}")
            resolved.append(_resolve(c, i, source, base, self.allow_code))
        self._resolved = self._name(resolved)
        self.components: list[Component] = [r.component for r in self._resolved]
        self.names: list[str] = [r.name for r in self._resolved]
        self._scoring = [r for r in self._resolved if r.scoring]
        self._check_scoring()
        if infeasible_score is None:
            self.infeasible_score = 0.0 if self.bounded else RAW_INFEASIBLE_SCORE
            self._explicit_infeasible = False
        else:
            self.infeasible_score = _number(infeasible_score, source, "infeasible_score")
            self._explicit_infeasible = True
        # Unique RDKit recipes: a filter and a score on the same property compute it once.
        self._specs = tuple(dict.fromkeys(r.spec for r in self._resolved if r.spec is not None))

    def _name(self, resolved: list[_Resolved]) -> list[_Resolved]:
        """Fill default names (property, then property_2 …) and check that columns are unique."""
        taken: dict[str, int] = {}
        for i, r in enumerate(resolved, 1):
            name = r.component.name
            if name is None:
                continue
            if name in _RESERVED_COLUMNS:
                raise MolvaeError(f"{self.source}: component {i} ({name!r}): 'name' {name!r} is reserved "
                                  f"for a score-table column; choose another")
            if name in taken:
                raise MolvaeError(f"{self.source}: component {i} ({name!r}): 'name' {name!r} is already "
                                  f"used by component {taken[name]}; give it another name")
            taken[name] = i
        out = []
        for i, r in enumerate(resolved, 1):
            if r.component.name is None:
                prop = r.component.property
                stem = _custom_default_name(prop) if r.kind == "custom" else str(prop)
                name, n = stem, 1
                while name in taken or name in _RESERVED_COLUMNS:
                    n += 1
                    name = f"{stem}_{n}"
                taken[name] = i
                r = replace(r, component=replace(r.component, name=name))
            out.append(r)
        columns = [col for r in out for col in (f"{r.name}_raw", r.name)]
        for i, r in enumerate(out, 1):
            if columns.count(r.name) > 1 or columns.count(f"{r.name}_raw") > 1:
                raise MolvaeError(f"{self.source}: component {i} ({r.name!r}): its columns clash with "
                                  f"another component's '<name>_raw' column; rename one")
        return out

    def _check_scoring(self) -> None:
        # Filters with weight-0 columns make a screen (feasible = 1); without a filter,
        # all-zero weights score nothing and are a mistake.
        if not self._scoring and not any(r.component.filter for r in self._resolved):
            raise MolvaeError(f"{self.source}: every component has weight 0; give at least one a "
                              f"positive weight")
        if len(self._scoring) < 2:
            return
        for i, r in enumerate(self._resolved, 1):
            if r.scoring and r.bounded is False:
                raise MolvaeError(
                    f"{self.source}: component {i} ({r.name!r}): transform 'identity' leaves {r.kind} "
                    f"unscaled, but a mean of several components needs each in [0, 1]; add a "
                    f"transform, e.g. transform = {{ type = \"sigmoid\", low = ..., high = ... }}")

    @property
    def bounded(self) -> bool:
        """Whether scores lie in [0, 1] (False for a raw single-property objective)."""
        return len(self._scoring) != 1 or self._scoring[0].bounded is not False

    def score(self, smiles: Sequence[str], workers: int | None = None,
              progress: bool = True) -> pd.DataFrame:
        """Score a batch of molecules.

        Returns:
            One row per input, in order, with columns:

            - ``smiles``: the input as given;
            - ``score``: the aggregate, or ``infeasible_score`` when the molecule is invalid
              or fails a filter;
            - ``feasible``: True when the SMILES is valid, passes every filter and every
              custom function scored it;
            - ``error``: why a custom function could not score the molecule (what it raised,
              or the value it returned instead of a number); empty otherwise;
            - ``<name>_raw`` for each component: its raw value (property, Tanimoto, match or
              alert count, custom output); NaN if not computed (invalid SMILES, RDKit
              failure, custom function skipped because a filter already failed);
            - ``<name>`` for each component: the transformed value, 0 where raw is NaN.
        """
        smiles = list(smiles)
        valid, raw = compute_raw(smiles, self._specs, workers=workers, progress=progress)
        return self._finish(smiles, valid, dict(zip(self._specs, raw.T)))

    def __call__(self, smiles: Sequence[str]) -> list[float]:
        """Scores only: an Objective is itself a ``list[str] -> list[float]`` function."""
        return self.score(smiles)["score"].tolist()

    def _finish(self, smiles: list[str], valid: np.ndarray,
                raw_by_spec: Mapping[tuple, np.ndarray]) -> pd.DataFrame:
        n = len(smiles)
        feasible = valid.copy()
        raw: dict[str, np.ndarray] = {}
        value: dict[str, np.ndarray] = {}
        # RDKit components first, so their filters spare custom functions needless work.
        for r in self._resolved:
            if r.spec is not None:
                raw[r.name] = raw_by_spec[r.spec]
                value[r.name] = r.transform(raw[r.name])
                if r.component.filter:
                    feasible &= value[r.name] > 0
        errors = [""] * n
        for r in self._resolved:
            if r.function is None:
                continue
            column = np.full(n, np.nan)
            todo = np.flatnonzero(feasible)
            if todo.size:
                values, failed = self._call_custom(r, [smiles[i] for i in todo])
                column[todo] = values
                for i, error in zip(todo, failed):
                    if error:  # failed: infeasible, and later functions skip it
                        errors[i], feasible[i] = error, False
            raw[r.name] = column
            value[r.name] = r.transform(column)
            if r.component.filter:
                feasible &= value[r.name] > 0
        total = self._aggregate(value, n)
        table: dict[str, Any] = {
            "smiles": smiles,
            "score": np.where(feasible, total, self.infeasible_score),
            "feasible": feasible,
            "error": errors,
        }
        for name in self.names:
            table[f"{name}_raw"] = raw[name]
            table[name] = value[name]
        return pd.DataFrame(table)

    def _call_custom(self, r: _Resolved, smiles: list[str]) -> tuple[np.ndarray, list[str]]:
        """The custom function's values for a batch, and per molecule why it failed ('' if it
        did not). A batch that raises is retried one molecule at a time, so that one hostile
        molecule fails alone instead of stopping every run that meets it."""
        label = r.component.property if isinstance(r.component.property, str) else r.name
        try:
            out = r.function(smiles, **dict(r.component.params))  # type: ignore[misc]
        except Exception as exc:  # the function's own error (a bug in it, or a hostile molecule)
            if len(smiles) > 1:
                parts = [self._call_custom(r, [s]) for s in smiles]
                return np.concatenate([v for v, _ in parts]), [e for _, es in parts for e in es]
            return np.array([np.nan]), [_error_text(f"{label} raised {type(exc).__name__}: {exc}")]
        try:
            out = list(out)
        except TypeError:
            raise MolvaeError(f"{self.source}: custom function {label!r} must return a list with one "
                              f"number per SMILES, got {type(out).__name__}") from None
        if len(out) != len(smiles):
            raise MolvaeError(f"{self.source}: custom function {label!r} returned {len(out)} values "
                              f"for {len(smiles)} SMILES; it must return one per SMILES, in order")
        values = np.full(len(out), np.nan)
        errors = [""] * len(out)
        for i, v in enumerate(out):
            try:
                x = math.nan if isinstance(v, (str, bytes)) else float(v)  # "3" is not a score
            except (TypeError, ValueError):
                x = math.nan
            if math.isfinite(x):
                values[i] = x
            else:
                errors[i] = _error_text(f"{label} returned {v!r}, not a number")
        if r.scoring and r.bounded is None and len(self._scoring) > 1:
            bad = values[(values < 0) | (values > 1)]
            if bad.size:
                raise MolvaeError(f"{self.source}: component {r.name!r}: custom function {label!r} "
                                  f"returned {bad[0]:g}, outside [0, 1], but a mean of several "
                                  f"components needs each in [0, 1]; add a transform (sigmoid, clip …)")
        return values, errors

    def _aggregate(self, value: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        if not self._scoring:
            return np.ones(n)  # filters only: every feasible molecule scores 1
        if len(self._scoring) == 1:
            return value[self._scoring[0].name]
        v = np.column_stack([value[r.name] for r in self._scoring])
        w = np.array([r.component.weight for r in self._scoring])
        w = w / w.sum()
        if self.aggregate == "arithmetic":
            return v @ w
        positive = v > 0
        logs = np.log(np.where(positive, v, 1.0))
        return np.where(positive.all(axis=1), np.exp(logs @ w), 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The objective as a TOML-shaped dict (what a run folder records); custom Python
        callables appear as ``module:qualname``."""
        out: dict[str, Any] = {"aggregate": self.aggregate}
        if self.description:
            out["description"] = self.description
        if self._explicit_infeasible:
            out["infeasible_score"] = self.infeasible_score
        out["component"] = [_component_dict(r) for r in self._resolved]
        return out

    def __repr__(self) -> str:
        return f"Objective({', '.join(self.names)}; aggregate={self.aggregate!r}, source={self.source!r})"


def _error_text(text: str) -> str:
    """One line, at most :data:`ERROR_CHARS` characters, for the ``error`` column."""
    text = " ".join(str(text).split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _component_dict(r: _Resolved) -> dict[str, Any]:
    c = r.component
    prop = c.property
    if callable(prop):
        prop = f"{getattr(prop, '__module__', '?')}:{getattr(prop, '__qualname__', repr(prop))}"
    d: dict[str, Any] = {"property": prop, "name": c.name, "weight": c.weight}
    if c.filter:
        d["filter"] = True
    d["transform"] = r.transform.to_dict()
    if r.kind == "similarity":
        d.update(reference=c.reference, fingerprint=c.fingerprint, radius=c.radius, n_bits=c.n_bits)
    elif r.kind in ("substructure", "forbidden"):
        d["smarts"] = c.smarts
    elif r.kind == "alerts":
        d["catalogs"] = list(c.catalogs)
    elif r.kind == "custom" and c.params:
        d["params"] = dict(c.params)
    return d


class MultiObjective:
    """Several objectives scored side by side, one value each, all maximized (for a Pareto
    front). RDKit values shared between objectives (a common filter) are computed once.

    Args:
        objectives: a mapping name -> :class:`Objective`, or a list (named after their single
            scored component, else ``objective_1`` …).

    A molecule is feasible when it is feasible for every objective; an infeasible one gets
    each objective's ``infeasible_score`` in every position.
    """

    def __init__(self, objectives: Mapping[str, Objective] | Sequence[Objective]):
        if isinstance(objectives, Mapping):
            items = list(objectives.items())
        else:
            items = []
            for i, obj in enumerate(objectives, 1):
                one = obj._scoring[0].name if len(getattr(obj, "_scoring", ())) == 1 else None
                name = one if one and one not in dict(items) else f"objective_{i}"
                items.append((name, obj))
        if not items:
            raise MolvaeError("a multi-objective needs at least one objective")
        for name, obj in items:
            if not isinstance(obj, Objective):
                raise MolvaeError(f"multi-objective {name!r}: expected an Objective, "
                                  f"got {type(obj).__name__}")
            if not isinstance(name, str) or not name or name in ("smiles", "feasible"):
                raise MolvaeError(f"multi-objective: {name!r} cannot name an objective; choose another")
        self.objectives: dict[str, Objective] = dict(items)
        self.names: list[str] = list(self.objectives)
        self.directions: list[str] = ["maximize"] * len(self.names)
        self._specs = tuple(dict.fromkeys(s for o in self.objectives.values() for s in o._specs))

    @classmethod
    def from_objective(cls, objective: Objective) -> MultiObjective:
        """Each scored component of ``objective`` becomes its own objective; the filters and
        report-only (weight 0) components are shared by all of them."""
        shared = [r.component for r in objective._resolved if not r.scoring]
        parts = {}
        for r in objective._scoring:
            parts[r.name] = Objective(
                [r.component] + shared, aggregate=objective.aggregate,
                infeasible_score=objective.infeasible_score if objective._explicit_infeasible else None,
                source=f"{objective.source} ({r.name})", base_dir=objective.base_dir,
                allow_code=objective.allow_code)
        if not parts:
            raise MolvaeError(f"{objective.source}: no scored component to split into objectives")
        return cls(parts)

    def __len__(self) -> int:
        return len(self.names)

    def score(self, smiles: Sequence[str], workers: int | None = None,
              progress: bool = True) -> pd.DataFrame:
        """Score a batch against every objective.

        Returns:
            Columns ``smiles``, ``feasible`` (for all objectives), ``error`` (each objective's
            reason, once), ``<objective>_score`` for each objective, then each objective's
            component columns (``<name>_raw``,
            ``<name>``, as in :meth:`Objective.score`); a component shared by several
            objectives appears once, and a different component with a name already used is
            prefixed ``<objective>.``.
        """
        smiles = list(smiles)
        valid, raw = compute_raw(smiles, self._specs, workers=workers, progress=progress)
        by_spec = dict(zip(self._specs, raw.T))
        tables = {name: obj._finish(smiles, valid, by_spec) for name, obj in self.objectives.items()}
        feasible = np.logical_and.reduce([t["feasible"].to_numpy() for t in tables.values()])
        errors = [" | ".join(dict.fromkeys(e for e in row if e))
                  for row in zip(*(t["error"] for t in tables.values()))]
        out: dict[str, Any] = {"smiles": smiles, "feasible": feasible, "error": errors}
        for name, t in tables.items():
            out[f"{name}_score"] = np.where(feasible, t["score"], self.objectives[name].infeasible_score)
        seen: dict[str, dict] = {}
        for name, obj in self.objectives.items():
            for r in obj._resolved:
                recipe = _component_dict(r)
                if r.name in seen and seen[r.name] == recipe:
                    continue
                prefix = f"{name}." if r.name in seen else ""
                seen.setdefault(r.name, recipe)
                out[f"{prefix}{r.name}_raw"] = tables[name][f"{r.name}_raw"].to_numpy()
                out[f"{prefix}{r.name}"] = tables[name][r.name].to_numpy()
        return pd.DataFrame(out)

    def __call__(self, smiles: Sequence[str]) -> list[list[float]]:
        """One vector of objective values per molecule."""
        table = self.score(smiles)
        return table[[f"{n}_score" for n in self.names]].to_numpy().tolist()

    def __repr__(self) -> str:
        return f"MultiObjective({', '.join(self.names)})"


# ---------------------------------------------------------------------------- loading

_TOP_KEYS = ("aggregate", "component", "description", "infeasible_score")
_COMPONENT_KEYS = ("property", "name", "weight", "filter", "transform", "reference", "fingerprint",
                   "radius", "n_bits", "smarts", "catalogs", "params")
_KIND_KEYS = {
    "similarity": ("reference", "fingerprint", "radius", "n_bits"),
    "substructure": ("smarts",),
    "forbidden": ("smarts",),
    "alerts": ("catalogs",),
    "custom": ("params",),
}
_COMMON_KEYS = ("property", "name", "weight", "filter", "transform")


def objective_from_dict(data: Mapping[str, Any], source: str = "objective",
                        base_dir: str | Path | None = None, allow_code: bool = False) -> Objective:
    """An :class:`Objective` from a TOML-shaped dict; ``source`` names it in error messages.
    ``allow_code``: see :class:`Objective` (the dict cannot allow its own code)."""
    if not isinstance(data, Mapping):
        raise MolvaeError(f"{source}: an objective must be a table with [[component]] entries, got {data!r}")
    for key in data:
        if key not in _TOP_KEYS:
            raise MolvaeError(f"{source}: unknown key {key!r}{_suggest(key, _TOP_KEYS)}; "
                              f"valid keys: {', '.join(_TOP_KEYS)}")
    entries = data.get("component")
    if entries is None:
        raise MolvaeError(f"{source}: no components; add at least one [[component]] table with a 'property'")
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise MolvaeError(f"{source}: 'component' must be a list of tables, written [[component]]")
    components = []
    for i, entry in enumerate(entries, 1):
        label = entry.get("name") or entry.get("property") or "?"
        where = f"{source}: component {i} ({label!r})"
        for key in entry:
            if key not in _COMPONENT_KEYS:
                raise MolvaeError(f"{where}: unknown key {key!r}{_suggest(key, _COMPONENT_KEYS)}; "
                                  f"valid keys: {', '.join(_COMPONENT_KEYS)}")
        prop = entry.get("property")
        if not isinstance(prop, str) or not prop:
            raise MolvaeError(f"{where}: 'property' is missing; e.g. property = \"qed\"")
        kind = "custom" if ":" in prop else prop
        if kind in PROPERTY_NAMES or kind == "custom":
            allowed = _COMMON_KEYS + _KIND_KEYS.get(kind, ())
            for key in entry:
                if key not in allowed:
                    owners = [k for k, keys in _KIND_KEYS.items() if key in keys]
                    raise MolvaeError(f"{where}: key {key!r} does not apply to property {prop!r} "
                                      f"(it is for {', '.join(owners)})")
        if "catalogs" in entry and isinstance(entry["catalogs"], list):
            entry = {**entry, "catalogs": tuple(entry["catalogs"])}
        components.append(Component(**entry))  # unknown properties are reported by Objective
    aggregate = data.get("aggregate", "geometric")
    if not isinstance(aggregate, str):
        raise MolvaeError(f"{source}: 'aggregate' must be \"geometric\" or \"arithmetic\", got {aggregate!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise MolvaeError(f"{source}: 'description' must be a string")
    return Objective(components, aggregate=aggregate, infeasible_score=data.get("infeasible_score"),
                     source=source, base_dir=base_dir, description=description, allow_code=allow_code)


def load_objective(path: str | Path, allow_code: bool = False) -> Objective:
    """Read an objective TOML file (format in the module docstring); ``allow_code`` lets its
    ``module:function`` components run (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MolvaeError(f"objective file {str(path)!r} not found")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise MolvaeError(f"{path}: invalid TOML: {exc}") from None
    return objective_from_dict(data, source=str(path), base_dir=path.parent, allow_code=allow_code)


# ---------------------------------------------------------------------------- presets

# The structural-alert part of the drug-likeness presets. Brenk flags many marketed drugs
# (aspirin's phenol ester), so it only lowers the score: 1 alert -> 0.95, 2 -> 0.5; PAINS
# (assay interference) makes a molecule infeasible.
_ALERT_COMPONENTS: tuple[dict[str, Any], ...] = (
    {"property": "alerts", "name": "brenk", "catalogs": ["brenk"],
     "transform": {"type": "reverse_sigmoid", "low": 0, "high": 4}},
    {"property": "alerts", "name": "pains", "catalogs": ["pains"], "filter": True},
)

#: Named objectives, as TOML-shaped dicts. Also ``similarity:<SMILES>`` (see :func:`preset`).
PRESETS: dict[str, dict[str, Any]] = {
    "qed": {
        "description": "QED drug-likeness (RDKit); saturates at about 0.948",
        "component": [{"property": "qed"}],
    },
    "logp": {
        "description": "Crippen logP, raw (unbounded; rewards long carbon chains)",
        "component": [{"property": "logp"}],
    },
    "penalized_logp": {
        "description": "penalized logP = logP - SA - max(0, largest ring - 6), unnormalized "
                       "(GCPN/MolDQN/LIMO variant), raw; molecules over 38 heavy atoms are "
                       "infeasible (the ZINC250k maximum), as benchmarks cap size",
        "component": [
            {"property": "penalized_logp"},
            {"property": "heavy_atoms", "transform": {"type": "step", "high": 38}, "filter": True},
        ],
    },
    "drug_like": {
        "description": "windows on MW 150-500, logP -1-5, TPSA 20-140, low SA, QED; PAINS "
                       "alerts are infeasible, Brenk alerts lower the score",
        "aggregate": "geometric",
        "component": [
            {"property": "qed"},
            {"property": "mw", "transform": {"type": "double_sigmoid", "low": 150, "high": 500,
                                             "coef_div": 500, "coef_si": 20, "coef_se": 20}},
            {"property": "logp", "transform": {"type": "double_sigmoid", "low": -1, "high": 5,
                                               "coef_div": 10, "coef_si": 10, "coef_se": 10}},
            {"property": "tpsa", "transform": {"type": "double_sigmoid", "low": 20, "high": 140,
                                               "coef_div": 100, "coef_si": 5, "coef_se": 5}},
            {"property": "sa", "transform": {"type": "reverse_sigmoid", "low": 3, "high": 7}},
            *_ALERT_COMPONENTS,
        ],
    },
    "drug_profile": {
        "description": "an oral-drug target profile: QED towards 0.95, MW 350-450, logP 2-4, "
                       "TPSA 60-100, SA towards 1.5; PAINS alerts are infeasible, Brenk alerts "
                       "lower the score. Narrower than drug_like, whose broad windows every "
                       "MOSES-like molecule meets (1,000 prior samples reach 0.989 there)",
        "aggregate": "geometric",
        "component": [
            {"property": "qed", "transform": {"type": "sigmoid", "low": 0.5, "high": 0.95}},
            {"property": "mw", "transform": {"type": "double_sigmoid", "low": 350, "high": 450,
                                             "coef_div": 500, "coef_si": 20, "coef_se": 20}},
            {"property": "logp", "transform": {"type": "double_sigmoid", "low": 2, "high": 4,
                                               "coef_div": 10, "coef_si": 10, "coef_se": 10}},
            {"property": "tpsa", "transform": {"type": "double_sigmoid", "low": 60, "high": 100,
                                               "coef_div": 100, "coef_si": 5, "coef_se": 5}},
            {"property": "sa", "transform": {"type": "reverse_sigmoid", "low": 1.5, "high": 4}},
            *_ALERT_COMPONENTS,
        ],
    },
    "celecoxib_rediscovery": {
        "description": "Tanimoto to celecoxib on unfolded Morgan radius-2 count fingerprints "
                       "(ECFP4 as in GuacaMol/PMO)",
        "component": [{"property": "similarity", "reference": CELECOXIB,
                       "fingerprint": "morgan_counts"}],
    },
}


def preset(name: str) -> Objective:
    """A named objective from :data:`PRESETS`, ``similarity:<SMILES>`` (Morgan r2 bits), or
    ``pmo:<task>``, one of the PMO benchmark's tasks (:data:`molvae.pmo.TASK_NAMES`)."""
    if isinstance(name, str) and name.startswith("pmo:"):
        from . import pmo

        return pmo.objective(name.partition(":")[2])
    if isinstance(name, str) and name.startswith("similarity:"):
        reference = name.partition(":")[2]
        return objective_from_dict({"component": [{"property": "similarity", "reference": reference}]},
                                   source=f"preset {name!r}")
    if name not in PRESETS:
        raise MolvaeError(f"unknown objective preset {name!r}{_suggest(name, list(PRESETS))}; valid: "
                          f"{', '.join(PRESETS)}, similarity:<SMILES>, pmo:<PMO task>, or a path to a .toml file")
    return objective_from_dict(PRESETS[name], source=f"preset {name!r}")


def as_objective(spec: Any, base_dir: str | Path | None = None, source: str = "objective",
                 allow_code: bool = False) -> Objective:
    """An :class:`Objective` from whatever a user or pipeline gives.

    Accepts an Objective, a preset name, a path to a TOML file (relative to ``base_dir``), a
    TOML-shaped dict (``source`` names it in errors), or any callable ``list[str] ->
    list[float]`` (one custom component named ``custom``, scores as returned). ``allow_code``
    lets the ``module:function`` components of a file or dict run (see the module docstring).
    """
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, Mapping):
        return objective_from_dict(spec, source=source, base_dir=base_dir, allow_code=allow_code)
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if isinstance(spec, str) and (text in PRESETS or text.startswith(("similarity:", "pmo:"))):
            return preset(text)
        path = Path(text)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if path.suffix == ".toml" or path.is_file():
            return load_objective(path, allow_code=allow_code)
        return preset(text)  # raises, listing the presets
    if callable(spec):
        return Objective([Component(spec, name="custom")], source=source)
    raise MolvaeError(f"{source}: cannot make an objective from {type(spec).__name__}; give a preset "
                      f"name, a .toml path, a table of components or a function")


def as_multi_objective(spec: Any, base_dir: str | Path | None = None,
                       source: str = "objective", allow_code: bool = False) -> MultiObjective:
    """A :class:`MultiObjective` from a MultiObjective, a mapping name -> objective spec, a list
    of objective specs, or one objective spec whose scored components are split apart."""
    if isinstance(spec, MultiObjective):
        return spec
    if isinstance(spec, Mapping) and not set(spec) & set(_TOP_KEYS):  # name -> objective
        return MultiObjective({str(k): as_objective(v, base_dir, f"{source}: {k}", allow_code)
                               for k, v in spec.items()})
    if isinstance(spec, (list, tuple)):
        return MultiObjective([as_objective(v, base_dir, f"{source}: {i}", allow_code)
                               for i, v in enumerate(spec, 1)])
    return MultiObjective.from_objective(as_objective(spec, base_dir, source, allow_code))
