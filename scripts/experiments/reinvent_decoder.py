"""Experiment (not part of molvae): REINVENT on molvae's z-conditioned decoder. z from the
shipped prior, molecules sampled from the agent decoder, loss (prior log p + sigma * score -
agent log p)^2 with the 24 best replayed; PMO's REINVENT settings (sigma 500, lr 5e-4, batch 64).

    python scripts/experiments/reinvent_decoder.py celecoxib_rediscovery 10000

Figures and what they showed: docs/benchmarks.md, "Adapting the model during the search".
"""
import sys, time, copy, math, json
import numpy as np, torch, torch.nn.functional as F
from molvae.model import load_model
from molvae import pmo, chem
from molvae.optimize.outputs import top_k_auc

torch.set_num_threads(2)

def seq_logp(module, z, toks):
    """log p(toks | z) per row; toks (B,L) without bos, pad after eos."""
    b = toks.size(0)
    bos = torch.full((b, 1), module.bos_id, dtype=torch.long)
    inputs = torch.cat([bos, toks[:, :-1]], 1)
    logits = module.decode_logits(z, inputs).float()
    logp = torch.log_softmax(logits, -1).gather(2, toks.unsqueeze(2)).squeeze(2)
    mask = toks != module.pad_id
    return (logp * mask).sum(1)

def run(task, budget, seed, zmode="prior", sigma=500., lr=5e-4, batch=64, replay=24, temp=1.0):
    torch.manual_seed(seed); rng = np.random.default_rng(seed)
    model = load_model()
    prior = model.module; prior.eval()
    agent = copy.deepcopy(prior); agent.train(False)
    for p in prior.parameters(): p.requires_grad_(False)
    params = [p for n, p in agent.named_parameters() if n.split(".")[0] in ("latent_to_hidden", "decoder", "output", "embedding")]
    for n, p in agent.named_parameters():
        if all(p is not q for q in params): p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    oracle = pmo.oracle(task)
    seen = {}; order = []
    memory = []  # (score, smiles, z, toks)
    t0 = time.perf_counter(); tg = ts = tt = 0
    steps = 0
    while len(order) < budget:
        steps += 1
        t = time.perf_counter()
        z = model.sample_prior(batch, seed=int(rng.integers(2**31))) if zmode == "prior" else torch.randn(batch, model.latent_dim)
        with torch.no_grad():
            toks = agent.generate(z, greedy=False, temperature=temp)
        smiles = model.ids_to_smiles(toks)
        tg += time.perf_counter() - t; t = time.perf_counter()
        new = [s for s in dict.fromkeys(x for x in smiles if x and chem.is_valid_molecule(x)) if s not in seen]
        new = new[:budget - len(order)]
        if new:
            for s, v in zip(new, oracle(new)):
                seen[s] = v; order.append(v)
        ts += time.perf_counter() - t; t = time.perf_counter()
        score = torch.tensor([seen.get(s, 0.0) if s else 0.0 for s in smiles])
        # replay
        zz, tk, sc = z, toks, score
        if memory and replay:
            pick = memory[:replay]
            L = max(tk.size(1), max(m[3].size(0) for m in pick))
            def pad(x, L): return F.pad(x, (0, L - x.size(-1)), value=0)
            tk = torch.cat([pad(tk, L), torch.stack([pad(m[3], L) for m in pick])])
            zz = torch.cat([zz, torch.stack([m[2] for m in pick])])
            sc = torch.cat([sc, torch.tensor([m[0] for m in pick])])
        with torch.no_grad():
            pl = seq_logp(prior, zz, tk)
        al = seq_logp(agent, zz, tk)
        aug = pl + sigma * sc
        loss = (aug - al).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        # update memory with this batch
        for i, s in enumerate(smiles):
            if s and s in seen and all(m[1] != s for m in memory):
                memory.append((seen[s], s, z[i], toks[i]))
        memory.sort(key=lambda m: -m[0]); memory = memory[:100]
        tt += time.perf_counter() - t
        if steps % 20 == 0:
            top = sorted(order)[::-1][:10]
            print(f"  step {steps} calls {len(order)} top10 {np.mean(top):.3f} uniq_frac {len(new)/batch:.2f} gen {tg:.0f}s score {ts:.0f}s train {tt:.0f}s", flush=True)
    auc = top_k_auc(order, 10, budget)
    top = sorted(order)[::-1][:10]
    return dict(task=task, seed=seed, auc=auc, top1=top[0], top10=float(np.mean(top)), wall=time.perf_counter()-t0, gen=tg, score=ts, train=tt, steps=steps)

if __name__ == "__main__":
    budget = int(sys.argv[2]); tasks = sys.argv[1].split(",")
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    for t in tasks:
        r = run(t, budget, 0, **kw); print(json.dumps(r), flush=True)
