"""`molvae data prepare|fetch` and `molvae bench data`."""

from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub, bench) -> None:
    data = sub.add_parser("data", help="prepare and fetch datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")

    p = dsub.add_parser("prepare", help="standardize, deduplicate, encode and split a SMILES file")
    p.add_argument("input", help=".csv/.tsv/.smi/.txt file (optionally .gz; the delimiter is read from the "
                                 "header line), or 'bundled' for the MOSES 100k sample")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--smiles-column", default=None, help="column holding SMILES (default: smiles/SMILES)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--max-len", type=int, default=None,
                   help="longest molecule kept, in SELFIES tokens, 1 to 1000 (default 100)")
    p.add_argument("--vocab", default=None, help="reuse this vocab.json (e.g. a model's) instead of building one")
    p.add_argument("--no-stereo", action="store_true", help="drop stereochemistry")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="redo even if a cached preparation matches")
    p.set_defaults(func=cmd_prepare)

    f = dsub.add_parser("fetch", help="download a public dataset into the cache folder")
    f.add_argument("name", choices=["moses"])
    f.add_argument("--dest", default=None, help="folder (default: $MOLVAE_CACHE/moses)")
    f.add_argument("--wheel", default=None, help="use an already downloaded molsets wheel")
    f.set_defaults(func=cmd_fetch)

    b = bench.add_parser("data", help="preparation throughput, serial vs all cores")
    b.add_argument("--n", type=int, default=20000, help="molecules from the bundled sample")
    b.add_argument("--out", default=None, help="also write the figures as JSON here")
    b.set_defaults(func=cmd_bench)


def _input_path(text: str) -> Path:
    from ..data import BUNDLED

    return BUNDLED["train"] if text == "bundled" else Path(text)


def cmd_prepare(args) -> int:
    from ..data import prepare

    t0 = time.perf_counter()
    d = prepare(_input_path(args.input), args.out, seed=args.seed, valid_fraction=args.valid_fraction,
                max_len=args.max_len, vocab=args.vocab, keep_stereo=not args.no_stereo,
                smiles_column=args.smiles_column, workers=args.workers, force=args.force)
    s = d.summary
    print(f"rows in:    {s['rows_in']:>10,}")
    print(f"kept:       {s['kept']:>10,}  (train {s['train']:,}, valid {s['valid']:,})")
    print(f"duplicates: {s['duplicates']:>10,}")
    print(f"rejected:   {s['rejected']:>10,}  (reasons in {Path(args.out) / 'rejects.csv'})")
    print(f"vocabulary: {s['vocab_size']} tokens, max length {s['max_len']} SELFIES tokens")
    print(f"written to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_fetch(args) -> int:
    from ..data import fetch_moses

    paths = fetch_moses(args.dest, args.wheel)
    for k, p in paths.items():
        print(f"{k:15s} {p}")
    return 0


def cmd_bench(args) -> int:
    import tempfile

    import pandas as pd

    from ..chem import default_workers
    from ..data import BUNDLED, prepare, read_smiles

    smiles = read_smiles(BUNDLED["train"])[: args.n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "input.csv"
        pd.DataFrame({"smiles": smiles}).to_csv(src, index=False)
        for workers in sorted({1, default_workers()}):
            t0 = time.perf_counter()
            prepare(src, Path(tmp) / f"w{workers}", workers=workers, progress=False, force=True)
            dt = time.perf_counter() - t0
            rows.append({"workers": workers, "molecules": len(smiles), "seconds": round(dt, 2),
                         "molecules_per_s": round(len(smiles) / dt, 1)})
    base = rows[0]["molecules_per_s"]
    print(f"{'workers':>8} {'molecules':>10} {'seconds':>8} {'mol/s':>9} {'speed-up':>9}")
    for r in rows:
        r["speedup"] = round(r["molecules_per_s"] / base, 2)
        print(f"{r['workers']:>8} {r['molecules']:>10,} {r['seconds']:>8.2f} {r['molecules_per_s']:>9,.0f} {r['speedup']:>8.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0
