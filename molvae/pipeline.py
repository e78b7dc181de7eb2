"""TOML pipelines: validate a run file, then run its stages into a resumable run folder.

A pipeline names the stages it runs as TOML sections — ``[data]``, ``[train]``,
``[evaluate]``, ``[sample]``, ``[optimize]``, ``[report]`` — and ``pipelines/reference.toml``
documents every key with its default. Everything is validated before anything runs: an
unknown or misspelt key, a wrong type, a missing file or a bad SMILES is an error naming the
file, the section and the key.

The run folder (``runs/<name>/`` unless ``run_dir`` is set) holds ``config.json`` (the
resolved config: every default a stage derives is filled in), ``run.log``, ``provenance.json``
(versions of molvae, torch, RDKit, CUDA and the device), one sub-folder per stage, and
``report.html``. Each stage folder holds ``stage.json`` (the settings and inputs it ran with)
and, once finished, ``DONE``; re-running skips a finished stage. An interrupted stage resumes:
training from its last checkpoint, optimization from its study and molecules table.

An edited pipeline re-runs what the edit touched: a stage whose settings changed, or whose
inputs changed (a file it reads, the model, or a stage before it that re-runs), is moved to
``<stage>.previous/`` and run again; the log names each change (``objective: 'qed' ->
'logp'``). Stages the edit does not reach are kept. ``force=True`` redoes every stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import tomllib
import traceback
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import MolvaeError

log = logging.getLogger("molvae.pipeline")

STAGES = ("data", "train", "evaluate", "sample", "optimize", "report")


# ---------------------------------------------------------------------------- schema
# One dataclass per section; field defaults are the documented defaults (reference.toml
# repeats them with comments). ``None`` means "not set" / "derive it".


@dataclass
class DataSection:
    input: str = "bundled"              # SMILES file; "bundled" (100k MOSES sample); "moses" (full 1.58M)
    smiles_column: str | None = None
    valid_fraction: float = 0.05
    max_len: int | None = None          # SELFIES tokens; default 100
    keep_stereo: bool = True


@dataclass
class TrainSection:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    latent_dim: int | None = None       # None: the default architecture's
    beta: float | None = None           # final KL weight; None: the default
    max_train_molecules: int | None = None
    patience: int = 3
    model: Any = None                   # table of architecture settings (molvae.model.ModelConfig)


@dataclass
class EvaluateSection:
    n_samples: int = 30000
    reconstruction_molecules: int = 1000
    temperature: float = 1.0


@dataclass
class SampleSection:
    n: int = 1000
    temperature: float = 1.0
    greedy: bool = False


@dataclass
class OptimizeSection:
    objective: Any = "drug_like"        # preset name, path to an objective TOML, or an inline table
    objectives: Any = None              # several objectives (a table of name = objective) -> Pareto front
    budget: int = 1000
    sampler: str | None = None          # None: the benchmark winner (see molvae.optimize)
    batch_size: int | None = None
    start: Any = None                   # SMILES list or a file of SMILES to warm-start from
    donors: Any = None                  # SMILES list or a file: the graph GA's crossover donors (never scored)
    lead: str | None = None
    min_similarity: float | None = None
    scaffold: str | None = None         # SMARTS the optimized molecules must contain
    time_limit: float | None = None     # seconds
    compare_prior: bool = True          # also score the same budget of prior samples
    adapt: str | None = None            # "retrain" (or "retrain:lr=1e-3/..."): fine-tune the model during the search; "none": off; None/"auto": molvae.optimize's default
    adapt_every: int | None = None      # oracle calls between adaptations (default AdaptConfig.every)
    adapt_after_plateau: int | None = None  # start once the best is this old (default AdaptConfig's; 0: at once)


@dataclass
class ReportSection:
    top_n: int = 24
    latent_molecules: int = 2000
    latent_property: str = "qed"


@dataclass
class Pipeline:
    name: str
    path: Path
    run_dir: Path
    seed: int = 0
    device: str = "auto"
    model: str | None = None            # model folder; None: the shipped default (or [train]'s)
    data: DataSection | None = None
    train: TrainSection | None = None
    evaluate: EvaluateSection | None = None
    sample: SampleSection | None = None
    optimize: OptimizeSection | None = None
    report: ReportSection | None = None
    # Whether the objective's module:function components may run: the person running the
    # pipeline says so (molvae run --allow-code), never the file; not part of any stage's settings.
    allow_code: bool = False

    def stages(self) -> list[str]:
        return [s for s in STAGES if getattr(self, s) is not None]

    def to_dict(self, resolve: bool = True) -> dict:
        """The settings as ``config.json`` records them; ``resolve`` replaces each "derive it"
        ``None`` by the value the stage runs with (``None`` left means "off": no lead, no limit)."""
        d = {"name": self.name, "path": str(self.path), "run_dir": str(self.run_dir), "seed": self.seed,
             "device": self.device, "model": self.model}
        for s in STAGES:
            sec = getattr(self, s)
            if sec is not None:
                d[s] = dataclasses.asdict(sec)
        return _resolved(self, d) if resolve else d


SECTIONS = {"data": DataSection, "train": TrainSection, "evaluate": EvaluateSection,
            "sample": SampleSection, "optimize": OptimizeSection, "report": ReportSection}
TOP_KEYS = {"name": str, "run_dir": str, "seed": int, "device": str, "model": str}


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_ok(value: Any, annotation: str) -> bool:
    kinds = [a.strip() for a in str(annotation).split("|")]
    for k in kinds:
        if k == "None" and value is None:
            return True
        if k == "Any":
            return True
        if k == "bool" and isinstance(value, bool):
            return True
        if k == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if k == "str" and isinstance(value, str):
            return True
        if k == "list" and isinstance(value, list):
            return True
    return False


def _section(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise MolvaeError(f"{where}: must be a table ([section]), got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise MolvaeError(f"{where}: unknown key '{key}'{_suggest(key, known)}; "
                              f"valid keys: {', '.join(known)}")
        if not _type_ok(value, known[key].type):
            raise MolvaeError(f"{where}.{key}: expected {known[key].type}, got {value!r}")
        kwargs[key] = float(value) if known[key].type.startswith("float") and isinstance(value, int) else value
    return cls(**kwargs)


def load_pipeline(path: str | os.PathLike, run_dir: str | os.PathLike | None = None,
                  allow_code: bool = False) -> Pipeline:
    """Read and validate a pipeline TOML file; raise MolvaeError naming file, section and key.
    ``allow_code``: let the objective run the ``module:function`` components it names (see
    :mod:`molvae.scoring`; otherwise only modules listed in ``MOLVAE_ALLOW_CODE``)."""
    path = Path(path)
    if not path.exists():
        raise MolvaeError(f"{path}: pipeline file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MolvaeError(f"{path}: not valid TOML ({exc})") from None
    where = str(path)
    for key, value in raw.items():
        if key in SECTIONS:
            continue
        if key not in TOP_KEYS:
            raise MolvaeError(f"{where}: unknown key or section '{key}'"
                              f"{_suggest(key, list(TOP_KEYS) + list(SECTIONS))}")
        if not isinstance(value, TOP_KEYS[key]) or isinstance(value, bool) and TOP_KEYS[key] is int:
            raise MolvaeError(f"{where}: '{key}' must be {TOP_KEYS[key].__name__}, got {value!r}")
    name = raw.get("name", path.stem)
    base = path.parent
    pipe = Pipeline(name=name, path=path,
                    run_dir=Path(run_dir or raw.get("run_dir") or Path("runs") / name),
                    seed=raw.get("seed", 0), device=raw.get("device", "auto"), model=raw.get("model"),
                    allow_code=bool(allow_code))
    for sec, cls in SECTIONS.items():
        if sec in raw:
            setattr(pipe, sec, _section(cls, raw[sec], f"{where} [{sec}]"))
    if not pipe.stages():
        raise MolvaeError(f"{where}: no stage to run; add at least one of {', '.join('[' + s + ']' for s in STAGES)}")
    _check(pipe, base, where)
    return pipe


def _resolve_file(value: str, base: Path) -> Path:
    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    return base / p if (base / p).exists() else p


def _smiles_or_file(value: Any, key: str, where: str, base: Path, each: bool = True) -> Any:
    """A ``[optimize]`` key that takes a SMILES, a list of them or a file: a file resolved
    beside the pipeline; with ``each``, every SMILES of a list must be valid (``donors``
    lists are checked molecule by molecule when the stage runs, bad ones to a rejects file)."""
    from . import chem

    if isinstance(value, list):
        for i, s in enumerate(value):
            if not isinstance(s, str) or (each and chem.standardize(s)[0] is None):
                raise MolvaeError(f"{where} [optimize] {key}[{i}]: {chem.short(s)} is not a valid SMILES")
    elif isinstance(value, str):
        p = _resolve_file(value, base)
        if p.exists():
            return str(p)
        if chem.standardize(value)[0] is None:
            raise MolvaeError(f"{where} [optimize] {key}: {chem.short(value)} is neither a file nor a valid SMILES")
    elif value is not None:
        raise MolvaeError(f"{where} [optimize] {key}: expected a SMILES, a list of SMILES or a file")
    return value


def _check(pipe: Pipeline, base: Path, where: str) -> None:
    """Checks that need the file system or RDKit, done before any stage runs."""
    from . import chem
    from .scoring import as_multi_objective, as_objective

    if pipe.model is not None:
        m = _resolve_file(pipe.model, base)
        if pipe.model != "default" and not m.exists():
            raise MolvaeError(f"{where}: model: folder '{pipe.model}' not found")
        pipe.model = None if pipe.model == "default" else str(m)
    if pipe.data is not None and pipe.data.input not in ("bundled", "moses"):
        p = _resolve_file(pipe.data.input, base)
        if not p.exists():
            raise MolvaeError(f"{where} [data] input: file '{pipe.data.input}' not found")
        pipe.data.input = str(p)
    if pipe.train is not None and pipe.data is None:
        raise MolvaeError(f"{where} [train]: needs a [data] section to train on")
    if pipe.train is not None and pipe.model is not None:
        raise MolvaeError(f"{where}: 'model' and [train] both set; a trained pipeline uses its own model")
    for key in ("epochs", "batch_size"):
        if pipe.train is not None and getattr(pipe.train, key) < 1:
            raise MolvaeError(f"{where} [train] {key}: must be >= 1")
    if pipe.train is not None and pipe.train.model is not None:
        from .model import ModelConfig
        if not isinstance(pipe.train.model, dict):
            raise MolvaeError(f"{where} [train] model: expected a table of ModelConfig settings")
        known = {f.name for f in fields(ModelConfig)} - {"vocab_size", "seq_len"}
        for key in pipe.train.model:
            if key not in known:
                raise MolvaeError(f"{where} [train] model: unknown key '{key}'{_suggest(key, known)}")
    for sec, key in (("evaluate", "n_samples"), ("sample", "n"), ("optimize", "budget")):
        s = getattr(pipe, sec)
        if s is not None and getattr(s, key) < 1:
            raise MolvaeError(f"{where} [{sec}] {key}: must be >= 1")
    opt = pipe.optimize
    if opt is not None:
        try:
            if opt.objectives:
                as_multi_objective(opt.objectives, base_dir=base, source=f"{where} [optimize] objectives",
                                   allow_code=pipe.allow_code)
            else:
                as_objective(opt.objective, base_dir=base, source=f"{where} [optimize] objective",
                             allow_code=pipe.allow_code)
        except MolvaeError as exc:
            msg = str(exc)
            raise MolvaeError(msg if str(where) in msg else f"{where} [optimize] objective: {msg}") from None
        if opt.lead is not None and chem.standardize(opt.lead)[0] is None:
            raise MolvaeError(f"{where} [optimize] lead: '{opt.lead}' is not a valid SMILES")
        if opt.scaffold is not None:
            from rdkit import Chem
            if Chem.MolFromSmarts(opt.scaffold) is None:
                raise MolvaeError(f"{where} [optimize] scaffold: '{opt.scaffold}' is not a valid SMARTS")
        opt.start = _smiles_or_file(opt.start, "start", where, base)
        opt.donors = _smiles_or_file(opt.donors, "donors", where, base, each=False)
        if isinstance(opt.objective, str) and (base / opt.objective).exists():
            opt.objective = str(base / opt.objective)
        if opt.min_similarity is not None and not 0 <= opt.min_similarity <= 1:
            raise MolvaeError(f"{where} [optimize] min_similarity: must be in [0, 1]")
        _check_adapt(opt, where)


def _check_adapt(opt: OptimizeSection, where: str) -> None:
    from .optimize.adapt import ADAPT_CHOICES, is_auto

    if opt.adapt is not None and opt.adapt.lower().partition(":")[0] not in ADAPT_CHOICES:
        raise MolvaeError(f"{where} [optimize] adapt: '{opt.adapt}' is not one of {', '.join(ADAPT_CHOICES)}"
                          f"{_suggest(opt.adapt.lower(), ADAPT_CHOICES)}")
    for key, low in (("adapt_every", 1), ("adapt_after_plateau", 0)):
        value = getattr(opt, key)
        if value is not None and value < low:
            raise MolvaeError(f"{where} [optimize] {key}: must be >= {low}")
    if opt.objectives and not is_auto(opt.adapt) and opt.adapt.lower() != "none":
        raise MolvaeError(f"{where} [optimize] adapt: model adaptation searches one objective; give "
                          "objective instead of objectives, or remove adapt")
    try:
        config = _adapt_of(opt)
    except MolvaeError as exc:
        raise MolvaeError(f"{where} [optimize] adapt: {exc}") from None
    if config is None:
        for key in ("adapt_every", "adapt_after_plateau", "donors"):
            if getattr(opt, key) is not None:
                raise MolvaeError(f"{where} [optimize] {key}: set, but this search does not adapt; add "
                                  f"adapt = \"retrain\" or remove {key}")
    elif opt.donors is not None and config.graph == 0:
        raise MolvaeError(f"{where} [optimize] donors: set, but this search makes no graph children "
                          "(adapt setting graph = 0) to cross them with; remove donors or graph=0")


def _adapt_of(opt: OptimizeSection):
    """The AdaptConfig the stage's search will run with (None: it does not adapt)."""
    from .optimize import DEFAULT_MULTI_SAMPLER, DEFAULT_SAMPLER
    from .optimize.adapt import adapt_config, auto_adapts, is_auto

    multi = bool(opt.objectives)
    sampler = (opt.sampler or (DEFAULT_MULTI_SAMPLER if multi else DEFAULT_SAMPLER)).lower()
    if is_auto(opt.adapt) and not auto_adapts(sampler, multi, 1, opt.lead is not None):
        return None
    return adapt_config(opt.adapt, opt.adapt_every, sampler, multi, 1, opt.adapt_after_plateau,
                        lead=opt.lead is not None)


# ---------------------------------------------------------------------------- settings used


def _resolved(pipe: Pipeline, d: dict) -> dict:
    """Fill in the defaults a stage derives, so config.json (and the report) show the value
    each setting had, not ``None``. Settings left ``None`` mean "off" (no lead, no time limit)."""
    if d.get("model") is None:
        from .model import default_model_dir
        d["model"] = str(pipe.run_dir / "train") if pipe.train is not None else str(default_model_dir())
    if "data" in d and d["data"]["max_len"] is None:
        from .data import DEFAULT_MAX_LEN
        d["data"]["max_len"] = DEFAULT_MAX_LEN
    if "train" in d:
        from .model import ModelConfig
        t = d["train"]
        arch = {f.name: f.default for f in fields(ModelConfig) if f.name not in ("vocab_size", "seq_len")}
        arch.pop("kl_anneal_steps")  # derived by TrainConfig from the planned steps unless set
        arch.update(t["model"] or {})
        if t["latent_dim"] is not None:
            arch["latent_dim"] = t["latent_dim"]
        if t["beta"] is not None:
            arch["beta_max"] = t["beta"]
        t["latent_dim"], t["beta"], t["model"] = arch["latent_dim"], arch["beta_max"], arch
    if "optimize" in d:
        from . import optimize as opt_mod
        o = d["optimize"]
        multi = bool(o["objectives"])
        if multi:
            o["objective"] = None  # ignored when several objectives are given
        if o["sampler"] is None:
            o["sampler"] = opt_mod.DEFAULT_MULTI_SAMPLER if multi else opt_mod.DEFAULT_SAMPLER
        if o["batch_size"] is None:
            o["batch_size"] = opt_mod.DEFAULT_BATCH_SIZE
        if o["lead"] is not None and o["min_similarity"] is None:
            o["min_similarity"] = opt_mod.DEFAULT_SIMILARITY
        if multi:
            o["compare_prior"] = False  # the prior baseline is single-objective only
        config = _adapt_of(pipe.optimize)
        if o["donors"] is None:
            del o["donors"]  # left out, as run folders made before the key existed
        elif config is not None:
            from .optimize.adapt import with_user_donors
            config = with_user_donors(config)
        if config is None:
            # Off: left out of the settings, so run folders made before the key existed (and
            # their stage hashes) stay valid.
            del o["adapt"], o["adapt_every"], o["adapt_after_plateau"]
        else:
            from .optimize.adapt import is_auto
            # As written ("retrain:lr=1e-3"), or "auto" resolved to what the stage ran with.
            o["adapt"] = config.method if is_auto(o["adapt"]) else o["adapt"].lower()
            o["adapt_every"] = config.every
            o["adapt_after_plateau"] = config.after_plateau or 0
            # Every setting the run will use, defaults included: a molvae whose defaults
            # changed makes the stage stale rather than complete with what it no longer does.
            o["adapt_settings"] = config.settings()
    return d


# ---------------------------------------------------------------------------- stale stages
# Each stage folder holds ``stage.json``: the settings it ran with, its inputs (the run ids of
# the stages it reads, hashes of the files and model it reads) and its own run id. A stage
# whose settings or inputs differ from the pipeline's now is stale: it is moved to
# ``<stage>.previous/`` and re-run, and so is every stage that reads it. config.json is written
# only after that, so the folder never holds results made with settings it does not record.

STAGE_FILE = "stage.json"
#: The stages whose outputs each stage reads (the report reads them all).
DEPENDS = {"data": (), "train": ("data",), "evaluate": ("data", "train"), "sample": ("data", "train"),
           "optimize": ("train",), "report": STAGES[:-1]}
_USES_MODEL = ("evaluate", "sample", "optimize", "report")
_RERUN = "(re-running)"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _model_hash(folder: Path) -> str:
    """Hash of what load_model reads (weights and model.json), not of logs beside them."""
    from .model import CONFIG_FILE, WEIGHTS_FILE

    files = [folder / name for name in (CONFIG_FILE, WEIGHTS_FILE) if (folder / name).is_file()]
    return _file_hash_many(files) if files else "missing"


def _file_hash_many(paths: list[Path]) -> str:
    return hashlib.sha256("".join(f"{p.name}:{_file_hash(p)}" for p in paths).encode()).hexdigest()[:16]


def _files_in(value: Any, base: Path) -> list[Path]:
    """Existing files named by a setting (a path string, or strings inside lists and tables)."""
    if isinstance(value, str):
        p = _resolve_file(value, base)
        return [p] if value and p.is_file() else []
    if isinstance(value, dict):
        return [f for v in value.values() for f in _files_in(v, base)]
    if isinstance(value, list):
        return [f for v in value for f in _files_in(v, base)]
    return []


def _stage_settings(pipe: Pipeline, cfg: dict, stage: str) -> dict:
    """The settings whose change makes a stage's results stale (the device does not)."""
    out = {"seed": cfg["seed"], **dict(_flat(cfg[stage]))}
    if stage == "report":
        out["name"] = cfg["name"]
    return out


def _flat(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            rows.extend(_flat(v, f"{prefix}{k}."))
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _static_inputs(pipe: Pipeline, cfg: dict, stage: str) -> dict:
    """Inputs from outside the run folder: files named by the stage's settings, the model."""
    base = pipe.path.parent
    inputs = {}
    for f in _files_in(cfg[stage], base):
        inputs[f"file {f.resolve()}"] = _file_hash(f)
    if stage in _USES_MODEL and pipe.train is None:
        inputs["model weights"] = _model_hash(Path(cfg["model"]))
    return inputs


def _read_record(d: Path) -> dict | None:
    try:
        rec = json.loads((d / STAGE_FILE).read_text())
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def _changes(old: dict, new: dict, what: str) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new), key=lambda k: (k not in new, list(new).index(k) if k in new else 0)):
        if old.get(k, "(absent)") != new.get(k, "(absent)"):
            if what == "settings":
                out.append(f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}")
            elif k.startswith("stage "):
                out.append(f"{k} {'re-runs' if new.get(k) == _RERUN else 're-ran'}")
            else:
                out.append(f"{k} changed" if k in old and k in new else f"{k} {'added' if k in new else 'removed'}")
    return out


def _retire(run: Path, stage: str) -> Path:
    """Move a stale stage's folder (and the report's files at the top) to <stage>.previous/."""
    target = run / f"{stage}.previous"
    if target.exists():
        shutil.rmtree(target)
    if (run / stage).exists():
        os.replace(run / stage, target)
    if stage == "report":
        target.mkdir(exist_ok=True)
        for name in ("report.html", "latent.npz"):
            if (run / name).exists():
                os.replace(run / name, target / name)
    return target


def _plan_stages(pipe: Pipeline, cfg: dict, old_cfg: dict | None) -> dict[str, dict]:
    """Retire stale stages before anything runs; return each stage's settings and static inputs.

    A finished stage from before stage.json existed is judged by the config.json it ran with.
    """
    run = pipe.run_dir
    plans: dict[str, dict] = {}
    run_ids: dict[str, str] = {}
    raw = pipe.to_dict(resolve=False)
    for stage in STAGES:
        d = run / stage
        if getattr(pipe, stage) is None:
            if d.exists() and (_done(d) or (d / STAGE_FILE).exists()):
                log.warning("[%s] is no longer in the pipeline; its results moved to %s/", stage,
                            _retire(run, stage).name)
            continue
        plan = {"settings": _stage_settings(pipe, cfg, stage), "inputs": _static_inputs(pipe, cfg, stage)}
        plans[stage] = plan
        deps = {f"stage {dep}": run_ids.get(dep, _RERUN) for dep in DEPENDS[stage] if dep in plans}
        inputs = {**plan["inputs"], **deps}
        rec = _read_record(d)
        if rec is None and _done(d):
            # Finished by a molvae that wrote no stage.json: its config.json (unresolved
            # settings) is the record of what it ran with.
            old = old_cfg or {}
            why = _changes({"seed": old.get("seed"), **dict(_flat(old.get(stage) or {}))},
                           {"seed": raw["seed"], **dict(_flat(raw[stage]))}, "settings")
            moved = [f"{k} re-runs" for k, v in deps.items() if v == _RERUN]
            rec = {"settings": plan["settings"], "inputs": inputs, "run_id": uuid.uuid4().hex[:12]}
            if not (why or moved):
                _write_json(d / STAGE_FILE, rec)
        elif rec is None:
            continue  # never started, or started before stage.json existed: it resumes
        else:
            why = _changes(rec.get("settings", {}), plan["settings"], "settings")
            moved = _changes(rec.get("inputs", {}), inputs, "inputs")
        if why or moved:
            detail = "; ".join(filter(None, [why and "settings changed: " + "; ".join(why),
                                             moved and "inputs changed: " + "; ".join(moved)]))
            log.warning("[%s] %s; re-running it (previous results moved to %s/)", stage, detail,
                        _retire(run, stage).name)
        elif _done(d):
            run_ids[stage] = rec.get("run_id", "")
        else:
            run_ids[stage] = _RERUN  # resumes, and then downstream stages must follow
    return plans


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- running


def provenance(device: str = "auto") -> dict:
    """Versions and hardware, recorded at the start of every run."""
    import rdkit
    import torch

    from . import __version__
    from .model import resolve_device

    dev = resolve_device(device)
    return {
        "molvae": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "rdkit": rdkit.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _done(stage_dir: Path) -> bool:
    return (stage_dir / "DONE").exists()


def _mark_done(stage_dir: Path, info: dict) -> None:
    tmp = stage_dir / "DONE.tmp"
    tmp.write_text(json.dumps(info, indent=1, default=str))
    os.replace(tmp, stage_dir / "DONE")


@dataclass
class RunResult:
    name: str
    path: str
    status: str                      # "ok", "failed", "invalid"
    seconds: float = 0.0
    error: str = ""
    run_dir: str = ""
    stages: list = field(default_factory=list)


def run_pipeline(pipe: Pipeline, force: bool = False, progress: bool = True) -> dict:
    """Run (or resume) every stage of a validated pipeline; returns a dict of results."""
    run = pipe.run_dir
    if force and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("molvae")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        prov = provenance(pipe.device)
        log.info("pipeline %s (%s) -> %s on %s", pipe.name, pipe.path, run, prov["device"])
        cfg = pipe.to_dict()
        try:
            old_cfg = json.loads((run / "config.json").read_text())
        except (OSError, ValueError):
            old_cfg = None
        plans = _plan_stages(pipe, cfg, old_cfg)  # stale stages are moved aside first ...
        _write_json(run / "config.json", cfg)     # ... so config.json describes every result here
        _write_json(run / "provenance.json", prov)
        results: dict[str, Any] = {}
        for stage in pipe.stages():
            d = run / stage
            d.mkdir(exist_ok=True)
            if _done(d):
                log.info("[%s] already complete, skipping (use --force to redo)", stage)
                results[stage] = json.loads((d / "DONE").read_text())
                continue
            if _read_record(d) is None:
                deps = {f"stage {dep}": (_read_record(run / dep) or {}).get("run_id", "")
                        for dep in DEPENDS[stage] if dep in plans}
                _write_json(d / STAGE_FILE, {"settings": plans[stage]["settings"],
                                             "inputs": {**plans[stage]["inputs"], **deps},
                                             "run_id": uuid.uuid4().hex[:12]})
            log.info("[%s] running", stage)
            t0 = time.perf_counter()
            info = STAGE_FUNCS[stage](pipe, d, results, progress) or {}
            info["seconds"] = round(time.perf_counter() - t0, 2)
            _mark_done(d, info)
            results[stage] = info
            log.info("[%s] done in %.1f s", stage, info["seconds"])
        return results
    finally:
        root.removeHandler(handler)
        handler.close()


def _model_path(pipe: Pipeline) -> str | None:
    if pipe.train is not None:
        return str(pipe.run_dir / "train")
    return pipe.model


def _stage_data(pipe: Pipeline, d: Path, results: dict, progress: bool) -> dict:
    from .data import BUNDLED, prepare

    sec = pipe.data
    if sec.input == "moses":
        from .data import fetch_moses
        src = fetch_moses()["train"]
    else:
        src = BUNDLED["train"] if sec.input == "bundled" else Path(sec.input)
    prepared = prepare(src, d, seed=pipe.seed, valid_fraction=sec.valid_fraction, max_len=sec.max_len,
                       keep_stereo=sec.keep_stereo, smiles_column=sec.smiles_column, progress=progress)
    s = prepared.summary
    log.info("[data] rows in %d = kept %d + duplicates %d + rejected %d", s["rows_in"], s["kept"],
             s["duplicates"], s["rejected"])
    return {k: s[k] for k in ("rows_in", "kept", "duplicates", "rejected", "train", "valid")}


def _stage_train(pipe: Pipeline, d: Path, results: dict, progress: bool) -> dict:
    from .train import TrainConfig, train

    sec = pipe.train
    overrides = dict(sec.model or {})
    if sec.latent_dim is not None:
        overrides["latent_dim"] = sec.latent_dim
    if sec.beta is not None:
        overrides["beta_max"] = sec.beta
    cfg = TrainConfig(epochs=sec.epochs, batch_size=sec.batch_size, lr=sec.lr, seed=pipe.seed,
                      device=pipe.device, patience=sec.patience,
                      max_train_molecules=sec.max_train_molecules, model=overrides)
    resume = (d / "checkpoint").exists() or any(d.glob("checkpoint*"))
    summary = train(pipe.run_dir / "data", d, cfg, resume=resume)
    return {"model": str(d), "resumed": resume, **{k: v for k, v in dict(summary).items()
                                                   if isinstance(v, (int, float, str))}}


def _stage_evaluate(pipe: Pipeline, d: Path, results: dict, progress: bool) -> dict:
    from .evaluate import evaluate_model
    from .model import load_model

    sec = pipe.evaluate
    model = load_model(_model_path(pipe), device=pipe.device)
    train_smiles = _training_smiles(pipe)
    metrics = evaluate_model(model, n_samples=sec.n_samples, train=train_smiles, seed=pipe.seed,
                             temperature=sec.temperature, reconstruction_molecules=sec.reconstruction_molecules,
                             out_dir=d)
    return {"metrics": str(d / "metrics.json"), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def _training_smiles(pipe: Pipeline) -> list[str]:
    from .data import bundled, load_prepared

    if pipe.data is not None:
        return load_prepared(pipe.run_dir / "data").train_smiles
    return bundled("train")


def _stage_sample(pipe: Pipeline, d: Path, results: dict, progress: bool) -> dict:
    from .generate import sample
    from .model import load_model

    sec = pipe.sample
    model = load_model(_model_path(pipe), device=pipe.device)
    table = sample(model, sec.n, greedy=sec.greedy, temperature=sec.temperature, seed=pipe.seed,
                   training=set(_training_smiles(pipe)), progress=progress)
    table.to_csv(d / "samples.csv.tmp", index=False)
    os.replace(d / "samples.csv.tmp", d / "samples.csv")
    valid = int(table["valid"].sum())
    return {"samples": str(d / "samples.csv"), "n": len(table), "valid": valid / len(table),
            "unique": int(table["unique"].sum()) / max(valid, 1)}


def _stage_optimize(pipe: Pipeline, d: Path, results: dict, progress: bool) -> dict:
    from .model import load_model
    from .optimize import optimize, sample_prior_baseline
    from .scoring import as_multi_objective, as_objective

    sec = pipe.optimize
    base = pipe.path.parent
    model = load_model(_model_path(pipe), device=pipe.device)
    objective = (as_multi_objective(sec.objectives, base_dir=base, allow_code=pipe.allow_code) if sec.objectives
                 else as_objective(sec.objective, base_dir=base, allow_code=pipe.allow_code))
    kwargs = dict(budget=sec.budget, seed=pipe.seed, out_dir=d, start=sec.start, donors=sec.donors, lead=sec.lead,
                  similarity_threshold=sec.min_similarity, scaffold=sec.scaffold,
                  time_limit=sec.time_limit, progress=progress)
    if sec.sampler:
        kwargs["sampler"] = sec.sampler
    if sec.batch_size:
        kwargs["batch_size"] = sec.batch_size
    kwargs.update(adapt=sec.adapt, adapt_every=sec.adapt_every, adapt_after_plateau=sec.adapt_after_plateau)
    table = optimize(model, objective, **kwargs)
    info = {"molecules": str(d / "molecules.csv"), "best": float(table["score"].max()) if len(table) and "score" in table else None}
    summary_path = d / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        info.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    if sec.compare_prior and not sec.objectives:
        prior_dir = d / "prior"
        prior = sample_prior_baseline(model, objective, budget=sec.budget, seed=pipe.seed, out_dir=prior_dir)
        info["prior_best"] = float(prior["score"].max()) if len(prior) else None
        top_n = min(10, len(table))
        info["optimized_top10_mean"] = float(table["score"].nlargest(top_n).mean()) if top_n else None
        log.info("[optimize] best optimized %.4f vs best of %d prior samples %.4f",
                 info["best"], sec.budget, info["prior_best"])
    return info


def _stage_report(pipe: Pipeline, d: Path, results: dict, progress: bool) -> dict:
    import numpy as np
    import pandas as pd

    from . import chem
    from .generate import pca_map
    from .model import load_model
    from .report import report_from_run_dir

    sec = pipe.report
    prop = sec.latent_property
    if prop not in chem.PROPERTIES:
        raise MolvaeError(f"{pipe.path} [report] latent_property: unknown property "
                          f"'{prop}'{_suggest(prop, chem.PROPERTIES)}")
    run = pipe.run_dir
    rng = np.random.RandomState(pipe.seed)
    everything = _training_smiles(pipe)
    train = [everything[i] for i in rng.permutation(len(everything))[: sec.latent_molecules]]
    # One pass of RDKit over these training molecules colours the latent map and draws the
    # report's property histograms (it was two passes, over 2,000 and 5,000 molecules).
    log.info("[report] properties of %d training molecules", len(train))
    names = tuple(dict.fromkeys((*chem.MAIN_PROPERTIES, prop)))
    train_props = chem.properties_many(train, names=names, progress=progress)
    train_props.insert(0, "smiles", train)
    train_props.to_csv(d / "training_properties.csv.tmp", index=False)
    os.replace(d / "training_properties.csv.tmp", d / "training_properties.csv")

    # The latent map: training, generated and optimized molecules encoded by the run's model
    # and projected on the first two principal axes, coloured by `prop`.
    smiles, labels, values = list(train), ["training"] * len(train), list(train_props[prop])
    for label, path in (("generated", run / "sample" / "samples.csv"),
                        ("optimized", run / "optimize" / "molecules.csv")):
        if not path.exists():
            continue
        t = pd.read_csv(path, keep_default_na=False)
        if label == "optimized" and "score" in t:
            t = t.sort_values("score", ascending=False)
        t = t[t["smiles"] != ""].head(sec.latent_molecules // 2)
        if label == "generated" and prop in t.columns:  # sample() already computed it
            vals = pd.to_numeric(t[prop], errors="coerce").tolist()
        else:
            vals = chem.properties_many(t["smiles"].tolist(), names=(prop,), progress=False)[prop].tolist()
        smiles += t["smiles"].tolist()
        labels += [label] * len(t)
        values += vals
    if len(smiles) >= 3:
        log.info("[report] latent map: encoding %d molecules", len(smiles))
        model = load_model(_model_path(pipe), device=pipe.device)
        coords, ok = pca_map(model, smiles)
        np.savez(run / "latent.npz", coords=coords,
                 values=np.array([v for v, good in zip(values, ok) if good], dtype=float),
                 labels=np.array([lab for lab, good in zip(labels, ok) if good], dtype=str),
                 property=np.array(prop))
    log.info("[report] writing report.html")
    path = report_from_run_dir(run, top_n=sec.top_n, progress=progress)
    return {"report": str(path)}


STAGE_FUNCS = {"data": _stage_data, "train": _stage_train, "evaluate": _stage_evaluate,
               "sample": _stage_sample, "optimize": _stage_optimize, "report": _stage_report}


def _run_one(path: str, force: bool, progress: bool, run_dir: str | None = None,
             allow_code: bool = False) -> RunResult:
    t0 = time.perf_counter()
    try:
        pipe = load_pipeline(path, run_dir, allow_code=allow_code)
    except MolvaeError as exc:
        return RunResult(Path(path).stem, path, "invalid", time.perf_counter() - t0, str(exc))
    try:
        run_pipeline(pipe, force=force, progress=progress)
        return RunResult(pipe.name, path, "ok", time.perf_counter() - t0, run_dir=str(pipe.run_dir),
                         stages=pipe.stages())
    except MolvaeError as exc:
        log.error("%s: %s", path, exc)
        return RunResult(pipe.name, path, "failed", time.perf_counter() - t0, str(exc), str(pipe.run_dir))
    except Exception as exc:  # a bug in a stage must not stop the other pipelines
        log.error("%s: %s", path, traceback.format_exc())
        return RunResult(pipe.name, path, "failed", time.perf_counter() - t0,
                         f"{type(exc).__name__}: {exc}", str(pipe.run_dir))


def run_many(paths: list[str], force: bool = False, jobs: int = 1, progress: bool = True,
             allow_code: bool = False) -> list[RunResult]:
    """Run several pipelines, in turn or ``jobs`` at a time; one failure does not stop the rest.
    ``allow_code``: see :func:`load_pipeline`."""
    if jobs <= 1 or len(paths) <= 1:
        return [_run_one(p, force, progress, allow_code=allow_code) for p in paths]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: each pipeline gets a clean interpreter (torch threads and forks do not mix).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        n = len(paths)
        return list(pool.map(_run_one, paths, [force] * n, [False] * n, [None] * n, [allow_code] * n))


def format_summary(results: list[RunResult]) -> str:
    width = max([len(r.name) for r in results] + [8])
    lines = [f"{'pipeline':<{width}}  {'status':<8} {'time':>8}  run folder / error"]
    for r in results:
        detail = r.run_dir if r.status == "ok" else r.error.splitlines()[0] if r.error else ""
        lines.append(f"{r.name:<{width}}  {r.status:<8} {r.seconds:>7.1f}s  {detail}")
    return "\n".join(lines)
