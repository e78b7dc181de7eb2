"""Train the default model in short GPU jobs (at most 10 minutes each) that add up to one run.

One invocation is one job. The first job picks the architecture, the later ones continue::

    # job 1: smoke run, candidates compared for --candidates-s each, then the first chunk
    python scripts/train_default_gpu.py --data PREP --run RUN --export $OUT --budget-s 540 --plan-s 1000
    # job 2 (a later lease; --restore unpacks job 1's export): the second chunk, then the
    # latent prior is fitted and the model evaluated (FCD of both priors, 30k samples)
    python scripts/train_default_gpu.py --data PREP --run RUN --export $OUT --budget-s 540 \
        --restore data/models/training

1. A smoke run on 2,048 molecules (seconds), so a broken setup fails before the lease is spent.
2. First job only: ``molvae.train.benchmark_candidates`` trains each candidate (GRU at
   batch 1024/2048, free bits against dead latent units, a transformer decoder) for ``--candidates-s`` seconds of
   planned schedule and ranks them by validation NLL, i.e. quality per GPU-minute
   (``molvae bench train --candidates``); the best is written to ``RUN/plan.json``.
3. ``train(..., TrainConfig(plan_seconds=--plan-s, time_budget_s=what is left))``: the LR and
   KL schedules span ``--plan-s`` seconds of training in all, and this job ends on an exact
   mid-epoch checkpoint when its budget runs out. The next job resumes it (``resume=True``).
4. When the plan is complete: fit the latent prior (``molvae fit-prior``) and measure
   ``compare_priors`` (FCD of N(0, I) against the fitted prior, same run), then the MOSES
   metrics of 30,000 samples and the reconstruction rate (``evaluate_model``).
5. ``--export`` receives: ``checkpoint.tar`` (the resumable run, for the next job), the model
   files, ``plan.json``, ``candidates.json``, ``metrics.csv``, ``moses_metrics.json``,
   ``prior_comparison.json``.

A dry run on CPU at small scale checks the whole path (it is what the test suite cannot):
``--device cpu --max-train-molecules 3000 --budget-s 120 --plan-s 60 --candidates-s 8
--eval-samples 300``.

One job instead of two (a lease of 15 minutes in all, where a 39 MB checkpoint cannot come
back through a 16 MiB-per-file channel): ``--settings JSON`` fixes the plan without the
candidate runs, ``--plan-s auto`` plans the schedule for what the job's budget leaves, and
``--throughput`` first measures molecules/s of a few batch sizes and precisions
(``benchmark_training``; ``bench_train.json``), from which ``"bf16": "auto"`` takes the faster
precision. Where RDKit is not installed (a GPU image), per-epoch reconstruction is skipped
and the evaluation is left to a CPU (``molvae fit-prior``, ``molvae evaluate``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tarfile
import time
from pathlib import Path

import torch

from molvae.data import load_prepared
from molvae.train import (CANDIDATES, TrainConfig, benchmark_candidates, benchmark_training,
                          find_checkpoint, train)

FIRST_JOB_CANDIDATES = ["gru-b1024", "gru-b2048", "gru-b2048-freebits", "transformer-b2048"]


def _export(run: Path, export: Path, checkpoint: bool = True) -> None:
    for name in ("model.json", "weights.safetensors", "metrics.csv", "summary.json", "plan.json",
                 "prior.json", "prior.safetensors"):
        if (run / name).exists():
            shutil.copy2(run / name, export / name)
    ckpt = find_checkpoint(run)
    if ckpt is not None and checkpoint:
        with tarfile.open(export / "checkpoint.tar.tmp", "w") as tar:
            tar.add(ckpt, arcname="checkpoint")
        (export / "checkpoint.tar.tmp").replace(export / "checkpoint.tar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared MOSES folder (molvae data prepare)")
    ap.add_argument("--run", required=True, help="the training run folder (kept across jobs)")
    ap.add_argument("--export", required=True, help="folder that receives what must be kept ($OUT)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall seconds this job may train")
    ap.add_argument("--plan-s", default="1000",
                    help="training seconds of the whole plan, or 'auto': what this job's budget leaves")
    ap.add_argument("--settings", help="JSON training settings: skip the candidates and use these")
    ap.add_argument("--throughput", metavar="BATCHES",
                    help="comma-separated batch sizes: measure mol/s of each (fp32 and bf16) first")
    ap.add_argument("--candidates-s", type=float, default=35.0, help="seconds of training per candidate")
    ap.add_argument("--candidates", default=",".join(FIRST_JOB_CANDIDATES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-train-molecules", type=int, default=None, help="for a dry run")
    ap.add_argument("--no-checkpoint-export", action="store_true",
                    help="leave checkpoint.tar out of the export (a one-job plan; files back are capped)")
    ap.add_argument("--eval-samples", type=int, default=30000)
    ap.add_argument("--prior-components", type=int, default=128)
    ap.add_argument("--restore", metavar="DIR",
                    help="a previous job's export (checkpoint.tar, plan.json): continue its run")
    ap.add_argument("--tiny", action="store_true",
                    help="dry run on a CPU: tiny networks and batches of 64 for every candidate")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    run, export = Path(args.run), Path(args.export)
    export.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    try:
        import rdkit  # noqa: F401  (reconstruction checks compare canonical SMILES)
        have_rdkit = True
    except ImportError:
        have_rdkit = False
        print("RDKit is not installed: no reconstruction checks while training, and the "
              "evaluation is left to a CPU", flush=True)
    recon = {} if have_rdkit else {"recon_eval_molecules": 0}
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 layers outside cuDNN's GRU
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev)}, "
              f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    if args.restore:  # a fresh machine: the run folder comes back from the last export
        src = Path(args.restore)
        run.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src / "checkpoint.tar") as tar:
            tar.extractall(run, filter="data")  # plain files only: no links, no absolute paths
        shutil.copy2(src / "plan.json", run / "plan.json")
        print(f"restored {find_checkpoint(run)} from {src}", flush=True)
    data = load_prepared(args.data)
    base = {"max_train_molecules": args.max_train_molecules} if args.max_train_molecules else {}
    if args.tiny:
        base.update(batch_size=64, model={"embed_dim": 16, "enc_hidden": 32, "dec_hidden": 64,
                                          "dec_layers": 1, "latent_dim": 8})

    smoke = TrainConfig(epochs=1, batch_size=256, device=args.device, max_train_molecules=2048,
                        max_valid_molecules=500, recon_eval_molecules=50 if have_rdkit else 0,
                        model=base.get("model", {}))
    shutil.rmtree(run.parent / (run.name + "-smoke"), ignore_errors=True)
    train(data, run.parent / (run.name + "-smoke"), smoke)
    print(f"smoke run done after {time.time() - t0:.0f} s", flush=True)

    fixed = json.loads(args.settings) if args.settings else None
    if args.throughput:
        rows = []
        model_over = (fixed or {}).get("model") or base.get("model")
        for b in [int(x) for x in args.throughput.split(",")]:
            rows += benchmark_training(args.device, batch_size=b, steps=15, warmup=3,
                                       n_molecules=max(2 * b, 4096), model=model_over)
            print(f"throughput batch {b}: " + ", ".join(
                f"{r['precision']} {r['molecules_per_s']:.0f} mol/s ({r['ms_per_step']} ms/step)"
                for r in rows[-2:] if r["batch_size"] == b), flush=True)
        (export / "bench_train.json").write_text(json.dumps(rows, indent=1))
        if fixed is not None and fixed.get("bf16") == "auto":
            same = [r for r in rows if r["batch_size"] == fixed.get("batch_size")] or rows
            fixed["bf16"] = max(same, key=lambda r: r["molecules_per_s"])["precision"] == "bf16"
            print(f"precision: {'bf16' if fixed['bf16'] else 'fp32'} (the faster)", flush=True)
    if fixed is not None and fixed.get("bf16") == "auto":
        fixed["bf16"] = True

    plan_file = run / "plan.json"
    if find_checkpoint(run) is None and fixed is not None:
        run.mkdir(parents=True, exist_ok=True)
        plan_s = (0.85 * (args.budget_s - (time.time() - t0)) if args.plan_s == "auto"
                  else float(args.plan_s))
        plan_file.write_text(json.dumps({"candidate": "settings", "plan_seconds": plan_s,
                                         "settings": fixed}, indent=1))
        print(f"plan: {json.dumps(fixed)} for {plan_s:.0f} s of training", flush=True)
    elif find_checkpoint(run) is None:
        names = [n.strip() for n in args.candidates.split(",") if n.strip()]
        rows = benchmark_candidates(data, run.parent / (run.name + "-candidates"), names,
                                    seconds=args.candidates_s, device=args.device, base=base)
        (export / "candidates.json").write_text(json.dumps(rows, indent=1))
        for r in sorted(rows, key=lambda r: r["val_nll"]):
            print(f"candidate {r['candidate']:<20} {r['molecules_per_s']:>9.0f} mol/s  val NLL "
                  f"{r['val_nll']:.2f}  recon {r['val_recon_rate']:.3f}", flush=True)
        best = min(rows, key=lambda r: r["val_nll"])["candidate"]
        run.mkdir(parents=True, exist_ok=True)
        plan_s = (0.85 * (args.budget_s - (time.time() - t0)) if args.plan_s == "auto"
                  else float(args.plan_s))
        plan_file.write_text(json.dumps({"candidate": best, "plan_seconds": plan_s,
                                         "settings": CANDIDATES[best]}, indent=1))
        print(f"plan: {best} for {plan_s:.0f} s of training (t={time.time() - t0:.0f} s)", flush=True)
    plan = json.loads(plan_file.read_text())
    left = args.budget_s - (time.time() - t0)
    settings = {**plan["settings"], **{k: v for k, v in base.items() if k != "model"}}
    settings["model"] = {**plan["settings"].get("model", {}), **base.get("model", {})}
    config = TrainConfig(**{"epochs": 1, "patience": 0, "device": args.device, "seed": 0, **recon, **settings,
                            "plan_seconds": plan["plan_seconds"], "time_budget_s": max(30.0, left)})

    def progress_line(row: dict) -> None:
        print(f"epoch {row['epoch']}: {row['molecules_per_s']:.0f} mol/s, val loss {row['val_loss']:.3f}, "
              f"recon rate {row['val_recon_rate']:.3f}, active {row['active_units']} "
              f"(t={time.time() - t0:.0f} s)", flush=True)
        _export(run, export, not args.no_checkpoint_export)

    summary = train(data, run, config, resume=True, callback=progress_line)
    _export(run, export, not args.no_checkpoint_export)
    print(json.dumps({k: summary[k] for k in ("status", "epochs_run", "best_epoch", "best_val_loss")}),
          flush=True)
    if summary["status"] != "completed":
        print(f"chunk done at t={time.time() - t0:.0f} s; the next job resumes from checkpoint.tar")
        return
    if not have_rdkit:
        print(f"training done at t={time.time() - t0:.0f} s; evaluate on a CPU: molvae fit-prior, "
              "molvae evaluate", flush=True)
        return

    from molvae.data import bundled
    from molvae.evaluate import compare_priors, evaluate_model
    from molvae.model import load_model
    from molvae.prior import fit_latent_density

    model = load_model(run, device=args.device)
    train_smiles = bundled("train")
    model.prior = fit_latent_density(model, train_smiles[:50000], n_components=args.prior_components)
    table = compare_priors(model, args.eval_samples, device=args.device)
    (export / "prior_comparison.json").write_text(json.dumps(table, indent=1, default=float))
    print("prior comparison:", json.dumps({k: v.get("FCD/Test") for k, v in table.items()}), flush=True)
    if table["fitted"]["FCD/Test"] < table["normal"]["FCD/Test"]:
        model.prior.info["comparison"] = {"n_samples": args.eval_samples, **table}
        model.prior.save(run)
    else:
        model.prior = None
    metrics = evaluate_model(model, args.eval_samples, device=args.device)
    (export / "moses_metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    _export(run, export, not args.no_checkpoint_export)
    print("MOSES metrics:", json.dumps(metrics, default=float), f"(t={time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
