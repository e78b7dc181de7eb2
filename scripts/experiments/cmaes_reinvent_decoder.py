"""Experiment (not part of molvae): CMA-ES over the PCA box chooses z, the decoder samples a
molecule from each z and learns from every batch by REINVENT's augmented likelihood
(prior log p + sigma * score, regressed by the agent's log p; replay of the 24 best).

    python scripts/experiments/cmaes_reinvent_decoder.py celecoxib_rediscovery 2000 '{"rl": true, "greedy": false}'

Figures and what they showed: docs/benchmarks.md, "Adapting the model during the search".
"""
import sys, time, json, copy
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from cmaes import CMA
from molvae.model import load_model
from molvae import pmo, chem
from molvae.optimize.outputs import top_k_auc
from molvae.optimize.region import fit_latent_pca, pca_space
sys.path.insert(0, str(Path(__file__).parent))
from reinvent_decoder import seq_logp  # noqa: E402
torch.set_num_threads(2)

def run(task, budget, seed, pop=32, sigma=500., lr=5e-4, replay=24, greedy=False, temp=1.0, rl=True, k=16, bound=3.0, updates=1, restart=True, dupzero=True, scaffold_cap=0):
    buckets = {}
    rng = np.random.default_rng(seed); torch.manual_seed(seed)
    model = load_model(); oracle = pmo.oracle(task)
    prior = model.module; prior.eval()
    agent = copy.deepcopy(prior)
    for p in prior.parameters(): p.requires_grad_(False)
    params = [p for n, p in agent.named_parameters() if n.split(".")[0] in ("latent_to_hidden", "decoder", "output")]
    for n, p in agent.named_parameters():
        if all(p is not q for q in params): p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    space = pca_space(fit_latent_pca(model), k, bound)
    bounds = np.array([[-bound, bound]] * k)
    cma = CMA(mean=np.zeros(k), sigma=bound / 3, bounds=bounds, seed=seed, population_size=pop)
    seen = {}; order = []; memory = []
    t0 = time.perf_counter(); ttrain = 0; stall = 0
    while len(order) < budget:
        X = np.stack([cma.ask() for _ in range(pop)])
        z = torch.as_tensor(space.to_latent(X), dtype=torch.float32)
        with torch.no_grad():
            toks = agent.generate(z, greedy=greedy, temperature=temp)
        smiles = [s if s and chem.is_valid_molecule(s) else None for s in model.ids_to_smiles(toks)]
        new = [s for s in dict.fromkeys(x for x in smiles if x) if s not in seen][:budget - len(order)]
        if new:
            for s, v in zip(new, oracle(new)):
                seen[s] = v; order.append(v)
        newset = set(new)
        score = [seen.get(s, 0.0) if s else 0.0 for s in smiles]
        rlscore = [v if (s in newset or not dupzero) else 0.0 for s, v in zip(smiles, score)]
        if scaffold_cap:  # REINVENT's scaffold memory: a crowded scaffold earns nothing
            from rdkit.Chem.Scaffolds import MurckoScaffold
            for i, s in enumerate(smiles):
                if s in newset:
                    try:
                        key = MurckoScaffold.MurckoScaffoldSmiles(s)
                    except Exception:
                        key = s
                    buckets[key] = buckets.get(key, 0) + 1
                    if buckets[key] > scaffold_cap:
                        rlscore[i] = 0.0
        cma.tell([(x, -v) for x, v in zip(X, score)])
        stall = 0 if new else stall + 1
        if restart and (cma.should_stop() or stall > 10):
            cma = CMA(mean=np.zeros(k), sigma=bound / 3, bounds=bounds, seed=int(rng.integers(2**31)), population_size=pop)
        it = locals().get("it", 0) + 1
        if it % 10 == 0: print(it, len(order), round(time.perf_counter()-t0), round(ttrain), np.mean(sorted(order)[::-1][:10]), len(new), flush=True)
        if rl:
            t = time.perf_counter()
            for s, zi, ti in zip(smiles, z, toks):
                if s in seen and all(m[1] != s for m in memory):
                    memory.append((seen[s], s, zi, ti))
            memory.sort(key=lambda m: -m[0]); del memory[100:]
            for u in range(updates):
                zz, tk, sc = z, toks, torch.tensor(rlscore)
                if replay and memory:
                    pick = memory[:replay] if u == 0 else [memory[i] for i in rng.choice(len(memory), min(replay, len(memory)), replace=False)]
                    L = max(tk.size(1), max(m[3].size(0) for m in pick))
                    pad = lambda x: F.pad(x, (0, L - x.size(-1)), value=0)
                    tk = torch.cat([pad(tk), torch.stack([pad(m[3]) for m in pick])])
                    zz = torch.cat([zz, torch.stack([m[2] for m in pick])])
                    sc = torch.cat([sc, torch.tensor([m[0] for m in pick])])
                with torch.no_grad():
                    pl = seq_logp(prior, zz, tk)
                al = seq_logp(agent, zz, tk)
                loss = (pl + sigma * sc - al).pow(2).mean()
                opt.zero_grad(); loss.backward(); opt.step()
            ttrain += time.perf_counter() - t
    auc = top_k_auc(order, 10, budget); top = sorted(order)[::-1][:10]
    return dict(task=task, auc=round(auc, 4), top1=round(top[0], 3), top10=round(float(np.mean(top)), 3), calls=len(order), wall=round(time.perf_counter()-t0), train=round(ttrain))

if __name__ == "__main__":
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    for t in sys.argv[1].split(","):
        print(json.dumps({**run(t, int(sys.argv[2]), 0, **kw), **kw}), flush=True)
