"""``molvae train`` and ``molvae bench train``: argument parsing over :mod:`molvae.train`.

    molvae train --data data/moses_train_100k.csv.gz --out runs/vae --epochs 10
    torchrun --standalone --nproc_per_node=4 -m molvae train --data prep/ --out runs/vae
    molvae bench train --json bench.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MolvaeError


def _parse_value(text: str):
    """``KEY=VALUE`` values: JSON numbers/booleans, anything else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MolvaeError(f"--model-option {pair!r}: expected KEY=VALUE, e.g. dec_hidden=512")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _train(args: argparse.Namespace) -> int:
    from ..model import ModelConfig
    from ..train import TrainConfig, train

    model = _model_options(args.model_option or [])
    if args.latent_dim is not None:
        model["latent_dim"] = args.latent_dim
    if args.beta is not None:
        model["beta_max"] = args.beta
    known = {f for f in ModelConfig.__dataclass_fields__} - {"vocab_size", "seq_len"}
    unknown = sorted(set(model) - known)
    if unknown:
        raise MolvaeError(f"--model-option: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    settings = {"model": model}
    for name in ("epochs", "batch_size", "lr", "seed", "device", "patience", "max_hours",
                 "lr_schedule", "weight_decay", "grad_clip"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.max_molecules is not None:
        settings["max_train_molecules"] = args.max_molecules
    if args.threads is not None:
        settings["num_threads"] = args.threads
    if args.no_bf16:
        settings["bf16"] = False
    if args.time_budget is not None:
        settings["time_budget_s"] = args.time_budget
    if args.plan_seconds is not None:
        settings["plan_seconds"] = args.plan_seconds
    if args.init_from is not None:
        settings["init_from"] = args.init_from
    summary = train(args.data, args.out, TrainConfig.from_dict(settings), resume=args.resume)
    last = summary["last"] or {}
    print(f"{summary['status']}: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
          f"(val loss {summary['best_val_loss'] or float('nan'):.3f}, reconstruction {last.get('val_recon_rate', float('nan')):.3f} "
          f"at the last epoch); model in {args.out}")
    return 0


def _bench_candidates(args: argparse.Namespace) -> int:
    from ..train import CANDIDATES, benchmark_candidates

    if not args.data:
        raise MolvaeError("bench train --candidates needs --data (a prepared folder or SMILES file)")
    names = list(CANDIDATES) if args.candidates == "all" else [n.strip() for n in args.candidates.split(",")]
    base = {"max_train_molecules": args.max_molecules} if args.max_molecules else {}
    rows = benchmark_candidates(args.data, args.out, names, seconds=args.seconds, device=args.device,
                                base=base)
    print(f"{'candidate':<20} {'params':>10} {'steps':>7} {'mol/s':>9} {'val NLL':>8} {'recon':>6} {'active':>6}")
    for r in sorted(rows, key=lambda r: r["val_nll"]):
        print(f"{r['candidate']:<20} {r['parameters']:>10,} {r['steps']:>7} {r['molecules_per_s']:>9.0f} "
              f"{r['val_nll']:>8.2f} {r['val_recon_rate']:>6.3f} {r['active_units']:>6}")
    print(f"each trained for a schedule planned for {args.seconds:.0f} s; lowest validation NLL first")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..train import benchmark_training

    if args.candidates:
        return _bench_candidates(args)

    model = _model_options(args.model_option or [])
    import torch

    from ..runtime import cpu_threads_for_busy_machine

    threads = args.threads or cpu_threads_for_busy_machine()
    if threads:
        torch.set_num_threads(threads)
    rows = benchmark_training(device=args.device, batch_size=args.batch_size, steps=args.steps,
                              model=model)
    print(f"{'device':<8} {'precision':<9} {'batch':>5} {'params':>10} {'MB':>6} {'ms/step':>9} {'mol/s':>9}")
    for r in rows:
        print(f"{r['device']:<8} {r['precision']:<9} {r['batch_size']:>5} {r['parameters']:>10,} "
              f"{r['size_mb']:>6.1f} {r['ms_per_step']:>9.1f} {r['molecules_per_s']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _fit_prior(args: argparse.Namespace) -> int:
    """Fit the latent prior of a model folder (and, with --compare, measure it against N(0, I))."""
    from ..data import bundled, read_smiles
    from ..model import default_model_dir, load_model
    from ..prior import aggregate_posterior, fit_latent_density

    if args.components < 1 or args.molecules < 1 or args.compare < 0:
        raise MolvaeError("fit-prior: --components and --molecules must be >= 1, --compare >= 0")
    folder = Path(args.model) if args.model else default_model_dir()
    model = load_model(folder, device=args.device)
    smiles = read_smiles(args.data) if args.data else bundled("train")
    import random

    smiles = random.Random(args.seed).sample(list(smiles), min(args.molecules, len(smiles)))
    if args.method == "aggregate":
        smiles = smiles[:args.components]
        print(f"keeping the encoder posteriors of {len(smiles)} molecules (aggregate posterior)")
        density = aggregate_posterior(model, smiles)
    else:
        print(f"fitting a {args.components}-component Gaussian mixture on posterior samples of "
              f"{len(smiles)} molecules")
        density = fit_latent_density(model, smiles, n_components=args.components, seed=args.seed)
    if args.compare:
        from ..evaluate import compare_priors

        model.prior = density
        table = compare_priors(model, args.compare, seed=args.seed, device=args.device)
        density.info["comparison"] = {"n_samples": args.compare, **table}
        print(f"{'prior':<8} {'valid':>7} {'unique':>7} {'FCD/Test':>9} {'IntDiv':>7} {'Filters':>8} {'novelty':>8}")
        for name, m in table.items():
            print(f"{name:<8} {m['valid']:>7.4f} {m['unique@1000']:>7.4f} {m['FCD/Test']:>9.3f} "
                  f"{m['IntDiv']:>7.3f} {m['Filters']:>8.3f} {m.get('Novelty', float('nan')):>8.3f}")
        if not table["fitted"]["FCD/Test"] < table["normal"]["FCD/Test"]:
            print("the fitted prior does not lower FCD/Test: not saved (the model keeps N(0, I))")
            return 1
    density.save(folder)
    print(f"wrote {folder / 'prior.json'} and prior.safetensors; sampling now uses it "
          "(prior='normal' for N(0, I))")
    return 0


def register(subparsers, bench) -> None:
    p = subparsers.add_parser("train", help="train the sequence VAE on a prepared dataset or SMILES file",
                              description="Train a SequenceVAE. Writes the best model (load_model(OUT)), "
                                          "metrics.csv, summary.json and a resumable checkpoint/ into OUT.")
    p.add_argument("--data", required=True, help="prepared folder (molvae data prepare) or SMILES file")
    p.add_argument("--out", required=True, help="run/model folder to write")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across DDP processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=["cosine", "plateau", "constant"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--beta", type=float, help="final KL weight beta_max")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="any ModelConfig setting, e.g. dec_hidden=512 (repeatable)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--max-molecules", type=int, help="train on at most this many molecules")
    p.add_argument("--max-hours", type=float, help="stop after the epoch that passes this wall time")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="end this run on an exact (mid-epoch) checkpoint before SECONDS of wall time; "
                        "--resume continues it")
    p.add_argument("--plan-seconds", type=float, metavar="SECONDS",
                   help="plan the LR/KL schedules for SECONDS of training in all (over several "
                        "--time-budget runs); replaces --epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 on CUDA")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from this model folder's weights (e.g. data/models/default): its "
                        "architecture and vocabulary, beta at its final value, a fresh optimizer")
    p.set_defaults(func=_train)

    f = subparsers.add_parser("fit-prior", help="fit the latent prior that sampling draws from",
                              description="Fit a Gaussian mixture on the encodings of training molecules "
                                          "(the aggregate posterior) and store it in the model folder "
                                          "(prior.json, prior.safetensors). Sampling then draws z from "
                                          "where the decoder was trained instead of N(0, I).")
    f.add_argument("--model", help="model folder (default: the shipped model)")
    f.add_argument("--data", help="training SMILES file (default: the bundled 100k MOSES sample)")
    f.add_argument("--method", choices=["gmm", "aggregate"], default="gmm",
                   help="gmm: a Gaussian mixture fitted by EM on posterior samples (default); "
                        "aggregate: keep the posteriors of --components molecules themselves")
    f.add_argument("--components", type=int, default=128,
                   help="mixture components (default 128); with --method aggregate, molecules kept")
    f.add_argument("--molecules", type=int, default=20000, help="molecules encoded for the fit (default 20000)")
    f.add_argument("--compare", type=int, default=0, metavar="N",
                   help="measure N samples from the fitted prior against N from N(0, I) (FCD, SNN, "
                        "novelty) and save only if it lowers FCD/Test")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.set_defaults(func=_fit_prior)

    b = bench.add_parser("train", help="training throughput (molecules/s) of the default architecture")
    b.add_argument("--device", default="auto")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on a busy machine)")
    b.add_argument("--model-option", action="append", metavar="KEY=VALUE")
    b.add_argument("--json", help="also write the rows to this JSON file")
    b.add_argument("--candidates", metavar="NAMES",
                   help="instead of raw speed, train each candidate (comma-separated names from "
                        "molvae.train.CANDIDATES, or 'all') for the same time and compare the "
                        "validation NLL reached: quality per GPU-minute")
    b.add_argument("--data", help="with --candidates: prepared folder or SMILES file")
    b.add_argument("--seconds", type=float, default=60.0, help="with --candidates: training time each")
    b.add_argument("--max-molecules", type=int, help="with --candidates: train on at most this many")
    b.add_argument("--out", default="runs/bench_candidates", help="with --candidates: run folders")
    b.set_defaults(func=_bench)
