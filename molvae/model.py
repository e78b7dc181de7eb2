"""The sequence VAE: SELFIES token ids -> latent z -> token ids, and its checkpoints.

Three layers, smallest first:

* :class:`ModelConfig` — every architecture and loss setting, saved in ``model.json``.
* :class:`SequenceVAE` — the ``nn.Module``: a bidirectional GRU encoder gives ``mu`` and
  ``logvar``; a multi-layer GRU decoder sees ``z`` twice (its initial hidden state, and
  concatenated to every input token) so it cannot ignore the latent code. ``loss`` is the
  β-ELBO with KL annealing and optional free bits; ``generate`` decodes a whole batch of
  ``z`` at once, one GRU step per position.
* :class:`MolVAE` — what a chemist uses: ``encode(smiles)``, ``decode(z)``,
  ``sample(n)``, holding the module, its :class:`~molvae.tokens.Vocabulary` and its device.

A model directory holds ``weights.safetensors`` and ``model.json``, and optionally a fitted
latent prior (``prior.json`` + ``prior.safetensors``, :mod:`molvae.prior`) that sampling uses
instead of N(0, I). :func:`load_model` never unpickles anything: weights come from
safetensors, everything else from strict JSON.

    >>> vae = load_model()                      # the shipped default model
    >>> mu, _ = vae.encode(["CCO", "c1ccccc1O"])
    >>> vae.decode(mu)                          # greedy reconstruction
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MolvaeError
from .runtime import cpu_threads_for_busy_machine, resolve_device, use_bf16
from .tokens import Vocabulary

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
# Sampling temperatures outside these bounds overflow the logits (1e-300) or give uniform noise.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
DECODE_CHUNK = 2048  # z rows decoded at once: bounds memory of the (B, L, vocab) logits


# ---------------------------------------------------------------------------- config


@dataclass
class ModelConfig:
    """Architecture and loss settings of a :class:`SequenceVAE`.

    The defaults are the shipped default model's architecture (3.2 M parameters, 13 MB
    of fp32 weights), trained on a GPU: a smaller cousin of the MOSES VAE (encoder GRU
    256, decoder 3x512, latent 128) whose decoder still samples ~430 molecules/s on one
    CPU thread (batches of 1,000), so optimization on a laptop stays interactive. On a CPU with a budget of
    hours, a smaller network that sees more molecules ends lower than a larger one that
    sees fewer: there, use e.g. ``dec_hidden=384, dec_layers=1, enc_hidden=192,
    embed_dim=48`` (``molvae bench train`` measures the speed of either).

    Loss: ``recon`` is the token cross-entropy summed over a molecule's tokens (nats per
    molecule), ``kl`` is KL(q(z|x) || N(0, I)) summed over latent dimensions, and the
    objective is ``recon + beta * kl``. ``beta`` rises from 0 to ``beta_max`` over
    ``kl_anneal_steps`` optimizer steps (``kl_schedule='linear'``), or does so again in each
    of ``kl_cycles`` cycles (``'cyclical'``, Fu et al. 2019), or is ``beta_max`` throughout
    (``'constant'``). ``free_bits`` > 0 stops pushing a dimension's batch-mean KL below
    that many nats, a guard against posterior collapse (Kingma et al. 2016).
    ``output_init_scale`` initialises the output layer uniformly in +-scale (``None``:
    PyTorch's default).

    Decoder: ``'gru'`` (the default; a cuDNN/CPU-friendly recurrence) or ``'transformer'``:
    ``dec_layers`` pre-norm causal self-attention blocks of width ``dec_hidden`` with
    ``dec_heads`` heads (PyTorch SDPA, so bf16 tensor cores on a GPU), z projected and added
    at every position. A GRU's recurrence cannot use tensor cores; which learns more per
    GPU-minute is measured by ``molvae bench train --candidates`` (the transformer decodes
    without a KV cache, so it samples more slowly, especially on a CPU).
    """

    vocab_size: int
    seq_len: int
    embed_dim: int = 64
    enc_hidden: int = 256
    enc_layers: int = 1
    enc_bidirectional: bool = True
    dec_hidden: int = 512
    dec_layers: int = 2
    latent_dim: int = 64
    dropout: float = 0.1
    word_dropout: float = 0.1
    beta_max: float = 0.5
    kl_schedule: str = "linear"
    kl_anneal_steps: int = 10_000
    kl_cycles: int = 4
    free_bits: float = 0.0
    output_init_scale: float | None = None
    decoder: str = "gru"
    dec_heads: int = 8

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "embed_dim", "enc_hidden", "enc_layers",
                     "dec_hidden", "dec_layers", "latent_dim", "kl_cycles"):
            if int(getattr(self, name)) < 1:
                raise MolvaeError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 4:
            raise MolvaeError(f"model config: vocab_size {self.vocab_size} leaves no room for tokens")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.word_dropout < 1.0:
            raise MolvaeError("model config: dropout and word_dropout must be in [0, 1)")
        if self.decoder not in ("gru", "transformer"):
            raise MolvaeError(f"model config: decoder must be gru or transformer, got {self.decoder!r}")
        if self.decoder == "transformer" and (self.dec_heads < 1 or self.dec_hidden % self.dec_heads):
            raise MolvaeError(f"model config: dec_hidden {self.dec_hidden} must be a multiple of "
                              f"dec_heads {self.dec_heads}")
        if self.kl_schedule not in ("linear", "cyclical", "constant"):
            raise MolvaeError(f"model config: kl_schedule must be linear, cyclical or constant, "
                              f"got {self.kl_schedule!r}")
        if self.output_init_scale is not None and not self.output_init_scale > 0:
            raise MolvaeError("model config: output_init_scale must be > 0 (or null for the default)")
        if self.beta_max < 0 or self.free_bits < 0 or self.kl_anneal_steps < 0:
            raise MolvaeError("model config: beta_max, free_bits and kl_anneal_steps must be >= 0")

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> "ModelConfig":
        """A config from a dict; an unknown or missing key is an error naming it."""
        if not isinstance(d, dict):
            raise MolvaeError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise MolvaeError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                              f"valid keys: {', '.join(known)}")
        kwargs = {}
        for k, v in d.items():
            if v is None and "None" in known[k].type:
                kwargs[k] = None
                continue
            typ = {"int": int, "float": float, "bool": bool, "str": str}[known[k].type.split(" |")[0]]
            # bool is an int subclass in Python; JSON true must not pass for a size.
            ok = (isinstance(v, bool) if typ is bool else isinstance(v, str) if typ is str
                  else isinstance(v, (int, float)) and not isinstance(v, bool))
            if ok and typ is int and isinstance(v, float):
                ok = v.is_integer()
            if not ok:
                raise MolvaeError(f"{source}: {k} must be {typ.__name__}, got {v!r}")
            kwargs[k] = typ(v)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required key is missing
            raise MolvaeError(f"{source}: {exc}") from None


def kl_weight(config: ModelConfig, step: int) -> float:
    """β at optimizer step ``step`` under the config's annealing schedule."""
    if config.kl_schedule == "constant" or config.kl_anneal_steps == 0:
        return config.beta_max
    if config.kl_schedule == "linear":
        return config.beta_max * min(1.0, step / config.kl_anneal_steps)
    # cyclical: ramp during the first half of each cycle, hold beta_max in the second half;
    # after the last cycle hold beta_max so training ends on the target objective.
    period = config.kl_anneal_steps / config.kl_cycles
    if step >= config.kl_anneal_steps:
        return config.beta_max
    phase = (step % period) / period
    return config.beta_max * min(1.0, 2.0 * phase)


# ---------------------------------------------------------------------------- module


class TransformerDecoder(nn.Module):
    """Causal self-attention over token embeddings, with z added at every position."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.in_proj = nn.Linear(c.embed_dim, c.dec_hidden)
        self.pos = nn.Embedding(c.seq_len, c.dec_hidden)
        layer = nn.TransformerEncoderLayer(c.dec_hidden, c.dec_heads, 4 * c.dec_hidden, c.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.dec_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dec_hidden)

    def forward(self, emb: torch.Tensor, zh: torch.Tensor) -> torch.Tensor:
        t = emb.size(1)
        pos = self.pos(torch.arange(t, device=emb.device))
        x = self.in_proj(emb) + pos.unsqueeze(0) + zh.unsqueeze(1)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=emb.device, dtype=x.dtype)
        return self.norm(self.blocks(x, mask=mask, is_causal=True))



class SequenceVAE(nn.Module):
    """GRU encoder -> (mu, logvar) -> z -> GRU decoder over SELFIES token ids.

    Inputs are ``(B, T)`` LongTensors laid out as the vocabulary pads them:
    ``[bos] tok_1 … tok_n [eos] [pad] …`` with pad id 0, bos 1, eos 2.
    """

    pad_id, bos_id, eos_id = Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.eos_id

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=self.pad_id)
        # Two unidirectional stacks instead of one bidirectional GRU: the backward one
        # reads each molecule reversed with its padding still at the end, which gives the
        # packed-sequence result at half the CPU cost of pack_padded_sequence.
        enc_drop = c.dropout if c.enc_layers > 1 else 0.0
        self.encoder = nn.GRU(c.embed_dim, c.enc_hidden, num_layers=c.enc_layers, batch_first=True,
                              dropout=enc_drop)
        self.encoder_reverse = (nn.GRU(c.embed_dim, c.enc_hidden, num_layers=c.enc_layers,
                                       batch_first=True, dropout=enc_drop)
                                if c.enc_bidirectional else None)
        enc_out = c.enc_hidden * (2 if c.enc_bidirectional else 1)
        self.to_latent = nn.Linear(enc_out, 2 * c.latent_dim)
        if c.decoder == "transformer":
            self.latent_to_hidden = nn.Linear(c.latent_dim, c.dec_hidden)
            self.decoder = TransformerDecoder(c)
        else:
            self.latent_to_hidden = nn.Linear(c.latent_dim, c.dec_layers * c.dec_hidden)
            self.decoder = nn.GRU(c.embed_dim + c.latent_dim, c.dec_hidden, num_layers=c.dec_layers,
                                  batch_first=True, dropout=c.dropout if c.dec_layers > 1 else 0.0)
        self.output = nn.Linear(c.dec_hidden, c.vocab_size)
        if c.output_init_scale is not None:
            # Small output weights (the classic guard against a decoder that ignores z).
            # Off by default: measured on 20k MOSES molecules, +-1e-3 kept the decoder on
            # unigram statistics for ~150 steps and its KL fell to 0.28 nats, against
            # 3.0 nats and recon 49 (vs 71) with PyTorch's default initialisation.
            nn.init.uniform_(self.output.weight, -c.output_init_scale, c.output_init_scale)
            nn.init.zeros_(self.output.bias)

    # ------------------------------------------------------------------ pieces

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def _rnn(self, rnn: nn.GRU, x: torch.Tensor, h: torch.Tensor | None = None):
        # nn.GRU is not on autocast's op list: under bf16 autocast it would get bf16 inputs
        # from the linear layers and fp32 weights. Run it in its weights' dtype: fp32 (TF32
        # on cuDNN) for training, bf16 in the decoding copy that MolVAE keeps on CPUs with
        # bf16 instructions; or, inside bf16_rnns(), on bf16 casts of the fp32 weights.
        if getattr(self, "_bf16_rnns", False) and rnn.weight_ih_l0.dtype == torch.float32:
            # The casts are differentiable: the gradients reach the fp32 weights, which the
            # optimizer updates (mixed precision); the outputs go on in fp32.
            params = {n: p.to(torch.bfloat16) for n, p in rnn.named_parameters()}
            with torch.autocast(x.device.type, enabled=False):
                out, hn = torch.func.functional_call(
                    rnn, params, (x.to(torch.bfloat16), None if h is None else h.to(torch.bfloat16)))
            return out.float(), hn.float()
        dtype = rnn.weight_ih_l0.dtype
        with torch.autocast(x.device.type, enabled=False):
            return rnn(x.to(dtype), None if h is None else h.to(dtype))

    @contextlib.contextmanager
    def bf16_rnns(self, enabled: bool = True):
        """Within it, the GRUs of an fp32 network compute in bf16 (forward and backward), while
        the weights, their gradients, the optimizer and the other layers stay fp32: a search's
        fine-tuning on a CPU with bf16 instructions (AMX) steps faster, learning as in fp32
        (`molvae bench finetune`). Not bf16 autocast: logits of ~20 in bf16 are 0.125 apart,
        and a fine-tune under it learnt less (the tiny test model's NLL rose, 84.5 -> 86.8,
        where fp32 and bf16 GRUs both lowered it to 79.7). A no-op when ``enabled`` is false."""
        if not enabled:
            yield
            return
        self._bf16_rnns = True
        try:
            yield
        finally:
            self._bf16_rnns = False

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``(B, latent_dim)``, of padded id sequences."""
        lengths = (ids != self.pad_id).sum(1).clamp(min=1)
        last_pos = (lengths - 1).view(-1, 1, 1)
        out, _ = self._rnn(self.encoder, self.embedding(ids))
        # The state after each molecule's last real token, not after its padding.
        states = [out.gather(1, last_pos.expand(-1, 1, out.size(2))).squeeze(1)]
        if self.encoder_reverse is not None:
            pos = torch.arange(ids.size(1), device=ids.device).unsqueeze(0)
            src = (lengths.unsqueeze(1) - 1 - pos).clamp(min=0)
            rev = ids.gather(1, src).masked_fill(pos >= lengths.unsqueeze(1), self.pad_id)
            out_r, _ = self._rnn(self.encoder_reverse, self.embedding(rev))
            states.append(out_r.gather(1, last_pos.expand(-1, 1, out_r.size(2))).squeeze(1))
        last = torch.cat(states, dim=-1)
        mu, logvar = self.to_latent(last).float().chunk(2, dim=-1)
        return mu, logvar.clamp(-20.0, 10.0)  # exp() stays finite on outliers and in bf16

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def initial_hidden(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        h = torch.tanh(self.latent_to_hidden(z))
        return h.view(z.size(0), c.dec_layers, c.dec_hidden).transpose(0, 1).contiguous()

    def decode_logits(self, z: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, vocab)`` for decoder input ids ``(B, T)``."""
        emb = self.embedding(inputs)
        if self.config.decoder == "transformer":
            return self.output(self.decoder(emb, self.latent_to_hidden(z.to(emb.dtype))))
        zz = z.to(emb.dtype).unsqueeze(1).expand(-1, inputs.size(1), -1)
        out, _ = self._rnn(self.decoder, torch.cat([emb, zz], dim=-1), self.initial_hidden(z))
        return self.output(out)

    # ------------------------------------------------------------------ training

    def forward(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        """``(logits, mu, logvar)`` with teacher forcing; logits predict ``ids[:, 1:]``.

        In training mode, word dropout replaces each decoder input token after ``[bos]``
        by ``[pad]`` (an all-zero embedding) with probability ``word_dropout``, so the
        decoder has to rely on z rather than on the previous token (Bowman et al. 2016).
        """
        mu, logvar = self.encode(ids)
        z = self.reparameterize(mu, logvar, generator)
        inputs = ids[:, :-1]
        if self.training and self.config.word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.config.word_dropout
            drop[:, 0] = False  # keep [bos]
            inputs = inputs.masked_fill(drop, self.pad_id)
        return self.decode_logits(z, inputs), mu, logvar

    def loss_terms(self, ids: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor,
                   logvar: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The β-ELBO from :meth:`forward`'s outputs (split out so DDP can wrap ``forward``)."""
        target = ids[:, 1:]
        ce = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=self.pad_id,
                             reduction="none")  # (B, T-1), zero at pad
        recon = ce.sum(1).mean()
        kl_per_dim = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)  # (latent,)
        kl = kl_per_dim.sum()
        beta = kl_weight(self.config, step)
        kl_used = kl_per_dim.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl
        with torch.no_grad():
            mask = target != self.pad_id
            correct = ((logits.argmax(-1) == target) & mask).sum()
        return {"loss": recon + beta * kl_used, "recon": recon, "kl": kl,
                "beta": torch.tensor(beta), "kl_per_dim": kl_per_dim.detach(),
                "correct_tokens": correct, "tokens": mask.sum()}

    def loss(self, ids: torch.Tensor, step: int = 10**9) -> dict[str, torch.Tensor]:
        """Dict of ``loss, recon, kl, beta, kl_per_dim`` (plus token counts) for a batch."""
        logits, mu, logvar = self(ids)
        return self.loss_terms(ids, logits, mu, logvar, step)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, z: torch.Tensor, greedy: bool | torch.Tensor = True, temperature: float = 1.0,
                 max_len: int | None = None, generator: torch.Generator | None = None,
                 fused: bool = True) -> torch.Tensor:
        """Decode a batch of latent points at once into id sequences ``(B, L)``.

        One batched GRU step per position; a row stops at its ``[eos]`` (kept, then
        ``[pad]``), and the loop stops when every row has finished or after ``max_len``
        tokens (default ``seq_len - 1``: the longest training molecule plus ``[eos]``).
        Rows do not start with ``[bos]``. ``[pad]`` and ``[bos]`` are never emitted.

        ``greedy`` may be a boolean per row: those rows take the most likely token, the others
        sample at ``temperature``, all in one batch (the optimizer's batches mix greedy
        decodes with sampled ones, and one batch of 32 decodes ~1.4x faster per molecule
        than two of 16 on a CPU). The sampled rows draw from ``generator`` as they would in a
        batch of their own.

        ``fused`` (GRU decoders, fp32 or bf16) steps the GRU by hand (:meth:`_generate_gru`:
        in fp32 the same tokens, faster); ``False`` runs ``nn.GRU`` one step at a time, the
        reference that ``molvae bench decode`` measures it against.
        """
        b = z.size(0)
        greedy = _greedy_rows(greedy, b, self.device)
        if greedy is not True and not (MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):  # also refuses nan
            raise MolvaeError(f"temperature must be a number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} "
                              f"when sampling (lower is closer to greedy decoding), got {temperature}")
        max_len = self.config.seq_len - 1 if max_len is None else int(max_len)
        z = z.to(self.device, dtype=self.embedding.weight.dtype)
        transformer = self.config.decoder == "transformer"
        if transformer:
            zh = self.latent_to_hidden(z)
            prefix = torch.full((b, 1), self.bos_id, dtype=torch.long, device=self.device)
        else:
            h = self.initial_hidden(z)
            zz = z.unsqueeze(1)
        if fused and not transformer and self.decoder.weight_ih_l0.dtype in (torch.float32, torch.bfloat16):
            return self._generate_gru(z, greedy, temperature, max_len, generator)
        tok = torch.full((b,), self.bos_id, dtype=torch.long, device=self.device)
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)
        out = []
        for _ in range(max_len):
            if transformer:  # the whole prefix again each step (no KV cache; L <= ~100)
                o = self.decoder(self.embedding(prefix), zh)[:, -1:]
            else:
                x = torch.cat([self.embedding(tok).unsqueeze(1), zz], dim=-1)
                o, h = self._rnn(self.decoder, x, h)
            logits = self.output(o[:, 0]).float()
            logits[:, self.pad_id] = -math.inf
            logits[:, self.bos_id] = -math.inf
            nxt = _next_tokens(logits, greedy, temperature, generator)
            nxt = nxt.masked_fill(finished, self.pad_id)
            out.append(nxt)
            finished |= nxt == self.eos_id
            tok = nxt
            if transformer:
                prefix = torch.cat([prefix, nxt.unsqueeze(1)], dim=1)
            # One host sync per step; it lets short batches stop early.
            if bool(finished.all()):
                break
        if not out:
            return torch.empty((b, 0), dtype=torch.long, device=self.device)
        return torch.stack(out, dim=1)

    def _generate_gru(self, z: torch.Tensor, greedy: bool | torch.Tensor, temperature: float, max_len: int,
                      generator: torch.Generator | None) -> torch.Tensor:
        """:meth:`generate` for the GRU decoder, the same GRU equations stepped by hand.

        Decoding is the optimizer's main cost on a CPU (86 % of a 10,000-call QED run), and
        most of a step there is overhead, not arithmetic. Three savings: the first layer's
        input projection of ``[embedding(token), z]`` splits into a per-token table
        (``vocab x 3H``, computed once) plus the z part (once per batch), so the step's
        biggest matrix product becomes a row lookup; finished rows leave the batch, so the
        step's products shrink as molecules end; and no autograd bookkeeping.

        A bf16 network (the CPU decoding copy, see :class:`MolVAE`) does its matrix products
        in bf16 but keeps the hidden state and the gate arithmetic in fp32, so rounding does
        not build up over the steps; ``molvae bench decode`` times it against stepping
        ``nn.GRU`` in bf16 and fp32. fp32 networks take exactly the reference's operations.
        """
        rnn, c = self.decoder, self.config
        b, hid, layers = z.size(0), c.dec_hidden, c.dec_layers
        dt, f32 = rnn.weight_hh_l0.dtype, torch.float32
        w = [(getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}"),
              getattr(rnn, f"bias_ih_l{i}").float(), getattr(rnn, f"bias_hh_l{i}").float())
             for i in range(layers)]

        transposed: dict[int, torch.Tensor] = {}  # bf16: weight.T laid out once per batch

        def affine(bias, x, weight):  # bias + x @ weight.T, products in the weights' dtype
            if dt == f32:
                return torch.addmm(bias, x, weight.t())
            wt = transposed.get(id(weight))
            if wt is None:
                wt = transposed[id(weight)] = weight.t().contiguous()
            return torch.mm(x.to(dt), wt).float() + bias

        e = c.embed_dim
        table = (self.embedding.weight @ w[0][0][:, :e].t()).float()    # (vocab, 3H)
        gz = affine(w[0][2], z, w[0][0][:, e:])                         # (B, 3H)
        h = [x.float() for x in self.initial_hidden(z).unbind(0)]       # layers x (B, H)
        out = torch.full((b, max_len), self.pad_id, dtype=torch.long, device=self.device)
        rows = torch.arange(b, device=self.device)                      # unfinished rows
        tok = torch.full((b,), self.bos_id, dtype=torch.long, device=self.device)
        w_out, b_out = self.output.weight, self.output.bias.float()
        banned = torch.zeros(c.vocab_size, device=self.device)
        banned[self.pad_id] = banned[self.bos_id] = -math.inf
        for t in range(max_len):
            x = None
            for i in range(layers):
                w_ih, w_hh, b_ih, b_hh = w[i]
                gi = table[tok] + gz if i == 0 else affine(b_ih, x, w_ih)
                gh = affine(b_hh, h[i], w_hh)
                i_r, i_z, i_n = gi.chunk(3, 1)
                h_r, h_z, h_n = gh.chunk(3, 1)
                r = torch.sigmoid(i_r + h_r)
                u = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h[i] = x = n + u * (h[i] - n)                           # (1-u) n + u h
            logits = affine(b_out, x, w_out) + banned
            nxt = _next_tokens(logits, greedy, temperature, generator)
            out[rows, t] = nxt
            done = nxt == self.eos_id
            if bool(done.any()):  # one host sync per step, as in generate()
                keep = ~done
                if not bool(keep.any()):
                    return out[:, :t + 1]
                rows, nxt, gz = rows[keep], nxt[keep], gz[keep]
                h = [hi[keep] for hi in h]
                if greedy is not True and greedy is not False:
                    greedy = greedy[keep]
            tok = nxt
        return out


def _greedy_rows(greedy, b: int, device) -> bool | torch.Tensor:
    """``greedy`` as ``True``, ``False`` or a boolean tensor of ``b`` rows with both kinds."""
    if isinstance(greedy, bool):
        return greedy
    mask = torch.as_tensor(greedy, device=device)
    if mask.dim() == 0 and mask.dtype == torch.bool:  # a numpy or torch scalar
        return bool(mask)
    if mask.dtype != torch.bool or mask.shape != (b,):
        raise MolvaeError(f"greedy must be True, False or one boolean per latent point ({b}), "
                          f"got {mask.dtype} of shape {tuple(mask.shape)}")
    if bool(mask.all()):
        return True
    return False if not bool(mask.any()) else mask


def _next_tokens(logits: torch.Tensor, greedy: bool | torch.Tensor, temperature: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Each row's next token: the most likely one, or one sampled at ``temperature``
    (``greedy`` per row: a sampled row draws as it would in a batch of sampled rows alone)."""
    if greedy is True:
        return logits.argmax(-1)
    if greedy is False:
        return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(1)
    nxt = logits.argmax(-1)
    sampled = ~greedy
    if bool(sampled.any()):
        probs = torch.softmax(logits[sampled] / temperature, dim=-1)
        nxt[sampled] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return nxt


# ---------------------------------------------------------------------------- user API


_VOCAB_FOR_WORKERS: Vocabulary | None = None  # set before forking, read by the workers


def _ids_to_smiles_worker(ids: list[int]) -> str | None:
    return _VOCAB_FOR_WORKERS.decode(ids)


def _standardize_and_encode(args: tuple[Vocabulary, str]):
    from .chem import standardize

    vocab, smiles = args
    std, reason = standardize(smiles)
    if std is None:
        return None, f"not a valid molecule ({reason})"
    return vocab.try_encode(std)


def _encode_worker(smiles: str):
    return _standardize_and_encode((_VOCAB_FOR_WORKERS, smiles))


class MolVAE:
    """A trained model ready for chemists: SMILES in, latent vectors out, and back.

    Args:
        module: the :class:`SequenceVAE` (moved to ``device`` and put in eval mode).
        vocab: the vocabulary it was trained with.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a torch.device.
        metadata: what ``model.json`` recorded (training metrics, version); informational.
        precision: decoding precision on CPU: ``'auto'`` decodes with a bf16 copy of the
            network where the CPU computes bf16 in hardware (see :mod:`molvae.runtime`),
            ``'fp32'`` never, ``'bf16'`` always. Encoding and training stay fp32; a search's
            fine-tuning (:mod:`molvae.optimize.adapt`) follows the decoding precision
            (``finetune_bf16``: mixed precision, fp32 weights), which may be set apart.
    """

    def __init__(self, module: SequenceVAE, vocab: Vocabulary, device: str | torch.device = "auto",
                 metadata: dict | None = None, precision: str = "auto"):
        if precision not in ("auto", "fp32", "bf16"):
            raise MolvaeError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        if module.config.vocab_size != len(vocab) or module.config.seq_len != vocab.seq_len:
            raise MolvaeError(f"model expects vocab_size {module.config.vocab_size} and seq_len "
                              f"{module.config.seq_len}, vocabulary has {len(vocab)} and {vocab.seq_len}")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            # Step-by-step GRU decoding is dominated by thread hand-offs: on a busy CPU two
            # OpenMP threads spin waiting for each other (see runtime.cpu_threads_for_busy_machine).
            if cpu_threads_for_busy_machine():
                torch.set_num_threads(1)
        self.module = module.to(self.device).eval()
        self.vocab = vocab
        self.metadata = metadata or {}
        self.prior = None  # a fitted latent density (molvae.prior), when the model ships one
        self.decode_bf16 = self.device.type == "cpu" and (
            precision == "bf16" or (precision == "auto" and use_bf16(self.device)))
        self._bf16_copy: tuple[tuple[int, ...], SequenceVAE] | None = None
        # A search's fine-tuning in mixed precision where decoding is bf16: 1.7x faster steps
        # on an AMX CPU (`molvae bench finetune`), the same molecules learned.
        self.finetune_bf16 = self.decode_bf16

    def _generator(self) -> SequenceVAE:
        """The network that decodes: ``module``, or its bf16 copy (see ``precision``).

        The copy is rebuilt whenever ``module``'s weights changed in place (each parameter's
        ``_version`` counter moves on an optimizer step or ``load_state_dict``), so a model
        fine-tuned during a search never decodes with stale weights.
        """
        if not self.decode_bf16:
            return self.module
        version = tuple(p._version for p in self.module.parameters())
        if self._bf16_copy is None or self._bf16_copy[0] != version:
            import copy

            clone = copy.deepcopy(self.module).to(torch.bfloat16).eval()
            self._bf16_copy = (version, clone)
        return self._bf16_copy[1]

    @property
    def config(self) -> ModelConfig:
        return self.module.config

    @property
    def latent_dim(self) -> int:
        return self.module.config.latent_dim

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return (f"MolVAE(latent_dim={self.latent_dim}, vocab={len(self.vocab)} tokens, "
                f"max_len={self.vocab.max_len}, params={n:,}, device={self.device})")

    # ------------------------------------------------------------------ encoding

    def _encode_many(self, smiles: Sequence[str]) -> list[tuple[list[int] | None, str | None]]:
        from .chem import parallel_map

        global _VOCAB_FOR_WORKERS
        if len(smiles) < 4096:
            return [_standardize_and_encode((self.vocab, s)) for s in smiles]
        _VOCAB_FOR_WORKERS = self.vocab  # forked workers inherit it; no pickling per item
        return parallel_map(_encode_worker, list(smiles), desc="encode")

    @torch.no_grad()
    def _encode_ids(self, seqs: list[list[int]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        mus, logvars = [], []
        for i in range(0, len(seqs), batch_size):
            ids = self.vocab.to_tensor(seqs[i:i + batch_size]).to(self.device)
            mu, logvar = self.module.encode(ids)
            mus.append(mu.float())
            logvars.append(logvar.float())
        if not mus:
            empty = torch.empty((0, self.latent_dim), device=self.device)
            return empty, empty.clone()
        return torch.cat(mus), torch.cat(logvars)

    def encode(self, smiles: Sequence[str], batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)``, each ``(n, latent_dim)`` on the model's device.

        Each SMILES is standardized as the training data was (largest fragment, canonical)
        before encoding. Raises :class:`MolvaeError` naming the first molecule that cannot
        be encoded (invalid, or a SELFIES token or length the vocabulary lacks); use
        :meth:`try_encode` to skip such molecules instead.
        """
        if isinstance(smiles, str):
            raise MolvaeError("encode() takes a list of SMILES, not one string: encode([smiles])")
        results = self._encode_many(smiles)
        for i, (ids, reason) in enumerate(results):
            if ids is None:
                from .chem import short

                raise MolvaeError(f"molecule {i} ({short(smiles[i])}) cannot be encoded: {reason}")
        return self._encode_ids([ids for ids, _ in results], batch_size)

    def try_encode(self, smiles: Sequence[str], batch_size: int = 1024
                   ) -> tuple[torch.Tensor, torch.Tensor, list[bool], list[str | None]]:
        """Like :meth:`encode`, skipping molecules that cannot be encoded.

        Returns ``(mu, logvar, ok, reasons)``: ``mu``/``logvar`` have one row per molecule
        with ``ok[i]`` true (in input order), and ``reasons[i]`` says why molecule ``i``
        was skipped (``None`` when it was encoded).
        """
        if isinstance(smiles, str):
            raise MolvaeError("try_encode() takes a list of SMILES, not one string")
        results = self._encode_many(smiles)
        ok = [ids is not None for ids, _ in results]
        mu, logvar = self._encode_ids([ids for ids, _ in results if ids is not None], batch_size)
        return mu, logvar, ok, [reason for _, reason in results]

    # ------------------------------------------------------------------ decoding

    def _as_z(self, z) -> torch.Tensor:
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if z.dim() != 2 or z.size(1) != self.latent_dim:
            raise MolvaeError(f"z must have shape (n, {self.latent_dim}), got {tuple(z.shape)}")
        return z

    def decode_ids(self, z, greedy: bool | Sequence[bool] = True, temperature: float = 1.0,
                   max_len: int | None = None, seed: int | None = None,
                   chunk_size: int = DECODE_CHUNK) -> torch.Tensor:
        """Token ids ``(n, L)`` (on the CPU) decoded from ``z`` in chunks of ``chunk_size``."""
        z = self._as_z(z)
        greedy = _greedy_rows(greedy, z.size(0), "cpu")
        gen = None
        if greedy is not True and seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
        net = self._generator()

        def rows(i):
            return greedy if isinstance(greedy, bool) else greedy[i:i + chunk_size].to(self.device)

        chunks = [net.generate(z[i:i + chunk_size].to(self.device), greedy=rows(i),
                               temperature=temperature, max_len=max_len, generator=gen).cpu()
                  for i in range(0, z.size(0), chunk_size)]
        width = max((c.size(1) for c in chunks), default=0)
        out = torch.full((z.size(0), width), self.vocab.pad_id, dtype=torch.long)
        row = 0
        for c in chunks:
            out[row:row + c.size(0), :c.size(1)] = c
            row += c.size(0)
        return out

    def ids_to_smiles(self, ids: torch.Tensor, workers: int | None = None) -> list[str | None]:
        """Canonical SMILES of id rows (``None`` for an empty or invalid molecule)."""
        from .chem import parallel_map

        global _VOCAB_FOR_WORKERS
        rows = ids.tolist()
        if len(rows) < 4096 or workers == 1:
            return [self.vocab.decode(r) for r in rows]
        _VOCAB_FOR_WORKERS = self.vocab  # forked workers inherit it
        return parallel_map(_ids_to_smiles_worker, rows, workers=workers, desc="ids->SMILES")

    def decode(self, z, greedy: bool | Sequence[bool] = True, temperature: float = 1.0,
               max_len: int | None = None, seed: int | None = None) -> list[str | None]:
        """Canonical SMILES decoded from latent points ``z`` (``(n, latent_dim)``).

        ``greedy=True`` takes the most likely token at each step (deterministic);
        otherwise tokens are sampled at ``temperature`` (reproducible with ``seed``).
        One boolean per point mixes the two in one batch (``True``: greedy).
        An entry is ``None`` when the decoded SELFIES gives no valid molecule.
        """
        return self.ids_to_smiles(self.decode_ids(z, greedy, temperature, max_len, seed))

    def sample_prior(self, n: int, seed: int | None = None, prior: str = "auto") -> torch.Tensor:
        """``n`` latent points, on the model's device.

        ``prior='auto'`` draws from the density fitted on training molecules' encodings when
        the model has one (:mod:`molvae.prior`; it samples where the decoder was trained),
        else from N(0, I); ``'normal'`` always N(0, I); ``'fitted'`` requires the density.
        """
        if prior not in ("auto", "normal", "fitted"):
            raise MolvaeError(f"prior must be auto, normal or fitted, got {prior!r}")
        if prior == "fitted" and self.prior is None:
            raise MolvaeError("this model has no fitted latent prior (prior.json); fit one with "
                              "`molvae fit-prior --model DIR` or sample with prior='normal'")
        if self.prior is not None and prior != "normal":
            return self.prior.sample(int(n), seed).to(self.device)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        return torch.randn((int(n), self.latent_dim), generator=gen).to(self.device)

    def sample(self, n: int, seed: int | None = None, greedy: bool = True,
               temperature: float = 1.0, prior: str = "auto") -> list[str | None]:
        """``n`` molecules decoded from prior samples (the MOSES-style ``sample``)."""
        return self.decode(self.sample_prior(n, seed, prior), greedy=greedy,
                           temperature=temperature, seed=seed)


# ---------------------------------------------------------------------------- checkpoints


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("molvae")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None so the file stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(vae: MolVAE | tuple[SequenceVAE, Vocabulary], out_dir: str | os.PathLike,
               metrics: dict | None = None) -> Path:
    """Write ``weights.safetensors`` and ``model.json`` into ``out_dir``, each atomically.

    The weights are written first, so a crash never leaves a ``model.json`` that describes
    weights not yet on disk. Returns the directory.
    """
    from safetensors.torch import save_file

    module, vocab = (vae.module, vae.vocab) if isinstance(vae, MolVAE) else vae
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in module.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "molvae_format_version": str(FORMAT_VERSION)})
    os.replace(tmp, out / WEIGHTS_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "molvae_version": _version(),
        "config": asdict(module.config),
        "vocabulary": vocab.to_dict(),
        "parameters": sum(p.numel() for p in module.parameters()),
        "metrics": metrics if metrics is not None else (vae.metadata.get("metrics", {})
                                                         if isinstance(vae, MolVAE) else {}),
    }
    _atomic_write_text(out / CONFIG_FILE, json.dumps(_json_safe(meta), indent=1, allow_nan=False))
    if isinstance(vae, MolVAE) and vae.prior is not None:
        vae.prior.save(out)
    return out


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a network's weights: ties files derived from a model to that model."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype)
                 .contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def default_model_dir() -> Path:
    """Where the shipped default model lives (env ``MOLVAE_DEFAULT_MODEL`` overrides)."""
    env = os.environ.get("MOLVAE_DEFAULT_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data" / "models" / "default"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in strict JSON")


def read_model_json(path: str | os.PathLike) -> dict:
    """``model.json`` of a model directory, parsed strictly and checked for its version."""
    f = Path(path)
    if f.is_dir():
        f = f / CONFIG_FILE
    if not f.exists():
        raise MolvaeError(f"{f}: model config not found (a model directory holds {CONFIG_FILE} "
                          f"and {WEIGHTS_FILE})")
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MolvaeError(f"{f}: not valid JSON ({exc}); the file is corrupt, re-save or "
                          "re-train the model") from None
    if not isinstance(meta, dict):
        raise MolvaeError(f"{f}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise MolvaeError(f"{f}: format_version {version!r} is not supported by this molvae "
                          f"(expects {FORMAT_VERSION}); use the molvae version that wrote it")
    for key in ("config", "vocabulary"):
        if key not in meta:
            raise MolvaeError(f"{f}: missing key {key!r}")
    return meta


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "auto") -> MolVAE:
    """Load a model directory (``weights.safetensors`` + ``model.json``) as a :class:`MolVAE`.

    ``path=None`` loads the shipped default model (:func:`default_model_dir`). Nothing is
    unpickled: weights are read with safetensors and checked name by name and shape by
    shape against the architecture in ``model.json``. Any missing, corrupt or mismatched
    file raises :class:`MolvaeError` naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path is None:
        d = default_model_dir()
        if not (d / CONFIG_FILE).exists():
            raise MolvaeError(f"no default model at {d}: train one with `molvae train --data ... "
                              f"--out {d}`, pass a model directory, or set MOLVAE_DEFAULT_MODEL")
    else:
        d = Path(path)
        if d.is_file() and d.name in (CONFIG_FILE, WEIGHTS_FILE):
            d = d.parent
    if not d.exists():
        raise MolvaeError(f"{d}: model directory not found")
    if not d.is_dir():
        raise MolvaeError(f"{d}: not a model directory (expected a folder holding {CONFIG_FILE} "
                          f"and {WEIGHTS_FILE})")
    meta = read_model_json(d)
    config = ModelConfig.from_dict(meta["config"], f"{d / CONFIG_FILE}: config")
    vocab = Vocabulary.from_dict(meta["vocabulary"], f"{d / CONFIG_FILE}: vocabulary")
    wfile = d / WEIGHTS_FILE
    if not wfile.exists():
        raise MolvaeError(f"{wfile}: weights file not found")
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MolvaeError(f"{wfile}: cannot read weights ({exc}); the file is truncated or "
                          "corrupt, re-save or re-train the model") from None
    module = SequenceVAE(config)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise MolvaeError(f"{wfile}: weights do not match {CONFIG_FILE} "
                          f"(missing: {missing[:3]}, unexpected: {extra[:3]})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise MolvaeError(f"{wfile}: tensor {k} has shape {tuple(state[k].shape)}, "
                              f"{CONFIG_FILE} implies {tuple(v.shape)}")
        if not torch.isfinite(state[k].float()).all():
            raise MolvaeError(f"{wfile}: tensor {k} holds NaN or inf values")
    module.load_state_dict(state, strict=True)
    vae = MolVAE(module, vocab, device, metadata=meta)
    from .prior import LatentDensity, has_prior

    if has_prior(d):
        prior = LatentDensity.load(d, config.latent_dim)
        fitted_for = prior.info.get("model_fingerprint")
        if fitted_for and fitted_for != weights_fingerprint(module):
            log.warning("%s: the latent prior was fitted for other weights (the model was "
                        "retrained since); sampling from N(0, I) until it is re-fitted with "
                        "`molvae fit-prior --model %s`", d / "prior.json", d)
        else:
            vae.prior = prior
    return vae

