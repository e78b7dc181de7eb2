"""Experiment (not part of molvae): an elitist GA in latent space (rank-weighted parents from
the 100 best, uniform crossover, Gaussian mutation at 0.3x/1x/3x of 0.3 sd), greedy decoding.

    python scripts/experiments/latent_ga.py celecoxib_rediscovery,ranolazine_mpo 2000

Figures and what they showed: docs/benchmarks.md, "Adapting the model during the search".
"""
import sys, time, json
import numpy as np, torch
from molvae.model import load_model
from molvae import pmo, chem
from molvae.optimize.outputs import top_k_auc
torch.set_num_threads(2)

def run(task, budget, seed, pop=100, batch=64, sigma=0.3, pc=0.5, init=500, greedy=True, rank_k=0.01, scale="post"):
    rng = np.random.default_rng(seed); torch.manual_seed(seed)
    model = load_model(); oracle = pmo.oracle(task)
    seen = {}; order = []; P = []  # (score, smiles, z)
    zs = model.sample_prior(5000, seed=seed).cpu().numpy()
    sd = zs.std(0)
    def evaluate(z):
        smi = model.decode(torch.as_tensor(z, dtype=torch.float32), greedy=greedy, seed=int(rng.integers(2**31)))
        new = {}
        for s, zi in zip(smi, z):
            if s and chem.is_valid_molecule(s) and s not in seen and s not in new:
                new[s] = zi
        items = list(new.items())[:budget - len(order)]
        if items:
            for (s, zi), v in zip(items, oracle([s for s, _ in items])):
                seen[s] = v; order.append(v); P.append((v, s, zi))
        return len(items)
    evaluate(zs[:init])
    t0 = time.perf_counter(); stall = 0
    while len(order) < budget:
        P.sort(key=lambda p: -p[0]); del P[pop:]
        w = 1.0 / (rank_k * len(P) + np.arange(len(P))); w /= w.sum()
        Z = np.stack([p[2] for p in P])
        a = rng.choice(len(P), batch, p=w); b = rng.choice(len(P), batch, p=w)
        child = Z[a].copy()
        cross = rng.random(batch) < pc
        u = rng.random((batch, Z.shape[1])) < 0.5
        child[cross] = np.where(u[cross], Z[a][cross], Z[b][cross])
        child += rng.standard_normal(child.shape) * sd * sigma * rng.choice([0.3, 1.0, 3.0], (batch, 1))
        n = evaluate(child)
        stall = 0 if n else stall + 1
        if stall > 50: break
    auc = top_k_auc(order, 10, budget); top = sorted(order)[::-1][:10]
    return dict(task=task, auc=auc, top1=top[0], top10=float(np.mean(top)), calls=len(order), wall=time.perf_counter()-t0)

if __name__ == "__main__":
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    for t in sys.argv[1].split(","):
        print(json.dumps(run(t, int(sys.argv[2]), 0, **kw)), flush=True)
