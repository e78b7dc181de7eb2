"""Experiment (not part of molvae): which adaptation settings climb fastest after the plateau.

    python scripts/experiments/adapt_sweep.py OUT.jsonl TASK[,TASK..] VARIANT[,VARIANT..] [BUDGET] [JOBS] [SEEDS]

A VARIANT is ``name`` or ``name:key=value/key=value`` with keys of
:class:`molvae.optimize.AdaptConfig` (``base`` = the defaults), e.g.
``early:after_plateau=500``. Each (task, variant, seed) run (SEEDS: ``0,1,2``; default 0) is
``molvae.optimize(load_model(), pmo.objective(task), budget=BUDGET, seed=seed,
adapt=AdaptConfig(...))``; one JSON line per run
with the AUC top-10 at 10/25/50/100 % of the budget, the final top-10, rounds and wall time.
Runs already in OUT are skipped, so an interrupted sweep resumes.

    python scripts/experiments/adapt_sweep.py summary OUT.jsonl docs/bench/pmo_10k.runs.jsonl
    python scripts/experiments/adapt_sweep.py paired OUT.jsonl BASE_VARIANT VARIANT [TASK,TASK..]

prints, per variant and task, the AUC top-10 of each seed and their mean beside the PMO
table's own ``cmaes+retrain`` runs (the defaults) for the same seeds, and the sums over the
tasks that both have for every seed. ``paired`` compares two variants seed by seed: each
seed's sum over the tasks both ran on it, the per-task differences, and the paired t of the
per-seed sums over the seeds where both ran the same tasks as the most complete seed.
"""
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path


def parse_variant(spec):
    name, _, rest = spec.partition(":")
    kw = {}
    for item in filter(None, rest.split("/")):
        k, _, v = item.partition("=")
        kw[k] = None if v == "None" else (float(v) if "." in v or "e" in v else int(v))
    return name, kw


def run(job):
    task, spec, budget, seed = job
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import molvae
    from molvae import pmo
    from molvae.model import load_model
    from molvae.optimize import AdaptConfig
    from molvae.optimize.adapt import parse_adapt
    from molvae.optimize.outputs import top_k_auc

    name, _, rest = spec.partition(":")
    # finetune_bf16=0/1 is the model's fine-tuning precision (MolVAE.finetune_bf16), not an
    # AdaptConfig setting: it pins it apart from the decoding precision (MOLVAE_CPU_BF16).
    items = [x for x in rest.split("/") if x]
    pinned = [x for x in items if x.startswith("finetune_bf16=")]
    # cma_batch=N is the search's batch_size (the CMA-ES population a batch), not an AdaptConfig one.
    cma = [int(x.partition("=")[2]) for x in items if x.startswith("cma_batch=")]
    rest = "/".join(x for x in items if x not in pinned and not x.startswith("cma_batch="))
    model = load_model()
    for x in pinned:
        model.finetune_bf16 = x.partition("=")[2] == "1"
    adapt = "none" if name == "cmaes" else parse_adapt("retrain:" + rest) if rest else AdaptConfig()
    t = time.perf_counter()
    extra = {"batch_size": cma[0]} if cma else {}
    df = molvae.optimize(model, pmo.objective(task), budget=budget, seed=seed, adapt=adapt, progress=False, **extra)
    s = df.attrs["summary"]
    scores = df.sort_values("oracle_call")["score"].to_numpy(float)
    row = {"task": task, "variant": spec, "budget": budget, "seed": seed, "wall_s": round(time.perf_counter() - t, 1),
           "decode": "bf16" if model.decode_bf16 else "fp32",
           "finetune": "bf16" if getattr(model, "finetune_bf16", False) else "fp32",
           "adapt_s": s.get("time", {}).get("adapt_s"),
           "top10": s["top10_mean"], "rounds": s.get("adapt_rounds"),
           "first_adapt": (s.get("adapt_oracle_calls") or [None])[0]}
    above = np.flatnonzero(scores > 0)   # a gated task's first hit (valsartan: its pattern)
    row["first_above_0"] = int(above[0]) + 1 if len(above) else None
    for frac in (0.1, 0.25, 0.5, 1.0):  # 10 %: what a short run would have scored
        n = int(budget * frac)
        row[f"auc@{n}"] = round(top_k_auc(scores[:n], 10, n), 4)
    if "trial" in df.columns:  # where the molecules came from: sampler (trial >= 0), policy -1, graph -2
        source = np.select([df["trial"] >= 0, df["trial"] == -1, df["trial"] == -2, df["trial"] == -3],
                           ["sampler", "policy", "graph", "edits"], "other")
        ranked = source[np.argsort(-df["score"].to_numpy(float), kind="stable")]
        for key, rows in (("molecules", source), ("top10_from", ranked[:10]), ("top100_from", ranked[:100])):
            names, counts = np.unique(rows, return_counts=True)
            row[key] = {str(a): int(b) for a, b in zip(names, counts)}
    return row


def summary(out: Path, runs: Path):
    base = {}
    for line in runs.read_text().splitlines():
        r = json.loads(line)["row"]
        if r["method"] == "cmaes+retrain":
            base[(r["task"], r["seed"])] = r["auc_top10"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {}).setdefault(r["task"], {})[r.get("seed", 0)] = r[f"auc@{r['budget']}"]
    for variant, tasks in by.items():
        tot_b = tot_v = 0.0
        lines = []
        for task, seeds in tasks.items():
            ss = sorted(seeds)
            if len(ss) < 3 or any((task, s) not in base for s in ss):
                continue
            b = [base[(task, s)] for s in ss]
            v = [seeds[s] for s in ss]
            tot_b += sum(b) / len(b)
            tot_v += sum(v) / len(v)
            lines.append(f"| {task} | {' / '.join(f'{x:.3f}' for x in b)} = {sum(b) / len(b):.3f} | "
                         f"{' / '.join(f'{x:.3f}' for x in v)} = {sum(v) / len(v):.3f} |")
        if lines:  # variants with 3 seeds on some task
            print(f"\n{variant}\n| task | defaults | {variant} |\n|---|---|---|")
            print("\n".join(lines))
            print(f"| sum of {len(lines)} | {tot_b:.3f} | {tot_v:.3f} ({100 * (tot_v / tot_b - 1):+.1f} %) |")


def paired(out: Path, base: str, variant: str, tasks: str = ""):
    """Per-task differences and per-seed sums of VARIANT against BASE at 10,000 calls (TASKS:
    a comma-separated subset, default all); the paired t over the seeds that ran every task
    that the most complete seed ran."""
    import statistics

    keep = set(tasks.split(",")) if tasks else None
    auc = {}
    for r in map(json.loads, out.read_text().splitlines()):
        if (r.get("budget") == 10000 and r.get("variant") in (base, variant)
                and (keep is None or r["task"] in keep)):
            auc[(r["variant"], r["task"], r.get("seed", 0))] = r["auc@10000"]
    seeds = sorted({s for v, _, s in auc if v == variant})
    shared = {s: {t for v, t, x in auc if v == variant and x == s and (base, t, s) in auc} for s in seeds}
    seeds = [s for s in seeds if shared[s]]
    full = max((shared[s] for s in seeds), key=len, default=set())
    print(f"| task | {' | '.join(f'seed {s}' for s in seeds)} | mean |\n|---|{'---|' * (len(seeds) + 1)}")
    for t in sorted(set().union(*shared.values())):
        d = {s: auc[(variant, t, s)] - auc[(base, t, s)] for s in seeds if t in shared[s]}
        cells = [f"{d[s]:+.3f}" if s in d else "" for s in seeds]
        print(f"| {t} | {' | '.join(cells)} | {statistics.mean(d.values()):+.3f} |")
    diffs = []
    for s in seeds:
        b = sum(auc[(base, t, s)] for t in shared[s])
        v = sum(auc[(variant, t, s)] for t in shared[s])
        print(f"seed {s}: {len(shared[s])} tasks, {base} {b:.3f}, {variant} {v:.3f}, {v - b:+.3f}")
        if shared[s] >= full:
            diffs.append(v - b)
    if len(diffs) > 1:
        sd = statistics.stdev(diffs)
        t = statistics.mean(diffs) / (sd / len(diffs) ** 0.5) if sd else float("inf")
        print(f"{len(diffs)} seeds on the same {len(full)} tasks: mean {statistics.mean(diffs):+.3f}, "
              f"sd {sd:.3f}, paired t {t:.2f}")


def main():
    if sys.argv[1] == "summary":
        return summary(Path(sys.argv[2]), Path(sys.argv[3]))
    if sys.argv[1] == "paired":
        return paired(Path(sys.argv[2]), sys.argv[3], sys.argv[4], *sys.argv[5:6])
    out, tasks, variants = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
    budget = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
    jobs = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    seeds = [int(x) for x in sys.argv[6].split(",")] if len(sys.argv) > 6 else [0]
    done = set()
    if out.exists():  # rows from before the seed column are seed 0
        done = {(r["task"], r["variant"], r["budget"], r.get("seed", 0))
                for r in map(json.loads, out.read_text().splitlines())}
    # task-major: an interrupted sweep leaves whole tasks (all seeds) rather than a seed of each
    todo = [(t, v, budget, s) for t in tasks for v in variants for s in seeds if (t, v, budget, s) not in done]
    with mp.get_context("spawn").Pool(jobs) as pool:
        for row in pool.imap_unordered(run, todo):
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
