"""Experiment (not part of molvae): which child operators give the GP screen better molecules
to pick from, offline.

    [MADE=128] [SOURCES=graph,stoned,mix] python scripts/experiments/operator_study.py LEDGER.csv TASK [CUTS]

As ``screen_study.py``: LEDGER is a default search's ``molecules.csv`` on the PMO task TASK;
at each cut the molecules scored before it train the GP and their best 64 are the parents
(drawn by rank, as the search draws them). Each source makes MADE children, all are scored by
the oracle, and the default GP (Tanimoto on Morgan bits, UCB) keeps 32. Sources:

- ``graph``: the search's graph crossover and mutation (:func:`molvae.optimize.mutate.offspring`);
- ``stoned``: SELFIES token edits of one parent (:func:`molvae.optimize.mutate.selfies_edits`,
  STONED's mutants), new tokens from the model's vocabulary;
- ``mix``: half of each.

Printed per source, mean over the cuts: of the GP's 32 and of the oracle's best 32, how
many beat the ledger's 10th best and their mean true score.
"""
import os
import sys

import numpy as np

from molvae import pmo
from molvae.model import load_model
from molvae.optimize.mutate import offspring, selfies_edits
from molvae.optimize.surrogate import TanimotoGP

from screen_study import KEEP, ledger_cuts, parents_at  # the same cuts, parents and 10th best

MADE = int(os.environ.get("MADE", 128))


def main():
    task = sys.argv[2]
    smiles, scores, cuts = ledger_cuts(sys.argv)
    sources = os.environ.get("SOURCES", "graph,stoned,mix").split(",")
    oracle = pmo.oracle(task)
    vocab = load_model().vocab
    alphabet = [t for t in vocab.tokens[3:]]
    tot = {}
    for cut in cuts:
        s, y, top, w, tenth = parents_at(smiles, scores, cut)
        g = offspring(top, MADE, np.random.default_rng([cut, 1]), known=set(s), weights=w)
        st = selfies_edits(top, MADE, np.random.default_rng([cut, 2]), alphabet, known=set(s), weights=w,
                           max_tokens=vocab.max_len)
        pools = {"graph": g, "stoned": st,
                 "mix": g[:MADE // 2] + [c for c in st if c not in set(g[:MADE // 2])][:MADE - MADE // 2]}
        allk = sorted(set(g) | set(st))
        truth = dict(zip(allk, np.asarray(oracle(allk), dtype=float)))
        fit = TanimotoGP().fit_ledger(s, y, np.random.default_rng([cut, 3]))
        for name in sources:
            kids = pools[name]
            for how, chosen in (("gp", fit.rank(kids)), ("oracle", sorted(kids, key=lambda c: -truth[c]))):
                v = np.array([truth[c] for c in chosen[:KEEP]])
                tot.setdefault((name, how), []).append([v.mean(), (v > tenth).sum(), len(kids)])
    print(f"{task}: {len(cuts)} cuts, children {MADE} -> {KEEP}")
    print("| source | pick | mean of the 32 | beat the 10th best | children made |")
    for (name, how), rows in tot.items():
        m = np.mean(rows, axis=0)
        print(f"| {name} | {how} | {m[0]:.4f} | {m[1]:.2f} | {m[2]:.0f} |")


if __name__ == "__main__":
    main()
