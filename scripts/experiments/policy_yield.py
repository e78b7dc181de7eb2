"""Experiment (not part of molvae): where an adapted run's molecules come from.

    python scripts/experiments/policy_yield.py RUN_DIR [RUN_DIR ...]

For a run folder of ``molvae optimize`` (or ``molvae.optimize(..., out=DIR)``) with the
default adaptation, prints per source (the CMA-ES sampler: ledger rows with trial >= 0; the
policy's sampled variants: trial -1; graph crossover/mutation children, ``retrain:graph=N``:
trial -2) the points decoded, the new molecules they gave and the share of them, and how
many of the final top-10 and top-100 each source found. The sampler's points are the study
journal's trials; the policy's are the summary's trials less those and the graph children
(which are new molecules, not decodes).
"""
import json
import sys
from pathlib import Path

import pandas as pd


def report(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    ledger = pd.read_csv(run / "molecules.csv")
    with open(run / "study.journal") as fh:
        asked = sum(1 for line in fh if '"op_code":4' in line)
    sources = {"sampler": ledger["trial"] >= 0, "policy": ledger["trial"] == -1, "graph": ledger["trial"] == -2}
    graph = int(sources["graph"].sum())
    decoded = {"sampler": asked, "policy": summary["trials"] - asked - graph, "graph": graph}
    first = (summary.get("adapt_oracle_calls") or [None])[0]
    ranked = ledger.sort_values("score", ascending=False)
    print(f"{run}: {len(ledger):,} molecules, first adaptation at call {first}, "
          f"AUC top-10 {summary['auc_top10']:.4f}, wall {summary['wall_s']:.0f} s")
    print("| source | points decoded | new molecules | new per decode | in top-10 | in top-100 |")
    print("|---|---|---|---|---|---|")
    for name, mask in sources.items():
        new = int(mask.sum())
        top10 = int(mask.loc[ranked.index[:10]].sum())
        top100 = int(mask.loc[ranked.index[:100]].sum())
        rate = new / decoded[name] if decoded[name] else float("nan")
        print(f"| {name} | {decoded[name]:,} | {new:,} | {rate:.1%} | {top10} | {top100} |")
    if first:
        late = ledger[ledger["oracle_call"] > first]
        print(f"after the first adaptation: {int((late.trial >= 0).sum()):,} new from the sampler, "
              f"{int((late.trial == -1).sum()):,} from the policy")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        report(Path(arg))
