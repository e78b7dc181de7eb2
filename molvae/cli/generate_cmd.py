"""`molvae sample|reconstruct|interpolate|neighbors` and `molvae bench sample`."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MolvaeError

MODEL_HELP = "model folder (default: the pretrained model shipped in data/models/default)"


def _add_model(p) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def register(sub, bench) -> None:
    p = sub.add_parser("sample", help="sample molecules from the prior N(0, I)")
    _add_model(p)
    p.add_argument("-n", type=int, default=1000, help="number of samples")
    p.add_argument("--out", default="samples.csv", help="CSV to write")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="most likely token instead of sampling")
    p.add_argument("--prior", choices=["auto", "normal", "fitted"], default="auto",
                   help="where z comes from: the model's fitted latent prior when it has one "
                        "(auto, the default), N(0, I) (normal), or the fitted one (fitted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", default=None,
                   help="training SMILES for the 'novel' column (default: the bundled MOSES sample)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reconstruct", help="encode and decode molecules; report the exact-reconstruction rate")
    _add_model(p)
    p.add_argument("input", help="SMILES file (.csv/.smi, optionally .gz)")
    p.add_argument("--out", default=None,
                   help="CSV to write (default: the CSV goes to stdout, the summary to stderr)")
    p.add_argument("--limit", type=int, default=None, help="only the first N molecules")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("interpolate", help="decode the latent path between two molecules")
    _add_model(p)
    p.add_argument("smiles_a")
    p.add_argument("smiles_b")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--method", choices=["slerp", "linear"], default="slerp")
    p.add_argument("--out", default=None, help="also write the path as CSV")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("neighbors", help="analogs decoded around a lead's encoding")
    _add_model(p)
    p.add_argument("smiles")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--radius", type=float, default=1.0, help="in prior standard deviations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the analogs as CSV")
    p.set_defaults(func=cmd_neighbors)

    b = bench.add_parser("sample", help="valid unique molecules per second, network vs chemistry time")
    _add_model(b)
    b.add_argument("-n", type=int, default=20000)
    b.add_argument("--out", default=None, help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench)

    b = bench.add_parser("decode", help="greedy decoding speed: hand-stepped GRU vs nn.GRU, same run")
    _add_model(b)
    b.add_argument("-n", type=int, default=2048, help="latent points decoded per batch size")
    b.add_argument("--batch-sizes", default="16,64,256", help="comma-separated (default 16,64,256)")
    b.add_argument("--repeats", type=int, default=2, help="alternating runs per path; the fastest counts")
    b.add_argument("--out", default=None, help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_decode)


def cmd_bench_decode(args) -> int:
    from ..generate import benchmark_decoding

    try:
        sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes:
        raise MolvaeError(f"--batch-sizes: expected comma-separated whole numbers such as 16,64,256, "
                          f"got {args.batch_sizes[:80]!r}")
    rows = benchmark_decoding(_load(args), args.n, sizes, repeats=args.repeats)
    print(f"{'device':>8} {'precision':>9} {'batch':>6} {'nn.GRU mol/s':>13} {'fused mol/s':>12} "
          f"{'speedup':>8} {'same tokens as fp32':>20}")
    for r in rows:
        print(f"{r['device']:>8} {'fp32':>9} {r['batch_size']:>6} {r['reference_per_s']:>13,.0f} "
              f"{r['fused_per_s']:>12,.0f} {r['speedup']:>7.2f}x {str(r['identical']):>20}")
        if "bf16_fused_per_s" in r:
            print(f"{r['device']:>8} {'bf16':>9} {r['batch_size']:>6} {r['bf16_reference_per_s']:>13,.0f} "
                  f"{r['bf16_fused_per_s']:>12,.0f} {r['bf16_speedup']:>7.2f}x "
                  f"{r['bf16_same_rows']:>19.1%} ({r['bf16_vs_fp32_fused']:.2f}x fp32 fused)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


def _load(args):
    from ..model import load_model

    return load_model(args.model, device=args.device)


def _training_set(path: str | None) -> tuple[set[str], str]:
    from ..data import BUNDLED, read_smiles

    src = Path(path) if path else BUNDLED["train"]
    return set(read_smiles(src)), str(src)


def _check_out(args) -> None:
    # before any work: a run must not sample for minutes and then fail to write
    from ..data import check_output_file

    if args.out:
        check_output_file(args.out)


def cmd_sample(args) -> int:
    _check_out(args)  # before importing torch: seconds on a busy machine
    from ..generate import sample

    model = _load(args)
    train, src = _training_set(args.train)
    table = sample(model, args.n, greedy=args.greedy, temperature=args.temperature, seed=args.seed,
                   training=train, prior=args.prior)
    table.to_csv(args.out, index=False)
    n = len(table)
    valid = int(table["valid"].sum())
    print(f"{n:,} samples -> {args.out}")
    print(f"valid {valid / n:.4f}  unique {table['unique'].sum() / max(valid, 1):.4f}  "
          f"novel {table['novel'].sum() / max(valid, 1):.4f} (vs {src})")
    return 0


def cmd_reconstruct(args) -> int:
    import sys


    if args.limit is not None and args.limit < 1:
        raise MolvaeError(f"--limit must be >= 1, got {args.limit}")
    _check_out(args)
    from ..data import read_smiles
    from ..generate import reconstruct, reconstruction_rate

    model = _load(args)
    smiles = read_smiles(args.input)[: args.limit]
    table = reconstruct(model, smiles)
    # without --out the table is the output (stdout, pipeable) and the summary goes to stderr
    report = sys.stdout if args.out else sys.stderr
    if args.out:
        table.to_csv(args.out, index=False)
    else:
        table.to_csv(sys.stdout, index=False)
    print(f"{len(table):,} molecules, {int(table['encoded'].sum()):,} encodable"
          + (f" -> {args.out}" if args.out else ""), file=report)
    print(f"exact reconstruction rate: {reconstruction_rate(table):.4f}", file=report)
    return 0


def cmd_interpolate(args) -> int:
    _check_out(args)
    from ..generate import interpolate

    path = interpolate(_load(args), args.smiles_a, args.smiles_b, steps=args.steps, method=args.method)
    if args.out:
        path.to_csv(args.out, index=False)
    with_dup = path.assign(duplicate=path["duplicate"].map({True: "(same)", False: ""}))
    print(with_dup.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


def cmd_neighbors(args) -> int:
    _check_out(args)
    from ..generate import neighbors

    table = neighbors(_load(args), args.smiles, n=args.n, radius=args.radius, seed=args.seed)
    if args.out:
        table.to_csv(args.out, index=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def cmd_bench(args) -> int:
    from ..chem import default_workers
    from ..generate import benchmark_sampling

    model = _load(args)
    rows = [benchmark_sampling(model, args.n, workers=w) for w in sorted({1, default_workers()})]
    print(f"{'device':>8} {'workers':>7} {'samples':>8} {'valid uniq':>10} {'network s':>9} "
          f"{'chem s':>8} {'total s':>8} {'v.u./s':>8}")
    for r in rows:
        print(f"{r['device']:>8} {r['workers']:>7} {r['samples']:>8,} {r['valid_unique']:>10,} "
              f"{r['network_s']:>9.2f} {r['chemistry_s']:>8.2f} {r['total_s']:>8.2f} {r['valid_unique_per_s']:>8,.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0
