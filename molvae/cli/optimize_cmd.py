"""`molvae optimize`, `molvae bench optimize` and `molvae bench finetune`."""

from __future__ import annotations

import math
from pathlib import Path

MODEL_HELP = "model folder (default: the pretrained model shipped in data/models/default)"


def register(sub, bench) -> None:
    from ..optimize import (DEFAULT_BATCH_SIZE, DEFAULT_BOUND, DEFAULT_COMPONENTS, DEFAULT_SAMPLER,
                            DEFAULT_SIMILARITY, DEFAULT_TRUST_RADIUS, SAMPLERS)
    from ..optimize.adapt import ADAPT_CHOICES, DEFAULT_ADAPT, AdaptConfig

    p = sub.add_parser("optimize", help="search the latent space for molecules that score well",
                       description="Optuna searches the VAE's latent space (a PCA box of the encoded "
                                   "training set, or a trust region around --lead) for molecules that "
                                   "maximize the objective. Re-run the same command to resume.")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--objective", nargs="+", default=["qed"], metavar="PRESET_OR_TOML",
                   help="a preset (qed, penalized_logp, drug_like, celecoxib_rediscovery, "
                        "similarity:SMILES, pmo:TASK such as pmo:median1, ...) or an objective TOML "
                        "file; several = a Pareto search")
    p.add_argument("--budget", type=int, default=1000, help="unique valid molecules to score (total)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help=f"default: {DEFAULT_SAMPLER} (nsga2 for several objectives)")
    p.add_argument("--out", required=True, help="run folder (re-run to resume)")
    p.add_argument("--start", default=None,
                   help="warm start: SMILES (comma separated) or a SMILES file, encoded and tried first")
    p.add_argument("--donors", default=None,
                   help="a SMILES file (your own library) whose molecules the graph GA's crossovers may "
                        "borrow groups from, never scored (default: the bundled MOSES sample when the "
                        "adapt setting donor is above 0); bad rows go to donor_rejects.csv")
    p.add_argument("--lead", default=None, help="optimize around this molecule (a trust region)")
    p.add_argument("--min-similarity", type=float, default=None,
                   help=f"with --lead: Tanimoto floor, Morgan r2 2048 bits (default {DEFAULT_SIMILARITY})")
    p.add_argument("--scaffold", default=None, help="SMARTS every feasible molecule must contain")
    p.add_argument("--allow-code", action="store_true",
                   help="let the objective file run the module:function components it names (a file "
                        "alone may not run code; or list the modules in MOLVAE_ALLOW_CODE)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: an RDB URL (sqlite:///study.db, postgresql://...), "
                        "journal:PATH or memory (default: the journal file OUT/study.journal)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--target", type=float, default=None, help="stop when the best score reaches this")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many oracle calls without a new best")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--components", type=int, default=None,
                   help=f"principal axes of the encoded training set to search (default "
                        f"{DEFAULT_COMPONENTS}, at most the latent dimension)")
    p.add_argument("--bound", type=float, default=DEFAULT_BOUND, help="search box half-width, in sd")
    p.add_argument("--trust-radius", type=float, default=DEFAULT_TRUST_RADIUS,
                   help="with --lead: trust-region half-width, in sd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapt", default=DEFAULT_ADAPT, metavar="{" + ",".join(ADAPT_CHOICES) + "}[:KEY=VALUE/...]",
                   help="retrain: graph crossover and mutation children of the best beside "
                        "each batch, and every --adapt-every calls "
                        "fine-tune a copy of the model on the molecules scored so far and restart "
                        "the search around the best; none: search the shipped model only (faster "
                        f"with a cheap objective); default {DEFAULT_ADAPT}: retrain with cmaes on "
                        "one objective without --lead or --workers, none otherwise. Settings of "
                        "AdaptConfig follow a colon, e.g. retrain:lr=1e-3/molecules=768")
    p.add_argument("--adapt-every", type=int, default=None,
                   help=f"when adapting: oracle calls between adaptations (default {AdaptConfig.every})")
    p.add_argument("--adapt-after-plateau", type=int, default=None, metavar="CALLS",
                   help="when adapting: start adapting once the best is this many calls old "
                        "(default 0: adapt from the start, every --adapt-every calls)")
    p.set_defaults(func=cmd_optimize)

    b = bench.add_parser("optimize", help="optimizers vs prior sampling on standard tasks (AUC top-10)")
    b.add_argument("--model", default=None, help=MODEL_HELP)
    b.add_argument("--device", default="auto")
    b.add_argument("--tasks", default=None,
                   help="comma-separated, from: qed, plogp, plogp_sim0.4, plogp_sim0.6, drug_profile, "
                        "drug_like, celecoxib (default: all); with --suite, from the suite's tasks")
    b.add_argument("--suite", choices=["pmo"], default=None,
                   help="pmo: the 20 PMO tasks that need no downloaded classifier (TDC's oracle "
                        "definitions), summed and shown beside published results")
    b.add_argument("--samplers", default="tpe,cmaes,gp,random",
                   help="comma-separated samplers; SAMPLER+ADAPT (cmaes+retrain) adds model adaptation, "
                        "SAMPLER+ADAPT:KEY=VALUE/... changes its settings (cmaes+retrain:lr=1e-3)")
    b.add_argument("--seeds", type=int, default=3)
    b.add_argument("--budgets", default="1000,10000", help="comma-separated oracle budgets")
    b.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    b.add_argument("--components", type=int, default=None,
                   help=f"PCA components (default {DEFAULT_COMPONENTS}, at most the latent dimension)")
    b.add_argument("--constrained-molecules", type=int, default=100,
                   help="starting molecules of the similarity-constrained task")
    b.add_argument("--constrained-budget", type=int, default=100, help="oracle calls per starting molecule")
    b.add_argument("--time-limit", type=float, default=None, help="per run, seconds (slow samplers)")
    b.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process with cores/JOBS threads (default 1; "
                        "same figures, wall times not comparable across --jobs)")
    b.add_argument("--out", default="bench_optimize.md",
                   help="Markdown table; a .csv is written beside it, and each finished run goes to "
                        "OUT.runs.jsonl as it ends, so re-running the same command resumes")
    b.set_defaults(func=cmd_bench)

    b = bench.add_parser("finetune", help="a search's fine-tuning round, fp32 vs mixed bf16, same run")
    b.add_argument("--model", default=None, help=MODEL_HELP)
    b.add_argument("--device", default="auto")
    b.add_argument("--smiles", default=None,
                   help="molecules to fine-tune on, ranked by QED (default: the bundled training set)")
    b.add_argument("-n", type=int, default=2000, help="how many of them (the first N)")
    b.add_argument("--molecules", type=int, default=256, help="rank-weighted draws per round (the search's 256)")
    b.add_argument("--repeats", type=int, default=3, help="alternating rounds per precision; the fastest counts")
    b.add_argument("--out", default=None, help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_finetune)


def cmd_bench_finetune(args) -> int:
    """`molvae bench finetune`: what mixed bf16 saves on a search's fine-tuning rounds."""
    import json

    import numpy as np

    from .. import chem
    from ..data import BUNDLED, read_smiles
    from ..errors import MolvaeError
    from ..model import load_model
    from ..optimize.adapt import benchmark_finetuning

    if isinstance(args.n, bool) or not 1 <= args.n <= 1_000_000:
        raise MolvaeError(f"-n must be a whole number from 1 to 1,000,000, got {args.n!r}")
    src = Path(args.smiles) if args.smiles else BUNDLED["train"]
    smiles = read_smiles(src)[:args.n]
    if not smiles:
        raise MolvaeError(f"{src}: no molecules to fine-tune on")
    scores = np.array([chem.PROPERTIES["qed"](m) if (m := chem.to_mol(s)) is not None else np.nan
                       for s in smiles])
    model = load_model(args.model, device=args.device)
    rows = benchmark_finetuning(model, smiles, scores, molecules=args.molecules, repeats=args.repeats)
    print(f"{'device':>8} {'precision':>9} {'mol/s':>8} {'loss':>8} {'NLL of the 32 best: before':>27} "
          f"{'after':>7} {'speedup':>8}")
    for r in rows:
        speed = f"{r['bf16_speedup']:.2f}x" if "bf16_speedup" in r else ""
        print(f"{str(model.device):>8} {r['precision']:>9} {r['molecules_per_s']:>8,.1f} {r['loss']:>8.3f} "
              f"{r['nll_best_before']:>27.3f} {r['nll_best_after']:>7.3f} {speed:>8}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


def _objective(specs: list[str], allow_code: bool = False):
    from ..scoring import as_multi_objective, as_objective

    if len(specs) == 1:
        return as_objective(specs[0], base_dir=Path.cwd(), source=specs[0], allow_code=allow_code)
    return as_multi_objective(list(specs), base_dir=Path.cwd(), allow_code=allow_code)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def cmd_optimize(args) -> int:
    from ..errors import MolvaeError
    from ..model import load_model
    from ..optimize import optimize

    # Errors in the flags' own words, before the model loads.
    if args.min_similarity is not None:
        if args.lead is None:
            raise MolvaeError("--min-similarity needs --lead: it is the similarity floor to the lead molecule")
        if not 0 <= args.min_similarity <= 1:
            raise MolvaeError(f"--min-similarity must be in [0, 1] (a Tanimoto similarity), "
                              f"got {args.min_similarity:g}")
    objective = _objective(args.objective, args.allow_code)
    model = load_model(args.model, device=args.device)
    table = optimize(model, objective, budget=args.budget, sampler=args.sampler, batch_size=args.batch_size,
                     seed=args.seed, out_dir=args.out, start=args.start, lead=args.lead,
                     similarity_threshold=args.min_similarity, scaffold=args.scaffold,
                     storage=args.storage, workers=args.workers, time_limit=args.time_limit,
                     target=args.target, patience=args.patience, n_components=args.components,
                     bound=args.bound, trust_radius=args.trust_radius, adapt=args.adapt,
                     adapt_every=args.adapt_every, adapt_after_plateau=args.adapt_after_plateau,
                     donors=args.donors)
    s = table.attrs["summary"]
    names = getattr(objective, "names", None) if "pareto" in table else None
    values = [f"{n}_score" for n in names] if names else ["score"]
    cols = ["smiles"] + values + ["feasible", "oracle_call"] + (["pareto"] if "pareto" in table else [])
    top = table.head(10)[cols]
    width = max([len("smiles")] + [min(len(x), 60) for x in top["smiles"]])
    print(f"{'#':>3} {'smiles':<{width}} " + " ".join(f"{c:>12}" for c in cols[1:]))
    for i, row in enumerate(top.itertuples(index=False), 1):
        smi = row[0] if len(row[0]) <= 60 else row[0][:57] + "..."
        print(f"{i:>3} {smi:<{width}} " + " ".join(f"{_fmt(v):>12}" for v in row[1:]))
    print(f"\n{s['oracle_calls']} molecules scored ({s['n_feasible']} feasible, {s['n_failed']} failed; "
          f"budget {s['budget']}; stopped: {s['stop_reason']}), "
          f"top-1 {_fmt(s['top1'])}, top-10 mean {_fmt(s['top10_mean'])}, AUC top-10 {_fmt(s['auc_top10'])}")
    print(f"{s['wall_s']:.1f} s, {s['calls_per_s']:.1f} molecules/s; written to {args.out} "
          "(molecules.csv, top.csv, summary.json, curve.png)")
    if s.get("adapt_rounds"):
        n, spent = s["adapt_rounds"], s.get("time", {}).get("adapt_s")
        print(f"model adapted {n} time{'s' if n != 1 else ''}, from oracle call {s['adapt_oracle_calls'][0]}"
              + (f" ({spent:.0f} s)" if spent is not None else "")
              + (f", {s['adapt_resets']} of them back to the shipped model after a round found nothing new"
                 if s.get("adapt_resets") else "")
              + "; --adapt none searches the shipped model only")
    return 0


def _names(text: str, flag: str, what: str) -> list[str]:
    """The names of a comma-separated option; an empty list is an error naming the flag."""
    from ..errors import MolvaeError

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise MolvaeError(f"{flag}: name at least {what}, comma-separated; got {text[:80]!r}")
    return names


def cmd_bench(args) -> int:
    from ..benchmark import benchmark_optimize
    from ..errors import MolvaeError
    from ..model import load_model

    tasks = _names(args.tasks, "--tasks", "a task") if args.tasks is not None else None
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        raise MolvaeError(f"--budgets: expected comma-separated integers, got {args.budgets[:80]!r}") from None
    samplers = _names(args.samplers, "--samplers", "a sampler (or prior, for the baseline alone)")
    model = load_model(args.model, device=args.device)
    result = benchmark_optimize(model, tasks=tasks, samplers=samplers, seeds=args.seeds, budgets=budgets,
                                batch_size=args.batch_size, n_components=args.components,
                                constrained_molecules=args.constrained_molecules,
                                constrained_budget=args.constrained_budget, time_limit=args.time_limit,
                                out=args.out, suite=args.suite, jobs=args.jobs)
    print(result.markdown)
    print(f"\nwritten to {args.out} and {Path(args.out).with_suffix('.csv')}")
    return 0
