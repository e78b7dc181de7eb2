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
    summary = train(args.data, args.out, TrainConfig.from_dict(settings), resume=args.resume)
    last = summary["last"] or {}
    print(f"{summary['status']}: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
          f"(val loss {summary['best_val_loss'] or float('nan'):.3f}, reconstruction {last.get('val_recon_rate', float('nan')):.3f} "
          f"at the last epoch); model in {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..train import benchmark_training

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
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 on CUDA")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.set_defaults(func=_train)

    b = bench.add_parser("train", help="training throughput (molecules/s) of the default architecture")
    b.add_argument("--device", default="auto")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on a busy machine)")
    b.add_argument("--model-option", action="append", metavar="KEY=VALUE")
    b.add_argument("--json", help="also write the rows to this JSON file")
    b.set_defaults(func=_bench)
