"""The fitted latent prior: sampled where the data lives, stored safely beside the weights."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from molvae.errors import MolvaeError
from molvae.model import load_model, save_model
from molvae.prior import LatentDensity, fit_latent_density


@pytest.fixture(scope="module")
def fitted(tiny_model, train_smiles):
    return fit_latent_density(tiny_model, train_smiles[:400], n_components=4, seed=0)


def test_fitted_density_samples_where_the_encodings_are(tiny_model, train_smiles, fitted):
    mu, logvar = tiny_model.encode(train_smiles[:400])
    # A seeded draw: the global RNG's state depends on which tests ran before this one, and
    # over 400 draws a dimension's mean misses by 3 sd (0.15) now and then.
    noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    post = (mu + noise * (0.5 * logvar).exp()).numpy()
    z = fitted.sample(4000, seed=1).numpy()
    # the fitted samples have the encodings' location and spread, not N(0, I)'s
    assert np.allclose(z.mean(0), post.mean(0), atol=0.15)
    assert np.allclose(z.std(0), post.std(0), rtol=0.2, atol=0.05)
    # and the encodings are more likely under it than under the standard normal
    normal = torch.distributions.Normal(0, 1).log_prob(torch.as_tensor(post)).sum(1)
    assert fitted.log_prob(torch.as_tensor(post)).mean() > normal.double().mean()
    assert torch.equal(fitted.sample(10, seed=3), fitted.sample(10, seed=3))


def test_model_folder_round_trip_and_sampling_modes(tiny_model_dir, tmp_path, fitted):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    vae = load_model(d, device="cpu")
    assert vae.prior is None
    with pytest.raises(MolvaeError, match="no fitted latent prior"):
        vae.sample_prior(5, prior="fitted")
    fitted.save(d)
    vae = load_model(d, device="cpu")
    assert vae.prior is not None and vae.prior.n_components == 4
    assert torch.allclose(vae.sample_prior(50, seed=0), fitted.sample(50, seed=0))  # auto = fitted
    normal = vae.sample_prior(50, seed=0, prior="normal")
    assert torch.equal(normal, torch.randn((50, vae.latent_dim), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(MolvaeError, match="prior must be"):
        vae.sample_prior(5, prior="uniform")
    # save_model carries the prior along
    save_model(vae, tmp_path / "copy")
    assert load_model(tmp_path / "copy", device="cpu").prior is not None


def test_a_prior_fitted_for_other_weights_is_not_used(tiny_model_dir, tmp_path, fitted, caplog):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    fitted.save(d)
    vae = load_model(d, device="cpu")
    with torch.no_grad():
        vae.module.output.bias.add_(1.0)  # "retrained"
    save_model((vae.module, vae.vocab), d)
    with caplog.at_level(logging.WARNING):
        again = load_model(d, device="cpu")
    assert again.prior is None and "fitted for other weights" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "nan", "json", "dims"])
def test_corrupt_or_mismatched_prior_files_are_named(tiny_model_dir, tmp_path, fitted, damage):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    fitted.save(d)
    w = d / "prior.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "nan":
        bad = LatentDensity(fitted.weights, fitted.means, fitted.scale, "full", fitted.info)
        bad.means = bad.means.clone()
        bad.means[0, 0] = float("nan")
        from safetensors.torch import save_file
        save_file({"weights": bad.weights.float(), "means": bad.means.float(), "scale": bad.scale.float()}, str(w))
    elif damage == "json":
        (d / "prior.json").write_text('{"format": 1, "covariance": NaN}')
    else:
        meta = json.loads((d / "prior.json").read_text())
        small = LatentDensity(fitted.weights, fitted.means[:, :3], fitted.scale[:, :3, :3], "full", meta["info"])
        small.save(d)
    with pytest.raises(MolvaeError, match="prior"):
        load_model(d, device="cpu")


def test_fit_refuses_nonsense(tiny_model, train_smiles):
    with pytest.raises(MolvaeError, match="too few"):
        fit_latent_density(tiny_model, train_smiles[:20], n_components=50)
    with pytest.raises(MolvaeError, match="n_components"):
        fit_latent_density(tiny_model, train_smiles[:20], n_components=0)
    with pytest.raises(MolvaeError, match="encoded"):
        fit_latent_density(tiny_model, ["not a smiles", "C" * 5000], n_components=1)


def test_aggregate_posterior_is_the_encoders_mixture(tiny_model, train_smiles):
    from molvae.prior import aggregate_posterior

    agg = aggregate_posterior(tiny_model, train_smiles[:50])
    mu, logvar = tiny_model.encode(train_smiles[:50])
    assert agg.n_components == 50 and agg.covariance == "diag"
    assert torch.allclose(agg.means, mu) and torch.allclose(agg.scale, (0.5 * logvar).exp())
    z = agg.sample(2000, seed=0)
    assert torch.allclose(z.mean(0), mu.mean(0), atol=0.2)


def test_fit_prior_command_writes_the_prior_into_the_model_folder(tiny_model_dir, tmp_path):
    from molvae.cli import main

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    assert main(["-q", "fit-prior", "--model", str(d), "--components", "3", "--molecules", "200"]) == 0
    vae = load_model(d, device="cpu")
    assert vae.prior.n_components == 3
    assert main(["-q", "fit-prior", "--model", str(d), "--method", "aggregate",
                 "--components", "40", "--molecules", "200"]) == 0
    assert load_model(d, device="cpu").prior.n_components == 40
    assert main(["-q", "fit-prior", "--model", str(d), "--components", "0"]) == 1


def test_sample_and_evaluate_commands_choose_the_prior(tiny_model_dir, tmp_path, fitted, capsys):
    from molvae.cli import main
    from molvae.generate import sample

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    assert main(["-q", "sample", "--model", str(d), "-n", "20", "--prior", "fitted",
                 "--out", str(tmp_path / "x.csv")]) == 1
    assert "no fitted latent prior" in capsys.readouterr().err
    fitted.save(d)
    vae = load_model(d, device="cpu")
    auto = sample(vae, 30, seed=0, properties=False, progress=False)
    normal = sample(vae, 30, seed=0, properties=False, progress=False, prior="normal")
    assert list(auto["selfies"]) != list(normal["selfies"])
    assert list(sample(vae, 30, seed=0, properties=False, progress=False, prior="fitted")["selfies"]) \
        == list(auto["selfies"])
    assert main(["-q", "sample", "--model", str(d), "-n", "20", "--prior", "normal",
                 "--out", str(tmp_path / "n.csv")]) == 0
