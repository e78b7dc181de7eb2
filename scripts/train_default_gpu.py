"""Train the shipped default model on the full MOSES training set on one CUDA GPU.

This is the script that produced ``data/models/default`` (see the README's figures):

    python scripts/train_default_gpu.py --data PREPARED_DIR --out RUN_DIR --export DIR --budget-s 360

1. A one-epoch smoke run on 2,048 molecules, so a broken setup fails in seconds.
2. ``molvae.train.benchmark_training`` for the default architecture and the smaller
   CPU-sized one at three batch sizes, fp32 against bf16 autocast in the same run
   (what ``molvae bench train --device cuda`` prints), saved to ``bench_train.json``.
3. Sizes the number of epochs from the measured bf16 throughput so that training fits
   ``--budget-s`` seconds, so the cosine schedule runs to its end (a run stopped by a
   wall-clock limit would end at a high learning rate).
4. ``molvae.train.train`` on the prepared data; after every epoch the best model so far,
   ``metrics.csv`` and the summary are copied to ``--export``, so a run cut short still
   leaves a usable model.
5. ``molvae.generate.benchmark_sampling`` of the trained model (30,000 prior samples).

It needs torch, selfies, pandas, safetensors and RDKit (for the per-epoch whole-molecule
reconstruction check), not Optuna: a bare GPU node only has to carry two wheels.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from molvae.data import load_prepared
from molvae.train import TrainConfig, benchmark_training, train

# The CPU-sized architecture of the first shipped model, for comparison.
CPU_ARCH = {"embed_dim": 48, "enc_hidden": 192, "dec_hidden": 384, "dec_layers": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared MOSES folder (molvae data prepare)")
    ap.add_argument("--out", required=True, help="training run folder")
    ap.add_argument("--export", required=True, help="folder that receives the model after every epoch")
    ap.add_argument("--budget-s", type=float, default=360.0, help="seconds of training to plan for")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--bench-steps", type=int, default=40)
    ap.add_argument("--max-train-molecules", type=int, default=None, help="for a dry run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    export = Path(args.export)
    export.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    dev = torch.device(args.device)
    if dev.type == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev)}, "
              f"cuDNN {torch.backends.cudnn.version()}", flush=True)

    data = load_prepared(args.data)
    # Fail fast: one short epoch through the whole path (train, validate, checkpoint)
    # before the benchmark and the long run spend the GPU lease.
    smoke = TrainConfig(epochs=1, batch_size=256, device=args.device, max_train_molecules=2048,
                        max_valid_molecules=1000, recon_eval_molecules=100)
    train(data, Path(args.out) / "smoke", smoke)
    print(f"smoke run done after {time.time() - t0:.0f} s", flush=True)

    bench = []
    for arch_name, arch in (("default", {}), ("cpu-sized", CPU_ARCH)):
        for bs in (256, 512, 1024):
            for row in benchmark_training(device=args.device, batch_size=bs, steps=args.bench_steps,
                                          warmup=5, n_molecules=8192, model=arch):
                row["architecture"] = arch_name
                bench.append(row)
                print(f"bench {arch_name:9s} bs {bs:5d} {row['precision']:4s} "
                      f"{row['ms_per_step']:7.1f} ms/step {row['molecules_per_s']:10.0f} mol/s", flush=True)
    (export / "bench_train.json").write_text(json.dumps(bench, indent=1))
    print(f"bench done after {time.time() - t0:.0f} s", flush=True)

    n_train = data.train.size(0) if args.max_train_molecules is None else min(
        args.max_train_molecules, data.train.size(0))
    speed = next(r["molecules_per_s"] for r in bench if r["architecture"] == "default"
                 and r["batch_size"] == args.batch_size and r["precision"] == ("bf16" if dev.type == "cuda" else "fp32"))
    # Per epoch: the measured step rate, plus validation and checkpointing (~5 s).
    epoch_s = n_train / speed * 1.15 + 5.0
    epochs = int(max(1, min(args.max_epochs, args.budget_s // epoch_s)))
    print(f"{n_train} training molecules, {speed:.0f} mol/s in the benchmark: planning "
          f"{epochs} epochs of ~{epoch_s:.0f} s", flush=True)

    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
                         patience=0, max_hours=args.budget_s * 1.3 / 3600,
                         max_train_molecules=args.max_train_molecules, seed=0)
    out = Path(args.out) / "default"

    def export_files(row: dict) -> None:
        for name in ("model.json", "weights.safetensors", "metrics.csv"):
            if (out / name).exists():
                shutil.copy2(out / name, export / name)
        print(f"epoch {row['epoch']}: {row['seconds']:.1f} s, {row['molecules_per_s']:.0f} mol/s, "
              f"val loss {row['val_loss']:.3f}, recon rate {row['val_recon_rate']:.3f}, "
              f"token acc {row['val_token_acc']:.3f}, active {row['active_units']} "
              f"(t={time.time() - t0:.0f} s)", flush=True)

    summary = train(data, out, config, callback=export_files)
    shutil.copy2(out / "summary.json", export / "training_summary.json")
    print(json.dumps({k: summary[k] for k in ("status", "epochs_run", "best_epoch", "best_val_loss",
                                             "seconds")}), flush=True)

    # Sampling throughput of the trained model on this device (``molvae bench sample``).
    from molvae.generate import benchmark_sampling
    from molvae.model import load_model

    model = load_model(export, device=args.device)
    result = benchmark_sampling(model, n=30000, seed=0)
    (export / "bench_sample.json").write_text(json.dumps(result, indent=1))
    print("bench sample:", json.dumps(result), f"(t={time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
