"""Experiment (not part of molvae): how often the shipped model's prior writes valsartan's
SMARTS, the gate of PMO's valsartan_smarts task (score 0 without it).

    python scripts/experiments/valsartan_prior_rate.py [N_PER_MODE]

Samples N_PER_MODE (default 20,000) molecules from the prior, greedy, sampled at T=1 and
sampled at T=1.3, in chunks of 2,000 with seeds 100, 101, ..., and counts those that match
the task's SMARTS and those with a biphenyl.
"""
import sys

import torch
from rdkit import Chem, RDLogger

from molvae.model import load_model

VALSARTAN_SMARTS = "CN(C=O)Cc1ccc(c2ccccc2)cc1"   # molvae.pmo / TDC / GuacaMol


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    torch.set_num_threads(1)
    RDLogger.DisableLog("rdApp.*")
    model = load_model()
    gate, biphenyl = Chem.MolFromSmarts(VALSARTAN_SMARTS), Chem.MolFromSmarts("c1ccc(cc1)-c1ccccc1")
    for greedy, temperature in ((True, 1.0), (False, 1.0), (False, 1.3)):
        valid = hits = bip = 0
        for k in range((n + 1999) // 2000):
            for s in model.sample(2000, seed=100 + k, greedy=greedy, temperature=temperature):
                mol = Chem.MolFromSmiles(s) if s else None
                if mol is None:
                    continue
                valid += 1
                hits += mol.HasSubstructMatch(gate)
                bip += mol.HasSubstructMatch(biphenyl)
        mode = "greedy" if greedy else f"sampled T={temperature:g}"
        print(f"{mode}: {valid} molecules, {hits} match the valsartan SMARTS, {bip} have a biphenyl", flush=True)


if __name__ == "__main__":
    main()
