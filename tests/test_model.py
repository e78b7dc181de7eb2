"""The sequence VAE and its checkpoints: batched decoding, encode/decode API, safe loading."""

import json
import pickle

import pytest
import torch

from molvae.chem import canonical
from molvae.errors import MolvaeError
from molvae.model import (CONFIG_FILE, WEIGHTS_FILE, ModelConfig, MolVAE, SequenceVAE, kl_weight,
                          load_model, resolve_device, save_model)
from molvae.tokens import Vocabulary, smiles_to_selfies

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "O=C(O)c1ccccc1", "CC(C)Cc1ccc(C)cc1"]


def tiny_vae(smiles=SMILES, seed=0, **overrides) -> MolVAE:
    # The vocabulary of canonical SMILES, as `molvae data prepare` builds it.
    vocab = Vocabulary.build([smiles_to_selfies(canonical(s)) for s in smiles])
    settings = dict(embed_dim=16, enc_hidden=32, dec_hidden=32, dec_layers=2, latent_dim=8)
    settings.update(overrides)
    torch.manual_seed(seed)
    return MolVAE(SequenceVAE(ModelConfig(len(vocab), vocab.seq_len, **settings)), vocab, "cpu")


# ---------------------------------------------------------------------------- generation


@pytest.mark.parametrize("fused", [False, True])
def test_generate_decodes_whole_batch_with_one_step_per_position(fused):
    vae = tiny_vae()
    calls = []
    vae.module.decoder.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn(50, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    ids = vae.module.generate(z, greedy=False, temperature=2.0, generator=gen, fused=fused)
    assert ids.shape[0] == 50 and ids.dtype == torch.long
    # one nn.GRU call per position for all 50 rows (the fused path steps the cell by hand)
    assert len(calls) == (0 if fused else ids.shape[1])
    assert ids.shape[1] <= vae.vocab.seq_len - 1
    eos, pad = vae.vocab.eos_id, vae.vocab.pad_id
    finished_rows = 0
    for row in ids.tolist():
        assert vae.vocab.bos_id not in row
        if eos in row:
            k = row.index(eos)
            assert all(t == pad for t in row[k + 1:]), "tokens after [eos] must be padding"
            assert pad not in row[:k]
            finished_rows += 1
        else:
            assert pad not in row and len(row) == vae.vocab.seq_len - 1
    assert finished_rows > 0
    # The loop ran only as long as the longest row needed.
    lengths = [row.index(eos) + 1 if eos in row else len(row) for row in ids.tolist()]
    assert ids.shape[1] == max(lengths)


def test_fused_decoding_gives_the_reference_tokens():
    # The hand-stepped GRU (finished rows leave the batch) must decode exactly what nn.GRU
    # step by step decodes: greedily token for token, and sampled from the same distribution.
    vae = tiny_vae(dec_layers=2)
    with torch.no_grad():  # a decoder whose rows end at many different steps
        vae.module.output.bias[vae.vocab.eos_id] = 0.5
    z = torch.randn(400, vae.latent_dim, generator=torch.Generator().manual_seed(0)) * 2
    ref = vae.module.generate(z, fused=False)
    fast = vae.module.generate(z)
    assert torch.equal(ref, fast)
    lengths = (ref != vae.vocab.pad_id).sum(1)
    assert lengths.min() < lengths.max()  # the batch did shrink while decoding
    for layers in (1, 3):
        one = tiny_vae(dec_layers=layers)
        assert torch.equal(one.module.generate(z, fused=False), one.module.generate(z))
    # Sampling: same seed, same tokens; and the first-token frequencies of the two paths agree.
    zs = torch.zeros(3000, vae.latent_dim)
    a = vae.module.generate(zs, greedy=False, generator=torch.Generator().manual_seed(5))
    b = vae.module.generate(zs, greedy=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    r = vae.module.generate(zs, greedy=False, generator=torch.Generator().manual_seed(6), fused=False)
    fa = torch.bincount(a[:, 0], minlength=len(vae.vocab)).float() / len(zs)
    fr = torch.bincount(r[:, 0], minlength=len(vae.vocab)).float() / len(zs)
    assert (fa - fr).abs().max() < 0.05


@pytest.mark.parametrize("fused", [False, True])
def test_greedy_and_sampled_rows_in_one_batch_decode_as_in_batches_of_their_own(fused):
    # The optimizer decodes its sampler's points greedily and the policy's points sampled in
    # one batch: each row must come out as the two separate decodes would give it.
    vae = tiny_vae()
    with torch.no_grad():  # rows that end at many different steps
        vae.module.output.bias[vae.vocab.eos_id] = 0.5
    z = torch.randn(60, vae.latent_dim, generator=torch.Generator().manual_seed(0)) * 2
    greedy = torch.arange(60) % 3 != 0  # interleaved: 20 sampled rows among 40 greedy ones
    mixed = vae.module.generate(z, greedy=greedy, temperature=1.5,
                                generator=torch.Generator().manual_seed(4), fused=fused)
    alone_g = vae.module.generate(z[greedy], fused=fused)
    alone_s = vae.module.generate(z[~greedy], greedy=False, temperature=1.5,
                                  generator=torch.Generator().manual_seed(4), fused=fused)
    assert torch.equal(mixed[greedy][:, :alone_g.size(1)], alone_g)
    assert torch.equal(mixed[~greedy][:, :alone_s.size(1)], alone_s)
    assert (mixed[greedy][:, alone_g.size(1):] == vae.vocab.pad_id).all()
    assert not torch.equal(alone_s, vae.module.generate(z[~greedy], fused=fused))  # they did sample
    # Through the user API, in chunks, by a list of flags; all-True is plain greedy decoding.
    flags = greedy.tolist()
    assert vae.decode(z, greedy=flags, temperature=1.5, seed=9) == \
        vae.decode(z, greedy=flags, temperature=1.5, seed=9)
    assert torch.equal(vae.decode_ids(z, greedy=flags, seed=9, chunk_size=7)[greedy],
                       vae.decode_ids(z, greedy=flags, seed=9)[greedy])
    assert vae.decode(z, greedy=[True] * 60) == vae.decode(z)


@pytest.mark.parametrize("greedy, match", [
    ([True, False], "one boolean per latent point"),            # wrong length
    (torch.ones(4), "one boolean per latent point"),             # not booleans
    ([[True, False]] * 2, "one boolean per latent point"),       # wrong shape
])
def test_a_malformed_greedy_mask_is_a_clear_error(greedy, match):
    vae = tiny_vae()
    with pytest.raises(MolvaeError, match=match):
        vae.decode(torch.zeros(4, vae.latent_dim), greedy=greedy)


def test_a_mixed_batch_refuses_an_absurd_temperature_for_its_sampled_rows():
    vae = tiny_vae()
    with pytest.raises(MolvaeError, match="temperature"):
        vae.decode(torch.zeros(2, vae.latent_dim), greedy=[True, False], temperature=float("nan"))
    vae.decode(torch.zeros(2, vae.latent_dim), greedy=[True, True], temperature=float("nan"))  # no sampling


def test_generate_stops_as_soon_as_every_row_has_ended():
    vae = tiny_vae()
    with torch.no_grad():  # a decoder that always says [eos] first
        vae.module.output.bias.fill_(-10.0)
        vae.module.output.bias[vae.vocab.eos_id] = 10.0
    ids = vae.decode_ids(torch.zeros(7, vae.latent_dim))
    assert ids.tolist() == [[vae.vocab.eos_id]] * 7
    assert vae.decode(torch.zeros(2, vae.latent_dim)) == [None, None]  # empty molecule -> None


def test_decode_ids_chunks_large_batches_consistently():
    vae = tiny_vae()
    z = vae.sample_prior(30, seed=3)
    whole = vae.decode_ids(z)
    chunked = vae.decode_ids(z, chunk_size=7)
    assert torch.equal(whole, chunked)


def test_sampling_is_reproducible_with_a_seed():
    vae = tiny_vae()
    assert torch.equal(vae.sample_prior(5, seed=1), vae.sample_prior(5, seed=1))
    a = vae.sample(20, seed=4, greedy=False)
    assert a == vae.sample(20, seed=4, greedy=False)
    assert len(a) == 20 and all(s is None or isinstance(s, str) for s in a)


# ---------------------------------------------------------------------------- encoding


def test_encode_gives_deterministic_posterior_means():
    vae = tiny_vae()
    mu, logvar = vae.encode(SMILES[:3])
    assert mu.shape == logvar.shape == (3, vae.latent_dim)
    mu2, _ = vae.encode(["OCC", SMILES[1], SMILES[2]])  # OCC standardizes to CCO
    assert torch.allclose(mu, mu2)


def test_encode_names_the_molecule_it_cannot_encode():
    vae = tiny_vae()
    with pytest.raises(MolvaeError, match=r"molecule 1 \('C\[Si\]\(C\)C'\).*\[Si\]"):
        vae.encode(["CCO", "C[Si](C)C"])
    with pytest.raises(MolvaeError, match="not a valid molecule"):
        vae.encode(["CCO", "not-a-smiles"])
    mu, logvar, ok, reasons = vae.try_encode(["CCO", "C[Si](C)C", "c1ccccc1O"])
    assert ok == [True, False, True] and mu.shape == (2, vae.latent_dim)
    assert reasons[0] is None and "[Si]" in reasons[1]


def test_encoder_ignores_padding():
    vae = tiny_vae()
    ids = vae.vocab.to_tensor([vae.vocab.encode("CC(=O)Nc1ccc(O)cc1")])
    wider = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(vae.module.encode(ids)[0], vae.module.encode(wider)[0], atol=1e-6)


def test_loss_reports_elbo_terms():
    vae = tiny_vae(beta_max=0.5, kl_anneal_steps=100, free_bits=0.1)
    ids = vae.vocab.to_tensor([vae.vocab.encode(s) for s in SMILES])
    vae.module.train()
    out = vae.module.loss(ids, step=50)
    assert out["beta"].item() == pytest.approx(0.25)
    assert out["kl_per_dim"].shape == (vae.latent_dim,)
    assert out["kl"].item() == pytest.approx(out["kl_per_dim"].sum().item(), rel=1e-5)
    # free bits count each dimension's KL as at least 0.1 nats
    used = out["kl_per_dim"].clamp(min=0.1).sum()
    assert out["loss"].item() == pytest.approx((out["recon"] + 0.25 * used).item(), rel=1e-5)
    out["loss"].backward()
    assert vae.module.output.weight.grad is not None


def test_bf16_rnns_train_the_fp32_weights_with_nearly_the_fp32_loss_and_gradients():
    """Mixed precision for a search's fine-tuning: inside bf16_rnns() the loss and gradients are
    those of fp32 to bf16's precision, the gradients land on the fp32 weights, and afterwards
    the network computes in fp32 again, exactly as before (even after an error inside)."""
    vae = tiny_vae(dec_hidden=64)
    ids = vae.vocab.to_tensor([vae.vocab.encode(s) for s in SMILES])
    module = vae.module.train()

    def loss_and_grads():
        module.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss = module.loss(ids, step=10**9)["recon"]
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = loss_and_grads()
    with module.bf16_rnns():
        loss, grads = loss_and_grads()
    assert loss == pytest.approx(ref_loss, rel=0.02)
    assert set(grads) == set(ref_grads)
    for name in ("decoder.weight_hh_l0", "encoder.weight_ih_l0", "output.weight"):
        a, b = grads[name].flatten(), ref_grads[name].flatten()
        assert a.dtype == torch.float32
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.98, name
        assert not torch.equal(a, b), name  # the context did compute in bf16
    assert all(p.dtype == torch.float32 for p in module.parameters())
    with pytest.raises(RuntimeError, match="inside"):
        with module.bf16_rnns():
            raise RuntimeError("inside")
    assert loss_and_grads()[0] == ref_loss  # fp32 again, bit for bit
    with module.bf16_rnns(enabled=False):
        assert loss_and_grads()[0] == ref_loss


def test_kl_schedules():
    lin = ModelConfig(10, 10, beta_max=0.2, kl_schedule="linear", kl_anneal_steps=100)
    assert [kl_weight(lin, s) for s in (0, 50, 100, 500)] == pytest.approx([0, 0.1, 0.2, 0.2])
    cyc = ModelConfig(10, 10, beta_max=1.0, kl_schedule="cyclical", kl_anneal_steps=100, kl_cycles=2)
    assert [kl_weight(cyc, s) for s in (0, 25, 40, 50, 75, 200)] == pytest.approx([0, 1, 1, 0, 1, 1])
    const = ModelConfig(10, 10, beta_max=0.3, kl_schedule="constant")
    assert kl_weight(const, 0) == 0.3


def test_config_rejects_unknown_and_mistyped_keys():
    with pytest.raises(MolvaeError, match="latnet_dim"):
        ModelConfig.from_dict({"vocab_size": 10, "seq_len": 10, "latnet_dim": 8})
    with pytest.raises(MolvaeError, match="dec_hidden must be int"):
        ModelConfig.from_dict({"vocab_size": 10, "seq_len": 10, "dec_hidden": "big"})
    with pytest.raises(MolvaeError, match="kl_schedule"):
        ModelConfig(10, 10, kl_schedule="sigmoid")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MolvaeError, match="use auto, cpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MolvaeError, match="CUDA is not available"):
            resolve_device("cuda:0")


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved(tmp_path):
    vae = tiny_vae()
    save_model(vae, tmp_path / "m", metrics={"val_loss": 1.5})
    return vae, tmp_path / "m"


def test_save_and_load_round_trip(saved, monkeypatch):
    vae, path = saved
    # Loading must never unpickle: make every pickle entry point fail.
    def refuse(*a, **k):
        raise AssertionError("load_model unpickled something")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_model(path, device="cpu")
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    assert loaded.config == vae.config and loaded.vocab.tokens == vae.vocab.tokens
    assert loaded.metadata["metrics"] == {"val_loss": 1.5}
    z = vae.sample_prior(10, seed=0)
    assert loaded.decode(z) == vae.decode(z)
    assert torch.equal(loaded.encode(SMILES)[0], vae.encode(SMILES)[0])


def test_truncated_weights_file_is_a_clear_error(saved):
    _, path = saved
    w = path / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(MolvaeError, match=r"weights\.safetensors.*truncated or corrupt"):
        load_model(path)


def test_garbage_json_is_a_clear_error(saved):
    _, path = saved
    (path / CONFIG_FILE).write_text('{"format_version": 1, "config": ')
    with pytest.raises(MolvaeError, match=r"model\.json: not valid JSON"):
        load_model(path)
    (path / CONFIG_FILE).write_text('{"format_version": NaN}')
    with pytest.raises(MolvaeError, match="not valid JSON"):
        load_model(path)


def test_wrong_shapes_are_a_clear_error(saved):
    _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["config"]["dec_hidden"] = 48
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(MolvaeError, match=r"weights\.safetensors: tensor .* has shape"):
        load_model(path)


def test_wrong_format_version_is_a_clear_error(saved):
    _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["format_version"] = 99
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(MolvaeError, match="format_version 99 is not supported"):
        load_model(path)


def test_missing_files_are_clear_errors(saved, tmp_path):
    _, path = saved
    with pytest.raises(MolvaeError, match="model directory not found"):
        load_model(tmp_path / "nowhere")
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(MolvaeError, match="weights file not found"):
        load_model(path)
    (path / CONFIG_FILE).unlink()
    with pytest.raises(MolvaeError, match="model config not found"):
        load_model(path)


def test_default_model_location(saved, tmp_path, monkeypatch):
    _, path = saved
    monkeypatch.setenv("MOLVAE_DEFAULT_MODEL", str(tmp_path / "absent"))
    with pytest.raises(MolvaeError, match="no default model"):
        load_model(None)
    monkeypatch.setenv("MOLVAE_DEFAULT_MODEL", str(path))
    assert load_model(None, device="cpu").latent_dim == 8


def test_bf16_is_used_only_where_the_cpu_computes_it(monkeypatch):
    from molvae import runtime

    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.delenv("MOLVAE_CPU_BF16", raising=False)
    assert not runtime.use_bf16(torch.device("cpu"))           # emulated bf16 is 5-9x slower
    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert runtime.use_bf16(torch.device("cpu"))
    assert not runtime.use_bf16(torch.device("cpu"), requested=False)
    monkeypatch.setenv("MOLVAE_CPU_BF16", "0")
    assert not runtime.use_bf16(torch.device("cpu"))
    monkeypatch.setenv("MOLVAE_CPU_BF16", "1")
    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: frozenset())
    assert runtime.use_bf16(torch.device("cpu"))


def test_bf16_decoding_agrees_with_fp32_and_follows_weight_updates(tiny_model_dir, small_smiles):
    """The bf16 decoding copy gives (nearly) the fp32 molecules, and is rebuilt after the
    weights change in place (a model fine-tuned during a search never decodes stale)."""
    fp32 = load_model(tiny_model_dir, device="cpu")
    bf16 = MolVAE(load_model(tiny_model_dir, device="cpu").module, fp32.vocab, "cpu", precision="bf16")
    assert bf16.decode_bf16 and not MolVAE(fp32.module, fp32.vocab, "cpu", precision="fp32").decode_bf16
    mu, _ = fp32.encode(small_smiles[:60])
    a, b = fp32.decode(mu), bf16.decode(mu)
    assert sum(x == y for x, y in zip(a, b)) >= 0.8 * len(a)
    assert sum(s is not None for s in b) >= 0.9 * len(b)
    first = bf16._generator()
    assert first is bf16._generator()                    # cached while the weights stand still
    with torch.no_grad():
        bf16.module.output.bias.add_(0.5)
    second = bf16._generator()
    assert second is not first
    assert torch.allclose(second.output.bias.float(), bf16.module.output.bias, atol=1e-2)
    with pytest.raises(MolvaeError, match="precision"):
        MolVAE(fp32.module, fp32.vocab, "cpu", precision="fp16")


def test_bf16_decoding_steps_the_gru_by_hand_and_keeps_the_fp32_molecules(tiny_model_dir, small_smiles):
    """The bf16 copy decodes on the hand-stepped path (no nn.GRU call), greedy and sampled,
    and gives the fp32 molecules at least as often as stepping nn.GRU in bf16 does, minus
    a little: its hidden state stays fp32, so rounding does not build up over the steps."""
    fp32 = load_model(tiny_model_dir, device="cpu")
    bf16 = MolVAE(load_model(tiny_model_dir, device="cpu").module, fp32.vocab, "cpu", precision="bf16")
    net = bf16._generator()
    calls = []
    net.decoder.register_forward_hook(lambda *a: calls.append(1))
    mu, _ = fp32.encode(small_smiles[:80])
    ref = fp32.module.generate(mu)
    fused = net.generate(mu)
    assert not calls
    stepped = net.generate(mu, fused=False)
    assert calls
    pad = fp32.vocab.pad_id

    def same(a, b):
        w = max(a.size(1), b.size(1))
        a = torch.nn.functional.pad(a, (0, w - a.size(1)), value=pad)
        b = torch.nn.functional.pad(b, (0, w - b.size(1)), value=pad)
        return int((a == b).all(1).sum())

    assert same(ref, fused) >= max(0.8 * len(mu), same(ref, stepped) - 0.05 * len(mu))
    sampled = net.generate(mu, greedy=False, temperature=1.0, generator=torch.Generator().manual_seed(0))
    again = net.generate(mu, greedy=False, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, again) and sampled.shape[0] == len(mu)
    assert sum(s is not None for s in bf16.decode(mu)) >= 0.9 * len(mu)


def test_the_thread_notice_is_quiet_by_default(monkeypatch, caplog):
    """Every command printed 'load average ...: using 1 torch CPU thread' on a busy machine;
    it is a detail of the machine, logged at debug level (shown with -v)."""
    import logging

    from molvae import runtime

    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.INFO, logger="molvae"):
        assert runtime.cpu_threads_for_busy_machine() == 1
    assert "torch CPU thread" not in caplog.text
    with caplog.at_level(logging.DEBUG, logger="molvae"):
        runtime.cpu_threads_for_busy_machine()
    assert "torch CPU thread" in caplog.text
