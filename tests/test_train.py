"""Training: a tiny model memorises molecules, resume is exact, failures keep the last checkpoint."""

import csv
import json
import time
from types import SimpleNamespace

import pytest
import torch

from molvae.errors import MolvaeError
from molvae.model import SequenceVAE, load_model
from molvae.tokens import Vocabulary, smiles_to_selfies
from molvae.train import METRIC_COLUMNS, TrainConfig, epoch_batches, find_checkpoint, train

TINY = dict(embed_dim=16, enc_hidden=32, dec_hidden=48, dec_layers=1, latent_dim=8)


def make_data(smiles, n_valid=16):
    vocab = Vocabulary.build([smiles_to_selfies(s) for s in smiles])
    ids = vocab.to_tensor([vocab.encode(s) for s in smiles])
    train_ids = ids[n_valid:] if n_valid else ids
    valid_ids = ids[:n_valid] if n_valid else ids
    return SimpleNamespace(vocab=vocab, train=train_ids, valid=valid_ids,
                           train_smiles=smiles[n_valid:], valid_smiles=smiles[:n_valid])


def config(**kw):
    base = dict(epochs=2, batch_size=16, lr=3e-3, warmup_steps=5, device="cpu", num_threads=1,
                patience=0, recon_eval_molecules=8, model=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


def read_metrics(path):
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_model_memorises_64_molecules(small_smiles, tmp_path):
    """The model and the training loop can learn: greedy decoding from the posterior mean
    gives back >= 95% of 64 training molecules exactly (canonical SMILES)."""
    smiles = small_smiles[:64]
    data = make_data(smiles, n_valid=0)  # validated on the training molecules themselves
    # Near-zero beta and no dropout: pure memorisation. ~200 steps of 16 reach 100% here (epoch 50 of 75 on an AVX2 EPYC); 60 leave a margin.
    cfg = config(epochs=60, batch_size=16, lr=3e-3, warmup_steps=0, weight_decay=0.0,
                 lr_schedule="constant", recon_eval_molecules=64, kl_anneal_fraction=None,
                 model=dict(embed_dim=32, enc_hidden=128, dec_hidden=256, dec_layers=1, latent_dim=16,
                            dropout=0.0, word_dropout=0.0, beta_max=0.001, kl_schedule="constant"))
    t0 = time.time()
    summary = train(data, tmp_path / "run", cfg)
    assert summary["last"]["val_recon_rate"] >= 0.95, summary["last"]
    vae = load_model(tmp_path / "run", device="cpu")  # the best epoch, loadable
    mu, _ = vae.encode(smiles)
    decoded = vae.decode(mu)
    assert sum(d == s for d, s in zip(decoded, smiles)) >= 0.95 * 64
    print(f"memorised 64 molecules in {time.time() - t0:.0f} s")


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(small_smiles, tmp_path):
    data = make_data(small_smiles[:112])
    cfg = config(epochs=2, lr_schedule="cosine")
    full = train(data, tmp_path / "full", cfg)

    class Interrupt(KeyboardInterrupt):
        pass

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise Interrupt()

    with pytest.raises(Interrupt):
        train(data, tmp_path / "cut", cfg, callback=stop_after_first_epoch)
    assert json.loads((find_checkpoint(tmp_path / "cut") / "state.json").read_text())["epoch"] == 1
    with pytest.raises(MolvaeError, match="already holds a training run"):
        train(data, tmp_path / "cut", cfg)
    resumed = train(data, tmp_path / "cut", cfg, resume=True)

    assert resumed["epochs_run"] == full["epochs_run"] == 2
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert list(a[0]) == METRIC_COLUMNS
    skip = {"seconds", "molecules_per_s"}
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in skip} == {k: v for k, v in rb.items() if k not in skip}
    wa = load_model(tmp_path / "full" / "checkpoint", device="cpu").module.state_dict()
    wb = load_model(tmp_path / "cut" / "checkpoint", device="cpu").module.state_dict()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    # the optimizer state is a tensors-only file that loads without unpickling code
    opt = torch.load(tmp_path / "cut" / "checkpoint" / "optimizer.pt", weights_only=True)
    assert opt["state"]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(small_smiles, tmp_path, monkeypatch):
    data = make_data(small_smiles[:80])
    real = SequenceVAE.loss_terms

    def poisoned(self, ids, logits, mu, logvar, step):
        terms = real(self, ids, logits, mu, logvar, step)
        if self.training and step >= 5:  # epoch 2 (4 steps per epoch)
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(SequenceVAE, "loss_terms", poisoned)
    with pytest.raises(MolvaeError, match=r"loss became nan at epoch 2.*last good checkpoint"):
        train(data, tmp_path / "run", config(epochs=3))
    assert len(read_metrics(tmp_path / "run")) == 1
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 4
    vae = load_model(tmp_path / "run", device="cpu")
    assert all(torch.isfinite(p).all() for p in vae.module.parameters())


def test_early_stopping_keeps_the_best_epoch(small_smiles, tmp_path, monkeypatch):
    import molvae.train as T

    real = T.evaluate
    losses = iter([5.0, 6.0, 7.0, 8.0])  # validation gets worse after epoch 1

    def rising(*args, **kwargs):
        out = real(*args, **kwargs)
        out["val_loss"] = next(losses)
        return out

    monkeypatch.setattr(T, "evaluate", rising)
    data = make_data(small_smiles[:48])
    summary = train(data, tmp_path / "run", config(epochs=4, patience=1))
    assert summary["status"] == "early_stopping"
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1 and summary["best_val_loss"] == 5.0
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["best_epoch"] == 1
    assert load_model(tmp_path / "run").metadata["metrics"]["epoch"] == 1  # best, not last
    rows = read_metrics(tmp_path / "run")
    assert [r["val_loss"] for r in rows] == ["5", "6"]
    assert all(0 <= int(r["active_units"]) <= TINY["latent_dim"] for r in rows)


def test_epoch_batches_shard_the_data_evenly():
    lengths = torch.randint(5, 40, (103,))
    one = torch.cat(epoch_batches(lengths, 10, seed=1, epoch=3))
    assert sorted(one.tolist()) == list(range(103))
    assert torch.equal(one, torch.cat(epoch_batches(lengths, 10, seed=1, epoch=3)))  # reproducible
    assert not torch.equal(one, torch.cat(epoch_batches(lengths, 10, seed=1, epoch=4)))
    r0 = torch.cat(epoch_batches(lengths, 5, seed=1, epoch=3, rank=0, world=2))
    r1 = torch.cat(epoch_batches(lengths, 5, seed=1, epoch=3, rank=1, world=2))
    assert len(r0) == len(r1) == 51 and not set(r0.tolist()) & set(r1.tolist())


def test_bad_settings_name_the_key():
    with pytest.raises(MolvaeError, match="epoch"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(MolvaeError, match="vocab_size"):
        TrainConfig(model={"vocab_size": 3})


def _same_run(a, b):
    skip = {"seconds", "molecules_per_s"}
    ra, rb = read_metrics(a), read_metrics(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in skip} == {k: v for k, v in y.items() if k not in skip}
    wa = load_model(a / "checkpoint", device="cpu").module.state_dict()
    wb = load_model(b / "checkpoint", device="cpu").module.state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_two_chunks_cut_mid_epoch_give_the_model_of_one_uninterrupted_run(small_smiles, tmp_path):
    """GPU time comes in short jobs: a run cut mid-epoch (here after 5 of 6 steps of epoch 1,
    then again inside epoch 2) and resumed ends on exactly the weights and metrics of one run."""
    data = make_data(small_smiles[:112])  # 96 training molecules: 6 steps per epoch
    full = train(data, tmp_path / "full", config(epochs=2))
    first = train(data, tmp_path / "cut", config(epochs=2, stop_after_steps=5))
    assert first["status"] == "time_budget" and first["epochs_run"] == 0
    state = json.loads((find_checkpoint(tmp_path / "cut") / "state.json").read_text())
    assert (state["step"], state["batch_in_epoch"]) == (5, 5)
    second = train(data, tmp_path / "cut", config(epochs=2, stop_after_steps=4), resume=True)
    assert second["status"] == "time_budget" and second["epochs_run"] == 1
    last = train(data, tmp_path / "cut", config(epochs=2), resume=True)
    assert last["status"] == full["status"] == "completed"
    _same_run(tmp_path / "full", tmp_path / "cut")


def test_time_budget_ends_on_a_checkpoint_that_resumes(small_smiles, tmp_path):
    data = make_data(small_smiles[:112])
    # 3 s: long enough for some steps after a cold start, far too short for 2,000 epochs
    cfg = config(epochs=2000, time_budget_s=3.0)
    t0 = time.time()
    summary = train(data, tmp_path / "run", cfg)
    assert summary["status"] == "time_budget"
    assert time.time() - t0 < 3.0 + 1.5  # stopped in time, checkpoint included
    state = json.loads((find_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["step"] > 0
    # a resumed chunk goes on from that step, never from the beginning
    again = train(data, tmp_path / "run", config(epochs=2000, stop_after_steps=3), resume=True)
    state2 = json.loads((find_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert again["status"] == "time_budget" and state2["step"] == state["step"] + 3


def test_plan_seconds_fixes_the_schedule_for_every_chunk(small_smiles, tmp_path):
    """The schedule is planned once, from the measured speed, and later chunks keep it."""
    data = make_data(small_smiles[:112])
    # 20 s of planned training: ~55 steps on a busy CPU, hundreds on an idle one; the plan
    # is made after 30 steps and the first chunk ends at 31, before the plan is used up.
    first = train(data, tmp_path / "run", config(epochs=1, plan_seconds=20.0, stop_after_steps=31))
    state = json.loads((find_checkpoint(tmp_path / "run") / "state.json").read_text())
    planned = state["planned_total_steps"]
    assert planned > 31 and first["status"] == "time_budget" and state["step"] == 31
    ckpt_cfg = json.loads((find_checkpoint(tmp_path / "run") / "model.json").read_text())["config"]
    assert ckpt_cfg["kl_anneal_steps"] == round(0.3 * planned)
    done = train(data, tmp_path / "run", config(epochs=1, plan_seconds=20.0), resume=True)
    assert done["status"] == "completed"
    assert done["last"]["step"] == planned  # ends on the plan, not on epochs=1


@pytest.mark.parametrize("key", ["time_budget_s", "plan_seconds", "stop_after_steps"])
def test_nonsense_budgets_are_refused(key):
    with pytest.raises(MolvaeError, match=key):
        TrainConfig(**{key: -1})


def test_transformer_decoder_trains_saves_and_decodes(small_smiles, tmp_path):
    """The transformer decoder learns (loss falls), and a saved model loads and decodes."""
    data = make_data(small_smiles[:112])
    tiny_tf = dict(TINY, decoder="transformer", dec_hidden=32, dec_layers=2, dec_heads=4)
    summary = train(data, tmp_path / "tf", config(epochs=3, model=tiny_tf))
    rows = read_metrics(tmp_path / "tf")
    assert float(rows[-1]["recon"]) < float(rows[0]["recon"])
    vae = load_model(tmp_path / "tf", device="cpu")
    assert vae.config.decoder == "transformer" and summary["parameters"] > 0
    out = vae.decode(vae.sample_prior(8, seed=0), greedy=False, seed=0)
    assert len(out) == 8 and any(s for s in out)  # decodes (a 3-epoch model is not yet good)
    with pytest.raises(MolvaeError, match="multiple of"):
        train(data, tmp_path / "bad", config(model=dict(tiny_tf, dec_heads=5)))


def test_candidates_are_compared_by_quality_in_the_same_time(small_smiles, tmp_path, monkeypatch):
    import molvae.train as T

    monkeypatch.setattr(T, "CANDIDATES", {
        "gru": {"batch_size": 16, "lr": 3e-3, "num_threads": 1, "model": dict(TINY)},
        "tf": {"batch_size": 16, "lr": 3e-3, "num_threads": 1,
               "model": dict(TINY, decoder="transformer", dec_hidden=32, dec_layers=1, dec_heads=4)},
    })
    rows = T.benchmark_candidates(make_data(small_smiles[:112]), tmp_path, seconds=4.0, device="cpu")
    assert [r["candidate"] for r in rows] == ["gru", "tf"]
    for r in rows:
        assert r["steps"] >= 31 and r["molecules_per_s"] > 0  # the plan is made after 30 steps
        assert r["val_nll"] == pytest.approx(r["val_recon"] + r["val_kl"], abs=2e-3) and r["val_nll"] > 0
    assert rows[1]["decoder"] == "transformer"
    with pytest.raises(MolvaeError, match="unknown candidate"):
        T.benchmark_candidates(make_data(small_smiles[:112]), tmp_path, names=["nope"])


def test_train_command_takes_a_time_budget(tmp_path, train_smiles):
    from molvae.cli import main

    from molvae.data import prepare

    src = tmp_path / "m.smi"
    src.write_text("\n".join(train_smiles[:120]) + "\n")
    prepare(src, tmp_path / "prep", progress=False)
    # More epochs than 8 s can hold on any machine (50 once fitted in 8 s on an idle CPU).
    args = ["-q", "train", "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "run"), "--epochs", "5000",
            "--threads", "1", "--device", "cpu", "--time-budget", "8", "--model-option", "embed_dim=16",
            "--model-option", "enc_hidden=32", "--model-option", "dec_hidden=48",
            "--model-option", "dec_layers=1", "--latent-dim", "8"]
    assert main(args) == 0
    state = json.loads((find_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert 0 < state["step"] and state["epoch"] < 5000      # ended on its budget, not its epochs
    assert main(args + ["--resume"]) == 0
    again = json.loads((find_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert again["step"] > state["step"]
    assert main(args[:-2] + ["--time-budget", "-5"]) == 1   # nonsense is refused


def test_a_warm_start_continues_a_trained_model(small_smiles, tmp_path):
    """``init_from`` starts from a trained model's weights (continuing the shipped model on a
    GPU): its first epoch validates far below a fresh run's, β stays at its final value from
    the first step, and only loss settings may change."""
    data = make_data(small_smiles[:96])
    train(data, tmp_path / "first", config(epochs=6))
    first = read_metrics(tmp_path / "first")
    fresh = first[0]                                                       # a fresh run's first epoch
    warm_summary = train(data, tmp_path / "warm", config(epochs=1, init_from=str(tmp_path / "first"),
                                                         model={"word_dropout": 0.0}))
    warm = read_metrics(tmp_path / "warm")[0]
    assert float(warm["val_loss"]) < float(fresh["val_loss"]) - 5, (warm, fresh)
    assert float(warm["val_loss"]) < float(first[-1]["val_loss"]) + 2   # it kept what it learnt
    beta_max = load_model(tmp_path / "first", device="cpu").module.config.beta_max
    assert float(warm["beta"]) == pytest.approx(beta_max)                 # no second annealing
    assert warm_summary["model_config"]["kl_schedule"] == "constant"
    assert warm_summary["model_config"]["word_dropout"] == 0.0            # a loss setting may change
    assert load_model(tmp_path / "warm", device="cpu").latent_dim == TINY["latent_dim"]


@pytest.mark.parametrize("problem,message", [
    ("missing", r"not found|no such|does not exist"),
    ("shape", r"model\.dec_hidden is 48 in that model and cannot change"),
    ("vocab", r"vocabulary differs from the model's .*--vocab"),
])
def test_a_warm_start_refuses_what_cannot_continue(small_smiles, tmp_path, problem, message):
    data = make_data(small_smiles[:64])
    train(data, tmp_path / "first", config(epochs=1))
    src, cfg_model, use = str(tmp_path / "first"), dict(TINY), data
    if problem == "missing":
        src = str(tmp_path / "no-such-model")
    elif problem == "shape":
        cfg_model["dec_hidden"] = 64
    else:  # a vocabulary built from other molecules (brominated, so it has a token more)
        use = make_data(["BrCCCCBr", "BrC1CCCCC1"] * 10 + small_smiles[:16], n_valid=4)
    with pytest.raises(MolvaeError, match=message):
        train(use, tmp_path / "warm", config(epochs=1, init_from=src, model=cfg_model))


def test_a_model_json_gives_its_vocabulary_to_data_prepare(tmp_path, train_smiles):
    """``molvae data prepare --vocab MODEL/model.json`` reuses a model's vocabulary, as a warm
    start on one's own molecules needs."""
    from molvae.data import prepare
    from molvae.model import default_model_dir

    src = tmp_path / "m.smi"
    src.write_text("\n".join(train_smiles[:40]) + "\n")
    prep = prepare(src, tmp_path / "prep", vocab=default_model_dir() / "model.json", progress=False)
    model = load_model(None, device="cpu")
    assert prep.vocab.tokens == model.vocab.tokens
