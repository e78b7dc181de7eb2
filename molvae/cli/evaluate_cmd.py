"""`molvae evaluate`: MOSES metrics of a model's prior samples or of a file of generated SMILES.

    molvae evaluate --model data/models/default -n 30000 --out metrics.json   # sample, then score
    molvae evaluate --generated samples.csv --train data/moses_train_100k.csv.gz --out metrics.json
    molvae evaluate --build-reference data/reference    # maintainers: rebuild shipped statistics
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from ..errors import MolvaeError

log = logging.getLogger(__name__)


def register(sub, bench) -> None:
    p = sub.add_parser("evaluate", help="MOSES metrics (validity, uniqueness, FCD, SNN, ...) of generated SMILES")
    p.add_argument("--model", default=None,
                   help="model folder to sample and evaluate (default: the shipped model, when "
                        "--generated is not given); adds reconstruction rate and active units")
    p.add_argument("-n", "--n-samples", type=int, default=30000,
                   help="prior samples drawn from --model (default 30000, the MOSES protocol)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --model)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --model)")
    p.add_argument("--prior", choices=["auto", "normal", "fitted"], default="auto",
                   help="with --model: z from the model's fitted latent prior when it has one "
                        "(auto), from N(0, I) (normal), or the fitted one (fitted)")
    p.add_argument("--samples-out", default=None,
                   help="with --model: also write the sampled molecules to this CSV")
    p.add_argument("--generated", default=None,
                   help="CSV of generated SMILES (column SMILES or smiles; an empty cell is an invalid decode)")
    p.add_argument("--train", default=None,
                   help="training SMILES for Novelty (with --model the bundled 100k MOSES sample "
                        "is the default; with --generated Novelty is omitted without it)")
    p.add_argument("--test", default="test",
                   help="reference set: 'test' (bundled MOSES test), a SMILES file, or 'none'")
    p.add_argument("--test-scaffolds", default="test_scaffolds",
                   help="scaffold reference set: 'test_scaffolds', a SMILES file, or 'none'")
    p.add_argument("--out", default=None, help="write the metrics as JSON (NaN as null)")
    p.add_argument("--n-jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (ChemNet and similarity)")
    p.add_argument("--build-reference", metavar="DIR", default=None,
                   help="recompute the shipped test-set statistics into DIR and exit")
    p.set_defaults(func=cmd_evaluate)


def _reference(value: str):
    """A bundled set's name as is, 'none' as None, anything else as a SMILES file."""
    from ..data import read_smiles
    from ..metrics import REFERENCE_SETS

    if value.lower() == "none":
        return None
    if value in REFERENCE_SETS:
        return value
    return read_smiles(value)


def cmd_evaluate(args) -> int:
    from ..data import read_smiles
    from ..metrics import build_reference, format_table, moses_metrics

    if args.build_reference:
        t0 = time.perf_counter()
        for path in build_reference(args.build_reference, n_jobs=args.n_jobs, device=args.device):
            print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
        print(f"reference statistics built in {time.perf_counter() - t0:.0f} s")
        return 0
    if args.generated and args.model:
        raise MolvaeError("evaluate: give either --model (sample and evaluate) or --generated FILE.csv, not both")
    if args.n_samples < 1:
        raise MolvaeError(f"evaluate: --n-samples must be >= 1, got {args.n_samples}")
    train = read_smiles(args.train) if args.train else None
    t0 = time.perf_counter()
    if args.generated:
        generated = read_smiles(args.generated)
        metrics = moses_metrics(generated, train=train, test=_reference(args.test),
                                test_scaffolds=_reference(args.test_scaffolds),
                                n_jobs=args.n_jobs, device=args.device)
        what = f"{len(generated)} molecules"
    else:
        from ..evaluate import evaluate_model
        from ..model import load_model

        model = load_model(args.model, device=args.device)
        print(f"sampling {args.n_samples} molecules from {model}")
        metrics = evaluate_model(model, args.n_samples, train=train, seed=args.seed,
                                 temperature=args.temperature, test=_reference(args.test),
                                 test_scaffolds=_reference(args.test_scaffolds),
                                 n_jobs=args.n_jobs, device=args.device,
                                 samples_csv=args.samples_out, prior=args.prior)
        what = f"{args.n_samples} samples of {args.model or 'the default model'}"
    seconds = time.perf_counter() - t0
    print(format_table(metrics))
    print(f"{what} evaluated in {seconds:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(clean, indent=1) + "\n")
        os.replace(tmp, out)  # atomic: a half-written metrics file never appears
        log.info("wrote %s", out)
    return 0
