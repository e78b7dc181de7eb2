"""Experiment (not part of molvae): how far the policy's samples land from their parents.

    python scripts/experiments/policy_novelty.py [N]

Encodes the first N (512) molecules of the bundled MOSES sample with the shipped model and
decodes their posterior means, plus Gaussian noise of sd ``jitter`` (latent units), sampled
at ``temperature``: the share that come back unchanged and the mean Tanimoto (Morgan r=2, 2048
bits) of the rest to their parent, for each (jitter, temperature) pair. One seed per pair.
"""
import sys

import numpy as np
import pandas as pd
import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import AllChem

from molvae.model import load_model

PAIRS = [(0.0, 1.0), (0.0, 1.3), (0.05, 1.0), (0.1, 1.0), (0.15, 1.0), (0.2, 1.0), (0.4, 1.0)]


def fingerprint(smiles):
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return AllChem.GetMorganFingerprintAsBitVect(mol, 2, 2048) if mol is not None else None


def main(n=512):
    torch.set_num_threads(1)
    model = load_model()
    smiles = pd.read_csv("data/moses_train_100k.csv.gz").iloc[:n, 0].tolist()
    mu, logvar, ok, _ = model.try_encode(smiles)
    parents = [s for s, good in zip(smiles, ok) if good]
    mu = mu.numpy()
    sd = np.exp(0.5 * logvar.numpy())
    print(f"{len(parents)} molecules; posterior sd, median per axis: 5/50/95 % "
          + " / ".join(f"{x:.2f}" for x in np.percentile(np.median(sd, 0), [5, 50, 95])))
    canon = [Chem.CanonSmiles(s) for s in parents]
    for jitter, temperature in PAIRS:
        z = mu + jitter * np.random.default_rng(0).standard_normal(mu.shape)  # the same noise, scaled
        out = model.decode(z, greedy=False, temperature=temperature, seed=1)
        fps = [(fingerprint(o), fingerprint(c)) for o, c in zip(out, canon)]
        same = np.mean([o is not None and Chem.MolFromSmiles(o) is not None and Chem.CanonSmiles(o) == c
                        for o, c in zip(out, canon)])
        sims = [DataStructs.TanimotoSimilarity(a, b) for a, b in fps if a is not None]
        print(f"jitter {jitter:<5g} temperature {temperature:<4g} unchanged {same:.0%}  "
              f"mean Tanimoto {np.mean(sims):.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
