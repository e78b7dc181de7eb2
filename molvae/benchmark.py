"""`molvae bench optimize`: latent-space optimizers against prior sampling on standard tasks.

Every task runs each sampler and the prior-sampling baseline (:func:`molvae.optimize.
sample_prior_baseline`, the same budget of molecules decoded from z ~ N(0, I)) for several
seeds and budgets, and reports PMO's AUC of the running top-10 mean (Gao et al. 2022) with
top-1, top-10 mean and wall time. Tasks:

``qed``           RDKit QED (saturates at about 0.948).
``plogp``         penalized logP = Crippen logP − SA − max(0, largest ring − 6), unnormalized
                  (the GCPN / MolDQN / LIMO variant); molecules over 38 heavy atoms (the
                  ZINC250k maximum) are infeasible, because the score grows without bound
                  with carbon chains. Scores are raw, so its "AUC" is not in [0, 1].
``drug_profile``  the ``drug_profile`` preset: an oral-drug target profile, windows on MW
                  350-450, logP 2-4, TPSA 60-100, with QED and SA desirabilities, no PAINS
                  (``drug_like``'s broad windows are met by nearly every prior sample, so
                  it cannot tell optimizers apart; it remains a task, not a default).
``drug_like``     the ``drug_like`` preset: broad windows on MW, logP, TPSA, SA and QED.
``celecoxib``     Tanimoto to celecoxib on Morgan radius-2 count fingerprints (PMO's oracle).
``plogp_sim0.4``, ``plogp_sim0.6``
                  similarity-constrained improvement (JT-VAE's protocol): from each of the
                  100 encodable bundled molecules with the lowest penalized logP, optimize in
                  a trust region around it with a small budget, keeping molecules with
                  Tanimoto (Morgan r2, 2048 bits) >= 0.4 or 0.6 to it. Success = a molecule
                  other than the start, above the floor, with higher penalized logP;
                  improvement = best penalized logP found − the start's. Our pLogP is the
                  unnormalized variant under the 38-heavy-atom cap, so the JT-VAE figures
                  (normalized variant) compare in kind, not exactly.

Suites: ``suite="pmo"`` (``molvae bench optimize --suite pmo``) runs instead the 20 PMO tasks
that need no downloaded classifier (:mod:`molvae.pmo`: TDC's oracle definitions) and writes,
per task and summed over the tasks, AUC top-10 beside the published rows of
:data:`molvae.pmo.PUBLISHED` (those are at 10,000 calls), wall time and the oracle's cost.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import chem, pmo
from .errors import MolvaeError
from .optimize import DEFAULT_BATCH_SIZE, DEFAULT_COMPONENTS, DEFAULT_SAMPLER, model_fingerprint, optimize, \
    sample_prior_baseline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    objective: str               # a scoring preset
    description: str
    similarity: float | None = None   # set for the similarity-constrained tasks


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("qed", "qed", "QED (RDKit)"),
    Task("plogp", "penalized_logp", "penalized logP (unnormalized), <= 38 heavy atoms"),
    Task("plogp_sim0.4", "penalized_logp", "pLogP improvement at similarity >= 0.4", 0.4),
    Task("plogp_sim0.6", "penalized_logp", "pLogP improvement at similarity >= 0.6", 0.6),
    Task("drug_profile", "drug_profile", "oral-drug profile (MW, logP, TPSA windows; QED, SA), no PAINS"),
    Task("drug_like", "drug_like", "broad drug-likeness windows (MW, logP, TPSA, SA, QED), no PAINS"),
    Task("celecoxib", "celecoxib_rediscovery", "Tanimoto to celecoxib (ECFP4 counts)"),
)}

#: Task lists run with ``suite=``; their names are scored by :func:`molvae.pmo.oracle`.
SUITES: dict[str, tuple[str, ...]] = {"pmo": pmo.TASK_NAMES}

RUN_COLUMNS = ["task", "method", "budget", "seed", "oracle_calls", "top1", "top10_mean", "auc_top10",
               "wall_s", "calls_per_s", "overhead_fraction", "decode_s", "score_s", "sampler_s",
               "stop_reason"]


@dataclass
class BenchResult:
    runs: pd.DataFrame          # one row per (task, method, budget, seed)
    table: pd.DataFrame         # mean and sd over seeds
    constrained: pd.DataFrame   # one row per (threshold, sampler, seed)
    markdown: str


def _penalized_logp(smiles: str) -> float:
    mol = chem.to_mol(smiles)
    return chem.penalized_logp(mol) if mol is not None else math.nan


def lowest_plogp_molecules(model, n: int = 100) -> list[str]:
    """The ``n`` bundled training molecules with the lowest penalized logP that the model can
    encode (JT-VAE took the 800 lowest of ZINC's test set). The pLogP of all 100k molecules is
    computed once and cached."""
    from .data import bundled, cache_dir

    cache = cache_dir() / "bench" / "bundled_train_plogp.csv"
    if cache.exists():
        table = pd.read_csv(cache)
    else:
        smiles = bundled("train")
        values = chem.parallel_map(_penalized_logp, smiles, desc="penalized logP")
        table = pd.DataFrame({"smiles": smiles, "penalized_logp": values})
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, cache)
    table = table.dropna().sort_values("penalized_logp", kind="stable")
    chosen: list[str] = []
    candidates = table["smiles"].tolist()
    for i in range(0, len(candidates), 4 * n):
        chunk = candidates[i:i + 4 * n]
        _, _, ok, _ = model.try_encode(chunk)
        chosen.extend(s for s, good in zip(chunk, ok) if good)
        if len(chosen) >= n:
            break
    return chosen[:n]


def _summary_row(task: str, method: str, budget: int, seed: int, s: dict) -> dict:
    t = s.get("time", {})
    return {"task": task, "method": method, "budget": budget, "seed": seed,
            "oracle_calls": s["oracle_calls"], "top1": s["top1"], "top10_mean": s["top10_mean"],
            "auc_top10": s["auc_top10"], "wall_s": s["wall_s"], "calls_per_s": s["calls_per_s"],
            "overhead_fraction": s["overhead_fraction"], "decode_s": t.get("decode_s"),
            "score_s": t.get("score_s"), "sampler_s": t.get("sampler_s"), "stop_reason": s["stop_reason"]}


def constrained_improvement(model, starts: Sequence[str], threshold: float, budget: int, sampler: str,
                            seed: int = 0, batch_size: int = 32, n_components: int | None = None,
                            time_limit: float | None = None, progress: bool = True) -> pd.DataFrame:
    """For each start molecule: optimize penalized logP around it at similarity >= ``threshold``.

    Returns one row per start: ``start, start_plogp, best, best_plogp, similarity,
    improvement`` (NaN when nothing feasible and different from the start was found),
    ``success``, ``oracle_calls``, ``wall_s``.
    """
    from .progress import progress as bar

    rows = []
    for smiles in bar(list(starts), desc=f"sim>={threshold} {sampler}", disable=not progress):
        start = chem.standardize(smiles)[0]
        base = _penalized_logp(start)
        t = time.perf_counter()
        table = optimize(model, "penalized_logp", budget=budget, sampler=sampler, seed=seed,
                         batch_size=batch_size, lead=start, similarity_threshold=threshold,
                         n_components=n_components, time_limit=time_limit, progress=False)
        wall = time.perf_counter() - t
        found = table[table["feasible"] & (table["smiles"] != start)]
        if len(found):
            best = found.iloc[int(found["penalized_logp_raw"].to_numpy().argmax())]
            rows.append({"start": start, "start_plogp": base, "best": best["smiles"],
                         "best_plogp": best["penalized_logp_raw"],
                         "similarity": best["lead_similarity_raw"],
                         "improvement": best["penalized_logp_raw"] - base,
                         "success": bool(best["penalized_logp_raw"] > base),
                         "oracle_calls": len(table), "wall_s": wall})
        else:
            rows.append({"start": start, "start_plogp": base, "best": None, "best_plogp": math.nan,
                         "similarity": math.nan, "improvement": math.nan, "success": False,
                         "oracle_calls": len(table), "wall_s": wall})
    return pd.DataFrame(rows)


def _split_method(method: str) -> tuple[str, str]:
    """``"cmaes+retrain"`` -> ``("cmaes", "retrain")``; a plain sampler adapts nothing.
    ``"cmaes+retrain:lr=1e-3"`` keeps the settings in the adapt spec (checked here, before
    any run)."""
    from .optimize import ADAPT_METHODS, SAMPLERS
    from .optimize.adapt import parse_adapt

    sampler, _, adapt = str(method).partition("+")
    adapt = adapt or "none"
    if sampler not in SAMPLERS or adapt.partition(":")[0] not in ADAPT_METHODS:
        raise MolvaeError(f"bench optimize: unknown method {method!r}; give a sampler ({', '.join(SAMPLERS)}), "
                          f"optionally with model adaptation as SAMPLER+ADAPT ({', '.join(ADAPT_METHODS[1:])}), "
                          "e.g. cmaes+retrain")
    parse_adapt(adapt)  # its settings, if any, are checked before any run
    return sampler, adapt


def _adapt_settings(method: str) -> dict | None:
    """The adaptation settings a method runs with (None: it adapts nothing). A runs file
    records them, so a run made under other defaults is never reused as this method's."""
    if method == "prior":
        return None
    from .optimize.adapt import adapt_config

    sampler, adapt = _split_method(method)
    config = adapt_config(adapt, None, sampler, False, 1)
    return None if config is None else config.settings()


#: Seeds and oracle calls per run beyond which a benchmark would run for months: PMO's own
#: table is 3-5 seeds of 10,000 calls.
MAX_SEEDS = 100
MAX_BUDGET = 1_000_000


def benchmark_optimize(model, tasks: Sequence[str] | None = None,
                       samplers: Sequence[str] = ("tpe", "cmaes", "gp", "random"), seeds: int = 3,
                       budgets: Sequence[int] = (1000, 10000), batch_size: int = DEFAULT_BATCH_SIZE,
                       n_components: int | None = None, constrained_molecules: int = 100,
                       constrained_budget: int = 100, constrained_samplers: Sequence[str] | None = None,
                       time_limit: float | None = None, out: str | os.PathLike | None = None,
                       progress: bool = True, suite: str | None = None, jobs: int = 1) -> BenchResult:
    """Run the benchmark; write ``out`` (Markdown) and the per-run CSV beside it.

    ``constrained_samplers`` defaults to the default sampler and ``random`` (the per-molecule
    runs are many and short; the GP sampler's cubic cost does not pay there).

    A method ``SAMPLER+ADAPT`` (``cmaes+retrain``) runs the sampler with model adaptation
    (:mod:`molvae.optimize.adapt`), so the table compares the two in the same run.

    ``jobs`` > 1 runs that many (task, seed, method) runs at once, each in its own process
    with ``cores / jobs`` threads (the runs are independent; figures are the same as run one
    by one, wall times are not comparable across ``jobs``). Constrained tasks run serially.

    ``suite="pmo"`` runs the PMO tasks (:data:`SUITES`) instead of :data:`TASKS`; ``tasks``
    then picks among them (default: all 20).

    With ``out``, each finished run is appended to ``<out>.runs.jsonl`` as it ends; running
    the same benchmark again (same model and settings) skips the runs found there, so an
    interrupted benchmark resumes. Delete the file to measure again.
    """
    if suite is not None and suite not in SUITES:
        raise MolvaeError(f"unknown benchmark suite {suite!r}; valid: {', '.join(SUITES)}")
    valid = SUITES[suite] if suite else tuple(TASKS)
    tasks = list(tasks or valid)
    unknown = [t for t in tasks if t not in valid]
    if unknown:
        raise MolvaeError(f"unknown {suite or 'benchmark'} task(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise MolvaeError(f"bench optimize: seeds must be a whole number from 1 to {MAX_SEEDS}, got {seeds!r}")
    budgets = list(budgets)
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BUDGET]
    if bad or not budgets:
        raise MolvaeError(f"bench optimize: budgets must be whole numbers from 1 to {MAX_BUDGET:,}, got "
                          f"{', '.join(map(repr, bad)) if bad else 'none'}")
    if constrained_samplers is None:
        constrained_samplers = list(dict.fromkeys([DEFAULT_SAMPLER, "random"]))
    for method in samplers:
        if method != "prior":
            _split_method(method)  # a misspelt method fails before hours of runs, not after
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise MolvaeError(f"bench optimize: jobs must be a positive integer, got {jobs!r}")
    n_components = n_components or min(DEFAULT_COMPONENTS, model.latent_dim)
    settings = {"model": model_fingerprint(model), "batch_size": batch_size, "n_components": n_components,
                "time_limit": time_limit, "constrained_molecules": constrained_molecules,
                "constrained_budget": constrained_budget}
    if suite:  # its task names must never pick up runs of a same-named task outside the suite
        settings["suite"] = suite
    if getattr(model, "decode_bf16", False):  # bf16 decodes differ from fp32 ones: never mix
        settings["decode"] = "bf16"  # their runs (fp32 runs files from before stay valid)
    if getattr(model, "finetune_bf16", False):  # and so do mixed-precision fine-tunes (all
        settings["finetune"] = "bf16"            # methods: one key for the whole runs file)
    done = _Checkpoint(Path(out).with_suffix(".runs.jsonl") if out is not None else None, settings)
    runs, constrained, pending = [], [], []
    started = time.perf_counter()
    for name in tasks:
        task = TASKS[name] if not suite else Task(name, name, pmo.TASKS[name].description)
        objective = pmo.objective(name) if suite else task.objective
        if task.similarity is not None:
            starts = None
            for sampler in constrained_samplers:
                for seed in range(seeds):
                    if (row := done.get(name, sampler, constrained_budget, seed)) is not None:
                        constrained.append(row)
                        continue
                    if starts is None:
                        starts = lowest_plogp_molecules(model, constrained_molecules)
                    t = time.perf_counter()
                    per = constrained_improvement(model, starts, task.similarity, constrained_budget,
                                                  sampler, seed, n_components=n_components,
                                                  batch_size=min(batch_size, constrained_budget),
                                                  time_limit=time_limit, progress=progress)
                    ok = per[per["success"]]
                    constrained.append({
                        "task": name, "similarity": task.similarity, "method": sampler, "seed": seed,
                        "molecules": len(per), "budget_per_molecule": constrained_budget,
                        "success_rate": float(per["success"].mean()) if len(per) else math.nan,
                        "improvement_success_mean": float(ok["improvement"].mean()) if len(ok) else math.nan,
                        "improvement_success_sd": float(ok["improvement"].std(ddof=0)) if len(ok) else math.nan,
                        "improvement_all_mean": float(per["improvement"].clip(lower=0).fillna(0).mean()),
                        "mean_similarity": float(ok["similarity"].mean()) if len(ok) else math.nan,
                        "wall_s": round(time.perf_counter() - t, 2)})
                    done.add(name, sampler, constrained_budget, seed, constrained[-1])
                    log.info("%s %s seed %d: success %.2f", name, sampler, seed, constrained[-1]["success_rate"])
            continue
        for budget in budgets:
            for seed in range(seeds):
                for method in dict.fromkeys(["prior", *samplers]):  # prior sampling always runs, once
                    if (row := done.get(name, method, budget, seed, _adapt_settings(method))) is not None:
                        runs.append(row)
                    elif jobs > 1:
                        pending.append((name, method, budget, seed))
                    else:
                        s = _one_run(model, objective, method, budget, seed, batch_size, n_components,
                                     time_limit, progress)
                        runs.append(_finished(done, name, method, budget, seed, s))
    if pending:
        runs += _run_parallel(model, pending, jobs, done, suite, batch_size, n_components, time_limit, progress)
        key = {(t, m, b, s): i for i, (t, m, b, s) in enumerate(
            (t, m, b, s) for t in tasks for b in budgets for s in range(seeds) for m in dict.fromkeys(["prior", *samplers]))}
        runs.sort(key=lambda r: key.get((r["task"], r["method"], r["budget"], r["seed"]), -1))
    runs_df = pd.DataFrame(runs, columns=RUN_COLUMNS)
    table = _aggregate(runs_df)
    cons_df = pd.DataFrame(constrained)
    info = {"model": settings["model"], "latent_dim": model.latent_dim, "device": str(model.device),
            "torch_threads": _threads(), "machine": platform.machine(), "seeds": seeds,
            "budgets": list(budgets), "batch_size": batch_size, "n_components": n_components,
            "wall_s": round(time.perf_counter() - started, 1)}
    descriptions = {t: (pmo.TASKS[t].description if suite else TASKS[t].description) for t in tasks}
    md = _markdown(table, cons_df, runs_df, info, descriptions)
    if suite == "pmo":
        md = _pmo_markdown(runs_df, tasks) + "\n" + md
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        runs_df.to_csv(out.with_suffix(".csv"), index=False)
        if len(cons_df):
            cons_df.to_csv(out.with_name(out.stem + "_constrained.csv"), index=False)
    return BenchResult(runs_df, table, cons_df, md)


def _one_run(model, objective, method: str, budget: int, seed: int, batch_size: int, n_components: int,
             time_limit: float | None, progress: bool) -> dict:
    """One benchmark run's summary: prior sampling, or a sampler (with its adaptation)."""
    if method == "prior":
        return sample_prior_baseline(model, objective, budget=budget, seed=seed, time_limit=time_limit,
                                     progress=progress).attrs["summary"]
    sampler, adapt = _split_method(method)
    return optimize(model, objective, budget=budget, sampler=sampler, seed=seed, batch_size=batch_size,
                    n_components=n_components, time_limit=time_limit, progress=progress,
                    adapt=adapt).attrs["summary"]


def _finished(done: _Checkpoint, name: str, method: str, budget: int, seed: int, s: dict) -> dict:
    row = _summary_row(name, method, budget, seed, s)
    done.add(name, method, budget, seed, row, _adapt_settings(method))
    log.info("%s %s budget %d seed %d: AUC top-10 %.4f", name, method, budget, seed, s["auc_top10"])
    return row


def _task_objective(name: str, suite: str | None):
    return pmo.objective(name) if suite else TASKS[name].objective


_WORKER_MODEL = None


def _worker_init(payload: tuple, threads: int, pca_molecules: int) -> None:
    """A benchmark worker: the parent's model (sent as a CPU copy), its own share of threads."""
    import torch

    from .model import MolVAE
    from .optimize import region

    global _WORKER_MODEL
    torch.set_num_threads(threads)
    region.PCA_MOLECULES = pca_molecules  # the parent's setting, so both use one PCA
    module, vocab, device, metadata, prior, precision, finetune_bf16 = payload
    _WORKER_MODEL = MolVAE(module, vocab, device, metadata=metadata, precision=precision)
    _WORKER_MODEL.prior = prior
    _WORKER_MODEL.finetune_bf16 = finetune_bf16


def _worker_payload(model) -> tuple:
    """What a worker rebuilds the parent's model from: a CPU copy of the network, and the
    parent's decoding precision (not the worker's own 'auto', which may differ from a choice
    the caller made; bf16 changes a few % of decodes, so --jobs N would not give serial's runs)."""
    import copy

    return (copy.deepcopy(model.module).to("cpu"), model.vocab, str(model.device), model.metadata,
            model.prior, "bf16" if getattr(model, "decode_bf16", False) else "fp32",
            bool(getattr(model, "finetune_bf16", False)))


def _worker_run(job: tuple, suite: str | None, batch_size: int, n_components: int,
                time_limit: float | None) -> tuple[tuple, dict]:
    name, method, budget, seed = job
    s = _one_run(_WORKER_MODEL, _task_objective(name, suite), method, budget, seed, batch_size,
                 n_components, time_limit, False)
    return job, s


def _run_parallel(model, pending: list[tuple], jobs: int, done: _Checkpoint, suite: str | None,
                  batch_size: int, n_components: int, time_limit: float | None, progress: bool) -> list[dict]:
    """The pending runs in ``jobs`` spawned processes; each finished run is checkpointed here,
    in the parent, as it arrives (so an interrupted benchmark resumes as a serial one does)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .optimize import fit_latent_pca, region

    fit_latent_pca(model)  # once, into the cache the workers read
    payload = _worker_payload(model)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows = []
    bar_ = _progress_bar(len(pending), progress)
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(payload, threads, region.PCA_MOLECULES)) as pool:
        futures = [pool.submit(_worker_run, job, suite, batch_size, n_components, time_limit) for job in pending]
        for fut in as_completed(futures):
            (name, method, budget, seed), s = fut.result()
            rows.append(_finished(done, name, method, budget, seed, s))
            bar_.update(1)
    bar_.close()
    return rows


def _progress_bar(total: int, show: bool):
    from .progress import progress as bar

    return bar(total=total, desc="bench runs", disable=not show)


class _Checkpoint:
    """Finished runs, one JSON line each, keyed by (task, method, budget, seed) and tied to the
    model and settings they ran with; lines from other settings are ignored. An adaptive
    method's line also records its adaptation settings (``_adapt_settings``): a line without
    them, or with others, is measured again."""

    def __init__(self, path: Path | None, settings: dict):
        self.path = path
        self.settings = settings
        self.rows: dict[tuple, dict] = {}
        self.adapt: dict[tuple, dict | None] = {}
        if path is None or not path.exists():
            return
        with open(path) as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if isinstance(rec, dict) and rec.get("settings") == settings and isinstance(rec.get("row"), dict):
                    key = tuple(rec.get("key", ()))
                    self.rows[key], self.adapt[key] = rec["row"], rec.get("adapt")
        if self.rows:
            log.warning("%s: %d finished run(s) reused; delete the file to measure them again",
                        path, len(self.rows))

    def get(self, task: str, method: str, budget: int, seed: int, adapt: dict | None = None) -> dict | None:
        from .optimize.adapt import ADDED_SETTINGS

        key = (task, method, budget, seed)
        recorded = self.adapt.get(key)
        if recorded is not None:  # made before a setting existed: with the value that behaves as before
            recorded = {**ADDED_SETTINGS, **recorded}
        if key in self.rows and recorded != adapt:
            log.warning("%s %s seed %d: the finished run adapted with other settings; measuring it again",
                        task, method, seed)
            return None
        return self.rows.get(key)

    def add(self, task: str, method: str, budget: int, seed: int, row: dict, adapt: dict | None = None) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"key": [task, method, budget, seed], "settings": self.settings, "row": row,
               **({"adapt": adapt} if adapt is not None else {})}
        with open(self.path, "a+b") as fh:
            torn = fh.tell() > 0 and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n"
            fh.write((("\n" if torn else "") + json.dumps(rec, default=float) + "\n").encode())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs
    g = runs.groupby(["task", "budget", "method"], sort=False)
    out = g.agg(seeds=("seed", "count"), auc_top10=("auc_top10", "mean"), auc_top10_sd=("auc_top10", "std"),
                top1=("top1", "mean"), top10_mean=("top10_mean", "mean"), oracle_calls=("oracle_calls", "mean"),
                wall_s=("wall_s", "mean"), calls_per_s=("calls_per_s", "mean"),
                overhead_fraction=("overhead_fraction", "mean")).reset_index()
    return out


def _pm(mean: float, sd: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f}" if sd is None or math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _markdown(table: pd.DataFrame, cons: pd.DataFrame, runs: pd.DataFrame, info: dict,
              tasks: dict[str, str]) -> str:
    lines = ["# molvae bench optimize", "",
             f"Model {info['model']} (latent {info['latent_dim']}), device {info['device']}, "
             f"{info['torch_threads']} torch threads, {info['machine']}; batch {info['batch_size']}, "
             f"{info['n_components']} PCA components; {info['seeds']} seed(s); total {info['wall_s']} s.",
             "", "Tasks: " + "; ".join(f"`{t}` = {d}" for t, d in tasks.items()) + ".", ""]
    if len(table):
        lines += ["## AUC of the running top-10 mean (PMO), mean ± sd over seeds", "",
                  "| task | budget | method | AUC top-10 | top-1 | top-10 mean | oracle calls | wall s | molecules/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for task_budget, grp in table.groupby(["task", "budget"], sort=False):
            best = grp["auc_top10"].max()
            for r in grp.itertuples():
                auc = _pm(r.auc_top10, r.auc_top10_sd)
                if r.auc_top10 == best:
                    auc = f"**{auc}**"
                lines.append(f"| {r.task} | {r.budget} | {r.method} | {auc} | {r.top1:.3f} | {r.top10_mean:.3f} | "
                             f"{r.oracle_calls:.0f} | {r.wall_s:.1f} | {r.calls_per_s:.1f} |")
        lines.append("")
    if len(cons):
        lines += ["## Similarity-constrained penalized logP improvement", "",
                  "| similarity | method | success | improvement (successes) | improvement (all, failures 0) "
                  "| similarity of best | molecules × budget | wall s |",
                  "|---|---|---|---|---|---|---|---|"]
        g = cons.groupby(["similarity", "method"], sort=False)
        for (sim, method), grp in g:
            lines.append(
                f"| ≥ {sim} | {method} | {grp['success_rate'].mean():.1%} | "
                f"{_pm(grp['improvement_success_mean'].mean(), grp['improvement_success_sd'].mean())} | "
                f"{grp['improvement_all_mean'].mean():.3f} | {grp['mean_similarity'].mean():.3f} | "
                f"{int(grp['molecules'].iloc[0])} × {int(grp['budget_per_molecule'].iloc[0])} | "
                f"{grp['wall_s'].mean():.0f} |")
        lines.append("")
    qed = runs[runs["task"] == "qed"] if len(runs) else runs
    if len(qed):
        top_budget = qed["budget"].max()
        q = qed[qed["budget"] == top_budget].groupby("method", sort=False).mean(numeric_only=True)
        lines += [f"## Where the time goes (QED, budget {top_budget}, mean over seeds)", "",
                  "Overhead = everything except scoring (decoding, the sampler, storage, bookkeeping).", "",
                  "| method | wall s | decode s | score s | sampler s | overhead fraction |",
                  "|---|---|---|---|---|---|"]
        for method, r in q.iterrows():
            lines.append(f"| {method} | {r['wall_s']:.1f} | {r['decode_s']:.1f} | {r['score_s']:.1f} | "
                         f"{r['sampler_s']:.1f} | {r['overhead_fraction']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def _pmo_markdown(runs: pd.DataFrame, tasks: list[str]) -> str:
    """One row per PMO task, one column per (budget, method), the published rows beside them,
    then the sum over the tasks (mean ± sd over seeds of each seed's sum) and the wall time."""
    lines = ["## PMO tasks: AUC of the running top-10 mean, mean ± sd over seeds", ""]
    if runs.empty:
        return "\n".join(lines + ["(no finished runs)", ""])
    cols = list(dict.fromkeys(zip(runs["budget"], runs["method"])))
    published = list(pmo.PUBLISHED)
    lines += [
        "Published rows are at 10,000 calls (sources in `molvae/pmo.py`); – = no per-task figure at hand. "
        "Oracle ms/molecule = scoring time per molecule scored, median over this task's runs.", "",
        "| task | " + " | ".join(f"{m} @ {b:,}" for b, m in cols) + " | " + " | ".join(published)
        + " | oracle ms/molecule |",
        "|---" * (len(cols) + len(published) + 2) + "|"]
    by = runs.groupby(["task", "budget", "method"])["auc_top10"]
    mean, sd = by.mean(), by.std()
    for t in tasks:
        cells = [_pm(mean.get((t, b, m), math.nan), sd.get((t, b, m), math.nan)) for b, m in cols]
        pub = [f"{pmo.PUBLISHED[p][t]:.3f}" if t in pmo.PUBLISHED[p] else "–" for p in published]
        mine = runs[runs["task"] == t]
        per_mol = (mine["score_s"] / mine["oracle_calls"].clip(lower=1) * 1000).median()
        lines.append(f"| {t} | " + " | ".join(cells + pub) + f" | {_num(per_mol, '.2f')} |")
    sums, walls = [], []
    for b, m in cols:
        grp = runs[(runs["budget"] == b) & (runs["method"] == m)]
        per_seed = grp.groupby("seed").agg(n=("task", "nunique"), auc=("auc_top10", "sum"), wall=("wall_s", "sum"))
        full = per_seed[per_seed["n"] == len(tasks)]  # a seed counts once all its tasks ran
        sums.append(_pm(full["auc"].mean(), full["auc"].std()) if len(full) else "–")
        walls.append(_num(full["wall"].mean(), ".0f") if len(full) else "–")
    pub_sums = []
    for p in published:
        if all(t in pmo.PUBLISHED[p] for t in tasks):
            pub_sums.append(f"{sum(pmo.PUBLISHED[p][t] for t in tasks):.2f}")
        elif set(tasks) == set(pmo.TASK_NAMES) and p in pmo.PUBLISHED_SUMS:
            pub_sums.append(f"{pmo.PUBLISHED_SUMS[p]:.2f}")
        else:
            pub_sums.append("–")
    blank = [""] * len(published)
    lines.append(f"| **sum of {len(tasks)}** | " + " | ".join(f"**{x}**" for x in sums) + " | "
                 + " | ".join(pub_sums) + " | |")
    lines.append("| wall s (all tasks, mean over seeds) | " + " | ".join(walls + blank) + " | |")
    return "\n".join(lines + [""])


def _num(value: float, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)
