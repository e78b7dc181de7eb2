"""Training the sequence VAE: AdamW, KL annealing, early stopping, exact resume, DDP.

    from molvae.train import TrainConfig, train
    summary = train("data/moses_train_100k.csv.gz", "runs/vae", TrainConfig(epochs=10))
    vae = molvae.model.load_model("runs/vae")       # the best epoch by validation loss

or ``molvae train --data DATA --out DIR``; under ``torchrun --nproc_per_node=N -m molvae train``
the same code runs data-parallel (one process per GPU, or gloo processes on a CPU).

The output folder holds::

    model.json, weights.safetensors   the best model so far (load_model(out_dir) reads it)
    metrics.csv                       one row per epoch (columns in METRIC_COLUMNS)
    summary.json                      how the run ended, the best epoch, the settings
    checkpoint/                       the last epoch: weights, optimizer.pt, state.json

Each epoch's checkpoint is written into ``checkpoint.new/`` and then swapped in, so a crash
at any moment leaves one complete checkpoint. ``resume=True`` continues from it. Shuffling,
dropout and latent noise are reseeded from (seed, epoch, rank) at every epoch start, so an
interrupted and resumed CPU run ends on the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import MolvaeError
from .model import (CONFIG_FILE, ModelConfig, SequenceVAE, _atomic_write_text, _json_safe,
                    kl_weight, load_model, read_model_json, save_model)
from .runtime import autocast, cpu_threads_for_busy_machine, resolve_device
from .progress import progress
from .tokens import Vocabulary

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "epoch", "step", "loss", "recon", "kl", "beta", "lr", "active_units",
    "kl_per_dim_mean", "kl_per_dim_min", "kl_per_dim_max",
    "val_loss", "val_recon", "val_kl", "val_token_acc", "val_recon_rate",
    "seconds", "molecules_per_s", "world_size", "rank_molecules",
]
"""``metrics.csv`` columns. Losses are nats per molecule: ``recon`` the token cross-entropy
summed over a molecule, ``kl`` the KL divergence summed over latent dimensions, ``loss`` the
training objective ``recon + beta * kl`` (with free bits, if set). ``val_loss`` is
``val_recon + beta_max * val_kl`` on the validation set, the quantity early stopping
watches (the negative ELBO when ``beta_max`` = 1). ``active_units`` counts latent dimensions
whose posterior mean varies across validation molecules (Cov_x E[z|x] > 0.01, Burda et al.
2016); ``kl_per_dim_*`` summarise the training KL per dimension (near 0 = collapsed).
``val_token_acc`` is teacher-forced next-token accuracy; ``val_recon_rate`` the fraction of
(up to ``recon_eval_molecules``) validation molecules whose greedy decoding from the
posterior mean gives back the same canonical SMILES. ``rank_molecules`` lists how many
molecules each DDP process trained on ("n0;n1;…")."""

CHECKPOINT = "checkpoint"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"  # random streams of a mid-epoch checkpoint
PLAN_PROBE_STEPS = (5, 30)    # plan_seconds: time steps 5..30 (after CUDA/allocator warm-up)
STATE_VERSION = 1
BUCKET_BATCHES = 50  # batches per length-sorted bucket: less padding, still well shuffled


@dataclass
class TrainConfig:
    """Training settings; ``model`` holds :class:`~molvae.model.ModelConfig` overrides.

    ``batch_size`` is the global batch: under DDP each of N processes takes
    ``batch_size // N`` molecules per step, so the optimisation matches a single process.
    ``kl_anneal_fraction`` sets the KL warm-up to that fraction of all planned steps unless
    ``model`` sets ``kl_anneal_steps`` itself. ``patience`` epochs without a better
    ``val_loss`` stop training (0: never). ``max_hours`` stops after the epoch that crosses
    the wall-clock budget (the checkpoint allows resuming). ``num_threads`` sets the
    torch CPU threads (the data are in-memory tensors, so no loader workers are needed);
    ``None`` keeps torch's default unless the cores are already busy (then 1, see
    :func:`cpu_threads_for_busy_machine`).

    Training in short jobs (a GPU queue's 10-minute limit, a preemptible machine):
    ``time_budget_s`` ends this run when the next step would not leave time for the final
    validation and checkpoint (kept in reserve: the slowest one measured, at least 3% of
    the budget), mid-epoch if need be, on a checkpoint that ``resume=True`` continues
    exactly (same batches, same random streams: two chunks end on the weights one
    uninterrupted run reaches). ``plan_seconds`` plans the learning-rate and KL schedules
    for that much training time in all (the steps are counted from the throughput measured
    over the first run's first steps, and fixed in the checkpoint), so that e.g. two
    10-minute runs with ``plan_seconds=1200`` make one 20-minute schedule, and ``epochs``
    is ignored; without it the schedule spans ``epochs``. ``stop_after_steps`` ends a run after that many steps (for
    tests and fixed-size chunks).

    ``init_from`` starts a new run from a trained model's weights (e.g. the shipped default:
    continue its training on a GPU, or on your own molecules). Its architecture and
    vocabulary are kept (``model`` may change only loss settings such as ``beta_max``), the
    data must use the same vocabulary, and β stays at ``beta_max`` from the first step unless
    ``model`` sets a KL schedule: annealing it from 0 again would undo the trained latent space.
    The optimizer starts fresh (with the warm-up); a checkpoint in ``out_dir`` wins on resume.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 50.0
    lr_schedule: str = "cosine"          # cosine | plateau | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05           # cosine ends at lr * min_lr_ratio
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    log_every: int = 20
    max_train_molecules: int | None = None
    max_valid_molecules: int | None = 10_000  # validation cost per epoch stays bounded
    max_hours: float | None = None
    kl_anneal_fraction: float | None = 0.3
    recon_eval_molecules: int = 500
    bf16: bool = True                    # bf16 autocast on CUDA and on CPUs with bf16 instructions
    time_budget_s: float | None = None   # this run's wall-clock budget; ends on a checkpoint
    plan_seconds: float | None = None    # total training time the schedule is planned for
    stop_after_steps: int | None = None  # end this run (on a checkpoint) after N more steps
    init_from: str | None = None         # a model folder whose weights a new run starts from
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise MolvaeError("train config: epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise MolvaeError(f"train config: lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("cosine", "plateau", "constant"):
            raise MolvaeError(f"train config: lr_schedule must be cosine, plateau or constant, "
                              f"got {self.lr_schedule!r}")
        for name in ("time_budget_s", "plan_seconds", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise MolvaeError(f"train config: {name} must be > 0 (or unset), got {value}")
        if self.kl_anneal_fraction is not None and not 0 <= self.kl_anneal_fraction <= 1:
            raise MolvaeError("train config: kl_anneal_fraction must be in [0, 1]")
        if not isinstance(self.model, dict):
            raise MolvaeError("train config: model must be a table of ModelConfig settings")
        for key in ("vocab_size", "seq_len"):
            if key in self.model:
                raise MolvaeError(f"train config: model.{key} comes from the data's vocabulary; remove it")

    @classmethod
    def from_dict(cls, d: dict, source: str = "train config") -> "TrainConfig":
        """A config from a dict (e.g. a TOML table); an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MolvaeError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise MolvaeError(f"{source}: {exc}") from None


# ---------------------------------------------------------------------------- helpers


def _dist() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Distinct, reproducible streams per (epoch, rank): resume only needs the epoch number.
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % (2**63 - 1)


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int,
                  rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Index batches for one epoch on one rank: shuffled by (seed, epoch), length-bucketed.

    Every rank draws the same permutation and takes every ``world``-th molecule, truncated
    to the same count, so all ranks run the same number of steps (DDP would hang otherwise).
    Within buckets of ``BUCKET_BATCHES`` batches molecules are sorted by length, so a batch
    carries little padding; the order of batches is shuffled again.
    """
    g = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 0))
    n = lengths.numel()
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    if per_rank == 0:
        raise MolvaeError(f"{n} training molecules cannot be shared by {world} processes")
    mine = perm[rank::world][:per_rank]
    batches = []
    bucket = batch_size * BUCKET_BATCHES
    for start in range(0, per_rank, bucket):
        chunk = mine[start:start + bucket]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    order = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in order]


def learning_rate(config: TrainConfig, step: int, total_steps: int, scale: float = 1.0) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine / plateau-scaled / constant.

    The warm-up lasts ``warmup_steps`` but at most a tenth of the run, so a short run
    still reaches the full rate.
    """
    warmup = min(config.warmup_steps, total_steps // 10)
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if config.lr_schedule == "cosine":
        t = min(1.0, step / max(1, total_steps))
        lo = config.min_lr_ratio
        return config.lr * warm * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t)))
    return config.lr * warm * scale


@torch.no_grad()
def evaluate(module: SequenceVAE, ids: torch.Tensor, vocab: Vocabulary, batch_size: int = 512,
             recon_molecules: int = 500, seed: int = 0, bf16: bool = True) -> dict[str, float]:
    """Validation metrics of ``module`` on padded ids ``(N, T)`` (see ``METRIC_COLUMNS``)."""
    was_training = module.training
    module.eval()
    device = module.device
    gen = torch.Generator(device=device).manual_seed(seed)  # same latent noise every epoch
    sums = torch.zeros(4, dtype=torch.float64)
    mus = []
    for i in range(0, ids.size(0), batch_size):
        batch = _trim(ids[i:i + batch_size]).to(device)
        with autocast(device, bf16):
            logits, mu, logvar = module(batch, generator=gen)
        t = module.loss_terms(batch, logits, mu, logvar, step=0)
        n = batch.size(0)
        sums += torch.tensor([t["recon"].item() * n, t["kl"].item() * n,
                              t["correct_tokens"].item(), t["tokens"].item()], dtype=torch.float64)
        mus.append(mu.float().cpu())
    n = ids.size(0)
    mu_all = torch.cat(mus)
    active = int((mu_all.var(0, unbiased=False) > 0.01).sum()) if n > 1 else 0
    recon_rate = float("nan")
    m = min(recon_molecules, n)
    if m > 0:
        out = module.generate(mu_all[:m].to(device))
        hits = 0
        for a, b in zip(out.tolist(), ids[:m].tolist()):
            got = vocab.decode(a)
            hits += got is not None and got == vocab.decode(b)
        recon_rate = hits / m
    module.train(was_training)
    recon, kl = (sums[0] / n).item(), (sums[1] / n).item()
    return {"val_loss": recon + module.config.beta_max * kl, "val_recon": recon, "val_kl": kl,
            "val_token_acc": (sums[2] / sums[3].clamp(min=1)).item(), "val_recon_rate": recon_rate,
            "active_units": active}


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """Drop the all-pad columns at the end of a batch (GRU time ~ sequence length)."""
    width = int((ids != Vocabulary.pad_id).sum(1).max()) if ids.numel() else 1
    return ids[:, :max(width, 2)]


def _read_state(ckpt: Path) -> dict:
    f = ckpt / STATE_FILE
    try:
        state = json.loads(f.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MolvaeError(f"{f}: unreadable training state ({exc}); delete {ckpt} to restart") from None
    if not isinstance(state, dict) or state.get("state_version") != STATE_VERSION:
        raise MolvaeError(f"{f}: not a molvae {STATE_VERSION} training state")
    return state


def find_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The last complete checkpoint folder of a run (``None`` if there is none)."""
    out = Path(out_dir)
    for name in (CHECKPOINT, CHECKPOINT + ".old"):  # .old survives a crash mid-swap
        if (out / name / STATE_FILE).exists():
            return out / name
    return None


def _rng_streams(device: torch.device) -> dict[str, torch.Tensor]:
    """The random streams a mid-epoch resume needs (dropout, word dropout, latent noise)."""
    streams = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        streams["cuda"] = torch.cuda.get_rng_state(device)
    return streams


def _restore_rng(ckpt: Path, device: torch.device) -> None:
    from safetensors.torch import load_file

    f = ckpt / RNG_FILE
    try:
        streams = load_file(str(f))
    except Exception as exc:  # missing or corrupt: the resume could not be exact
        raise MolvaeError(f"{f}: cannot restore the random state of a mid-epoch checkpoint "
                          f"({exc}); delete {ckpt} to restart") from None
    torch.set_rng_state(streams["cpu"])
    if device.type == "cuda" and "cuda" in streams:
        torch.cuda.set_rng_state(streams["cuda"], device)


def _write_checkpoint(out: Path, module: SequenceVAE, vocab: Vocabulary,
                      optimizer: torch.optim.Optimizer, state: dict,
                      rng: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    new, cur, old = out / (CHECKPOINT + ".new"), out / CHECKPOINT, out / (CHECKPOINT + ".old")
    shutil.rmtree(new, ignore_errors=True)
    save_model((module, vocab), new, metrics={"epoch": state["epoch"]})
    if rng is not None:
        save_file({k: v.contiguous() for k, v in rng.items()}, str(new / RNG_FILE))
    # A tensors-and-numbers dict: torch.load(weights_only=True) reads it without unpickling code.
    torch.save(optimizer.state_dict(), new / OPTIMIZER_FILE)
    _atomic_write_text(new / STATE_FILE, json.dumps(_json_safe(state), indent=1, allow_nan=False))
    shutil.rmtree(old, ignore_errors=True)
    if cur.exists():
        os.replace(cur, old)
    os.replace(new, cur)
    shutil.rmtree(old, ignore_errors=True)


def _write_metrics(out: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_write_text(out / "metrics.csv", buf.getvalue())


def _load_data(data: Any):
    if isinstance(data, (str, os.PathLike)):
        from .data import load_prepared

        return load_prepared(data)
    for attr in ("vocab", "train", "valid"):
        if not hasattr(data, attr):
            raise MolvaeError(f"train(): data must be a path or a PreparedData, got {type(data).__name__}")
    return data


def _model_config(vocab: Vocabulary, config: TrainConfig, total_steps: int) -> ModelConfig:
    d = {"vocab_size": len(vocab), "seq_len": vocab.seq_len, **config.model}
    if "kl_anneal_steps" not in config.model and config.kl_anneal_fraction is not None:
        d["kl_anneal_steps"] = int(round(config.kl_anneal_fraction * total_steps))
    return ModelConfig.from_dict(d, "train config: model")


#: ModelConfig keys a warm start may change: the loss, not the shapes of the weights.
WARM_START_KEYS = ("beta_max", "kl_schedule", "kl_anneal_steps", "kl_cycles", "free_bits",
                   "dropout", "word_dropout")


def _warm_start(config: TrainConfig, vocab: Vocabulary) -> SequenceVAE:
    """The network of ``config.init_from`` with ``config.model``'s loss settings (see TrainConfig)."""
    src = Path(config.init_from)
    trained = load_model(src, device="cpu")  # safetensors, checked name by name: nothing unpickled
    if trained.vocab.tokens != vocab.tokens:
        extra = sorted(set(vocab.tokens) - set(trained.vocab.tokens))
        raise MolvaeError(f"init_from {src}: the data's vocabulary differs from the model's"
                          + (f" (tokens the model lacks: {', '.join(extra[:10])})" if extra else "")
                          + f"; prepare the data with its vocabulary: molvae data prepare INPUT --out DIR "
                          f"--vocab {src / CONFIG_FILE}")
    if vocab.seq_len > trained.module.config.seq_len:
        raise MolvaeError(f"init_from {src}: the data hold molecules of {vocab.seq_len} tokens, "
                          f"longer than the model's {trained.module.config.seq_len}")
    cfg = asdict(trained.module.config)
    for key, value in config.model.items():
        if key not in cfg:
            raise MolvaeError(f"train config: unknown model key {key!r}")
        if key not in WARM_START_KEYS and value != cfg[key]:
            raise MolvaeError(f"init_from {src}: model.{key} is {cfg[key]!r} in that model and cannot "
                              f"change in a warm start (only {', '.join(WARM_START_KEYS)} can)")
        cfg[key] = value
    if "kl_schedule" not in config.model:
        cfg["kl_schedule"] = "constant"
    module = SequenceVAE(ModelConfig.from_dict(cfg, f"{src / CONFIG_FILE}: config"))
    module.load_state_dict(trained.module.state_dict())
    return module


def _train_step(net, module: SequenceVAE, optimizer, ids: torch.Tensor, step: int,
                config: TrainConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """One optimizer step; ``net`` is ``module`` or its DDP wrapper (whose forward syncs grads)."""
    with autocast(device, config.bf16):
        logits, mu, logvar = net(ids)
    terms = module.loss_terms(ids, logits, mu, logvar, step)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if config.grad_clip and config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
    optimizer.step()
    return terms


def _should_stop(config: TrainConfig, t_start: float, step_s: float, state: dict, run_steps: int) -> bool:
    """Whether this run must end before its next step (``stop_after_steps``, ``time_budget_s``).

    The budget keeps back room for one more step plus the final validation and checkpoint:
    the slowest end-of-epoch measured so far, and at least 3% of the budget.
    """
    if config.stop_after_steps is not None and run_steps >= config.stop_after_steps:
        return True
    if config.time_budget_s is None:
        return False
    reserve = max(0.03 * config.time_budget_s, float(state.get("end_of_epoch_s") or 0.0))
    return time.time() - t_start + step_s + reserve >= config.time_budget_s


def _plan_steps(config: TrainConfig, state: dict, run_steps: int, probe_t: float | None,
                steps_per_epoch: int, device: torch.device) -> tuple[float | None, int | None]:
    """Count the steps that fit ``plan_seconds`` from the speed of steps 5..30; fix it in ``state``.

    Returns ``(probe start time, planned total steps or None while still measuring)``.
    Validation takes a share of each epoch; it is unknown this early, so 8% is kept for it.
    """
    lo, hi = PLAN_PROBE_STEPS
    if run_steps == lo:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.time(), None
    if run_steps < hi or probe_t is None:
        return probe_t, None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.time() - probe_t) / (hi - lo)
    total = max(state["step"] + 1, int(config.plan_seconds * 0.92 / per_step))
    state["planned_total_steps"] = total
    log.info("planned %d steps (%.1f epochs) for %.0f s of training at %.1f ms per step",
             total, total / steps_per_epoch, config.plan_seconds, 1000 * per_step)
    return probe_t, total


# ---------------------------------------------------------------------------- train


def train(data: Any, out_dir: str | os.PathLike, config: TrainConfig | None = None,
          resume: bool = False, callback: Callable[[dict], None] | None = None) -> dict:
    """Train a :class:`~molvae.model.SequenceVAE` and write it to ``out_dir``.

    Args:
        data: a prepared folder or SMILES file (read with ``molvae.data.load_prepared``),
            or a ``PreparedData``.
        out_dir: the run folder (layout in the module docstring). It must not hold a run
            already unless ``resume`` is set.
        config: training settings (defaults: :class:`TrainConfig`).
        resume: continue from ``out_dir``'s last checkpoint (optimizer, schedule, epoch);
            starts fresh when there is none. ``epochs`` may be raised to train longer.
        callback: called with each epoch's metrics row after its checkpoint is written
            (raise ``KeyboardInterrupt`` in it to stop, as an interrupted run would).

    Returns:
        The run summary (also written to ``summary.json``): ``status`` (completed,
        early_stopping or time_limit), ``best_epoch``, ``best_val_loss``, ``epochs_run``,
        ``last`` (the last metrics row), ``parameters``, ``seconds`` and the settings.

    Raises:
        MolvaeError: bad settings or data, an existing run without ``resume``, or a loss
            that became NaN/inf (the last good checkpoint is kept).
    """
    config = config or TrainConfig()
    rank, world, local_rank = _dist()
    distributed = world > 1
    device = resolve_device(config.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    threads = torch.get_num_threads()
    wanted = config.num_threads or (cpu_threads_for_busy_machine() if device.type == "cpu" else None)
    if wanted:
        torch.set_num_threads(wanted)
    out = Path(out_dir)
    try:
        return _train(data, out, config, resume, callback, rank, world, device)
    finally:
        torch.set_num_threads(threads)
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(data, out: Path, config: TrainConfig, resume: bool, callback, rank: int, world: int,
           device: torch.device) -> dict:
    t_start = time.time()
    main = rank == 0
    dist = torch.distributed if world > 1 else None
    ckpt = find_checkpoint(out)
    if not resume and (ckpt is not None or (out / CONFIG_FILE).exists()):
        raise MolvaeError(f"{out} already holds a training run; resume it with --resume "
                          "(resume=True) or choose another output folder")
    if resume and ckpt is None and (out / CONFIG_FILE).exists():
        raise MolvaeError(f"{out} holds a model but no training checkpoint to resume from")

    data = _load_data(data)
    vocab: Vocabulary = data.vocab
    train_ids: torch.Tensor = data.train
    if config.max_train_molecules:
        train_ids = train_ids[:config.max_train_molecules]
    valid_ids: torch.Tensor = data.valid
    if config.max_valid_molecules:
        valid_ids = valid_ids[:config.max_valid_molecules]
    if train_ids.size(0) == 0:
        raise MolvaeError("no training molecules in the data")
    if valid_ids.size(0) == 0:
        log.warning("no validation molecules: validating on (up to 1000) training molecules")
        valid_ids = train_ids[:1000]
    per_rank_batch = max(1, config.batch_size // world)
    lengths = (train_ids != vocab.pad_id).sum(1)
    steps_per_epoch = math.ceil((train_ids.size(0) // world) / per_rank_batch)
    total_steps = steps_per_epoch * config.epochs  # unless a time plan fixes it (below)

    state: dict = {"state_version": STATE_VERSION, "epoch": 0, "step": 0, "best_val_loss": None,
                   "best_epoch": None, "bad_epochs": 0, "plateau_bad": 0, "lr_scale": 1.0,
                   "history": [], "elapsed_s": 0.0, "planned_total_steps": None,
                   "batch_in_epoch": 0, "epoch_sums": None, "epoch_seen": 0, "epoch_train_s": 0.0,
                   "end_of_epoch_s": 0.0}
    torch.manual_seed(config.seed)  # identical initial weights for a seed (and on every rank)
    if ckpt is not None:
        state = _read_state(ckpt)
        model_config = ModelConfig.from_dict(read_model_json(ckpt)["config"], f"{ckpt / CONFIG_FILE}: config")
        for k, v in config.model.items():
            if getattr(model_config, k) != v:
                raise MolvaeError(f"cannot resume {out}: model.{k} is {v!r} now but "
                                  f"{getattr(model_config, k)!r} in the checkpoint")
        module = load_model(ckpt, device="cpu").module
        if len(vocab) != model_config.vocab_size or vocab.tokens != read_model_json(ckpt)["vocabulary"]["tokens"]:
            raise MolvaeError(f"cannot resume {out}: the data's vocabulary differs from the checkpoint's")
        log.info("resuming %s after epoch %d (step %d)", out, state["epoch"], state["step"])
    elif config.init_from:
        module = _warm_start(config, vocab)
        model_config = module.config
        log.info("starting from the weights of %s", config.init_from)
    else:
        model_config = _model_config(vocab, config, total_steps)
        module = SequenceVAE(model_config)
    module.to(device)
    n_params = sum(p.numel() for p in module.parameters())
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if ckpt is not None:
        try:
            opt_state = torch.load(ckpt / OPTIMIZER_FILE, map_location=device, weights_only=True)
            optimizer.load_state_dict(opt_state)
        except Exception as exc:  # any unpickling refusal or mismatch means a bad file
            raise MolvaeError(f"{ckpt / OPTIMIZER_FILE}: cannot restore the optimizer ({exc}); "
                              f"delete {ckpt} to restart") from None
    net = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    # Data on the GPU once (as uint8 when the vocabulary allows): no host copies per step.
    small = torch.uint8 if len(vocab) < 256 else torch.int16
    if device.type == "cuda":
        train_store = train_ids.to(small).to(device)
    else:
        train_store = train_ids

    if main:
        out.mkdir(parents=True, exist_ok=True)
        log.info("training %s parameters (%.1f MB) on %s x%d: %d train / %d valid molecules, "
                 "%d steps per epoch", f"{n_params:,}", n_params * 4 / 1e6, device, world,
                 train_ids.size(0), valid_ids.size(0), steps_per_epoch)

    status = "completed"
    if state.get("planned_total_steps"):
        total_steps = int(state["planned_total_steps"])
    planning = config.plan_seconds is not None and not state.get("planned_total_steps")
    # A time plan replaces ``epochs``: until the speed is measured the run is open-ended.
    epochs = (math.ceil(total_steps / steps_per_epoch) if state.get("planned_total_steps")
              else 10**9 if planning else config.epochs)
    if planning:
        total_steps = 10**12  # the warm-up and the peak rate until the plan is made
    step_s = 0.0  # slowest step seen in this run: the budget keeps room for one more
    run_steps = 0  # steps taken by this run (stop_after_steps, the plan's speed probe)
    probe_t = None
    stop_run = False
    while state["epoch"] < epochs and not stop_run and state["step"] < total_steps:
        epoch = state["epoch"]
        t0 = t_here = time.time()  # t0: the epoch's start (earlier chunks included); t_here: this run's
        torch.manual_seed(_epoch_seed(config.seed, epoch, rank))  # dropout, word dropout, z noise
        module.train()
        batches = epoch_batches(lengths, per_rank_batch, config.seed, epoch, rank, world)
        sums = torch.zeros(4 + model_config.latent_dim, dtype=torch.float64, device=device)
        seen = 0
        first = int(state.get("batch_in_epoch") or 0)
        if first:  # a mid-epoch checkpoint: same batches, same random streams, same sums
            _restore_rng(ckpt, device)
            sums = torch.tensor(state["epoch_sums"], dtype=torch.float64, device=device)
            seen = int(state["epoch_seen"])
            t0 -= float(state.get("epoch_train_s") or 0.0)
        bar = progress(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not main)
        for i in range(first, len(batches)):
            idx = batches[i]
            t_step = time.time()
            if state["step"] >= total_steps:
                break  # a time-planned schedule ends mid-epoch; validate what was trained
            if _should_stop(config, t_start, step_s, state, run_steps):
                stop_run = True
                state.update(batch_in_epoch=i, epoch_sums=sums.tolist(), epoch_seen=seen,
                             epoch_train_s=time.time() - t0)
                break
            lr = learning_rate(config, state["step"], total_steps, state["lr_scale"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            width = max(int(lengths[idx].max()), 2)  # trim padding; lengths live on the CPU
            if device.type == "cuda":
                ids = train_store[idx.pin_memory().to(device, non_blocking=True), :width].long()
            else:
                ids = train_store[idx, :width]
            terms = _train_step(net, module, optimizer, ids, state["step"], config, device)
            n = ids.size(0)
            seen += n
            state["step"] += 1
            sums[:4] += torch.stack([terms["loss"].detach() * n, terms["recon"].detach() * n,
                                     terms["kl"].detach() * n, torch.tensor(float(n), device=device)]).double()
            sums[4:] += terms["kl_per_dim"].double() * n
            # The finite check costs a host sync: every step on CPU, every log_every on GPU.
            if device.type == "cpu" or i % config.log_every == 0 or i == len(batches) - 1:
                bad = (~torch.isfinite(terms["loss"].detach())).float().reshape(1)
                if dist is not None:
                    dist.all_reduce(bad)
                if bad.item() > 0:
                    bar.close()
                    raise MolvaeError(
                        f"training loss became {terms['loss'].item()} at epoch {epoch + 1}, step "
                        f"{state['step']}; the last good checkpoint is kept in {out}. Lower the "
                        "learning rate (--lr) or raise grad_clip, then resume.")
            if i % config.log_every == 0:
                bar.set_postfix(loss=f"{terms['loss'].item():.2f}", kl=f"{terms['kl'].item():.1f}",
                                beta=f"{terms['beta'].item():.3f}", refresh=False)
            bar.update(1)
            run_steps += 1
            if device.type == "cuda" and run_steps % config.log_every == 0:
                torch.cuda.synchronize(device)  # so step times count the GPU's work
            step_s = max(step_s, time.time() - t_step) if run_steps > 2 else step_s
            if planning:
                probe_t, new_total = _plan_steps(config, state, run_steps, probe_t, steps_per_epoch, device)
                if new_total is not None:
                    total_steps, planning = new_total, False
                    epochs = math.ceil(total_steps / steps_per_epoch)
                    if "kl_anneal_steps" not in config.model and config.kl_anneal_fraction is not None:
                        module.config.kl_anneal_steps = int(round(config.kl_anneal_fraction * total_steps))
                    bar.set_description(f"epoch {epoch + 1}/{epochs}")
        bar.close()
        if stop_run:
            state["elapsed_s"] += time.time() - t_here
            status = "time_budget"
            if main:
                state["train_config"] = asdict(config)
                _write_checkpoint(out, module, vocab, optimizer, state, rng=_rng_streams(device))
            if dist is not None:
                dist.barrier()
            log.info("time budget reached at epoch %d, step %d: checkpoint written; resume to "
                     "continue", epoch + 1, state["step"])
            break
        t_end = time.time()
        train_seconds = time.time() - t0
        counts = torch.tensor([seen], dtype=torch.long, device=device)
        if dist is not None:
            dist.all_reduce(sums)
            gathered = [torch.zeros_like(counts) for _ in range(world)]
            dist.all_gather(gathered, counts)
            rank_counts = [int(c.item()) for c in gathered]
        else:
            rank_counts = [seen]
        total = sums[3].item()
        kl_dim = (sums[4:] / total).float()
        val = evaluate(module, valid_ids, vocab, recon_molecules=config.recon_eval_molecules,
                       seed=config.seed, bf16=config.bf16)
        if dist is not None:  # every rank takes rank 0's numbers, so all decide alike
            v = torch.tensor([val["val_loss"]], dtype=torch.float64, device=device)
            dist.broadcast(v, 0)
            val["val_loss"] = v.item()
        row = {
            "epoch": epoch + 1, "step": state["step"],
            "loss": (sums[0] / total).item(), "recon": (sums[1] / total).item(),
            "kl": (sums[2] / total).item(), "beta": kl_weight(model_config, state["step"]),
            "lr": optimizer.param_groups[0]["lr"], "active_units": val.pop("active_units"),
            "kl_per_dim_mean": kl_dim.mean().item(), "kl_per_dim_min": kl_dim.min().item(),
            "kl_per_dim_max": kl_dim.max().item(), **val,
            "seconds": time.time() - t0, "molecules_per_s": sum(rank_counts) / max(train_seconds, 1e-9),
            "world_size": world, "rank_molecules": ";".join(map(str, rank_counts)),
        }
        if not math.isfinite(row["val_loss"]):
            raise MolvaeError(f"validation loss became {row['val_loss']} at epoch {epoch + 1}; "
                              f"the last good checkpoint is kept in {out}. Lower --lr and resume.")
        state["history"].append(row)
        state.update(epoch=epoch + 1, batch_in_epoch=0, epoch_sums=None, epoch_seen=0, epoch_train_s=0.0)
        improved = state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, bad_epochs=0, plateau_bad=0)
        else:
            state["bad_epochs"] += 1
            state["plateau_bad"] += 1
            if config.lr_schedule == "plateau" and state["plateau_bad"] >= config.plateau_patience:
                state["lr_scale"] *= config.plateau_factor
                state["plateau_bad"] = 0
        state["elapsed_s"] += time.time() - t_here
        if main:
            if improved:
                save_model((module, vocab), out, metrics={**row, "train_config": asdict(config)})
            state["train_config"] = asdict(config)
            _write_checkpoint(out, module, vocab, optimizer, state)
            _write_metrics(out, state["history"])
            log.info("epoch %d: loss %.3f recon %.3f kl %.2f beta %.3f | val loss %.3f recon-rate %.3f "
                     "token-acc %.3f active %d | %.0f mol/s", epoch + 1, row["loss"], row["recon"],
                     row["kl"], row["beta"], row["val_loss"], row["val_recon_rate"],
                     row["val_token_acc"], row["active_units"], row["molecules_per_s"])
        if dist is not None:
            dist.barrier()  # the checkpoint is complete before any rank moves on
        state["end_of_epoch_s"] = max(float(state.get("end_of_epoch_s") or 0.0), time.time() - t_end)
        if callback is not None:
            callback(row)
        if config.patience and state["bad_epochs"] >= config.patience:
            status = "early_stopping"
            break
        if config.max_hours and time.time() - t_start > config.max_hours * 3600:
            status = "time_limit"
            break

    summary = {
        "status": status, "out_dir": str(out), "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"], "best_val_loss": state["best_val_loss"],
        "last": state["history"][-1] if state["history"] else None, "parameters": n_params,
        "seconds": state["elapsed_s"], "world_size": world, "device": str(device),
        "model_config": asdict(model_config), "train_config": asdict(config),
    }
    if main:
        _atomic_write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=1, allow_nan=False))
        log.info("training %s: best epoch %s, val loss %.3f; model in %s", status, state["best_epoch"],
                 state["best_val_loss"] or float("nan"), out)
    return summary


# ---------------------------------------------------------------------------- benchmark


def benchmark_training(device: str = "auto", batch_size: int = 256, steps: int = 10, warmup: int = 2,
                       n_molecules: int = 4096, precisions: list[str] | None = None,
                       model: dict | None = None, seed: int = 0) -> list[dict]:
    """Training throughput (molecules/s) of the default architecture on bundled MOSES data.

    Times ``steps`` optimizer steps (after ``warmup``) of the same step function
    :func:`train` uses, on length-bucketed batches of real molecules. On CUDA it measures
    fp32 and bf16 autocast in the same run (``precisions``); on CPU fp32 only.
    """
    from .data import bundled
    from .tokens import smiles_to_selfies

    dev = resolve_device(device)
    precisions = precisions or (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"])
    smiles = bundled("train")[:n_molecules]
    vocab = Vocabulary.build([smiles_to_selfies(s) for s in smiles])
    ids_all = vocab.to_tensor([vocab.encode(s) for s in smiles])
    lengths = (ids_all != vocab.pad_id).sum(1)
    batches = epoch_batches(lengths, batch_size, seed, 0)
    rows = []
    for precision in precisions:
        torch.manual_seed(seed)
        config = TrainConfig(batch_size=batch_size, bf16=precision == "bf16", model=dict(model or {}))
        module = SequenceVAE(_model_config(vocab, config, 1000)).to(dev).train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr)
        n_params = sum(p.numel() for p in module.parameters())
        done = 0
        t0 = None
        for i in range(warmup + steps):
            if i == warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0, done = time.perf_counter(), 0
            ids = _trim(ids_all[batches[i % len(batches)]]).to(dev)
            _train_step(module, module, optimizer, ids, i, config, dev)
            done += ids.size(0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        rows.append({"device": str(dev), "precision": precision, "batch_size": batch_size,
                     "parameters": n_params, "size_mb": round(n_params * 4 / 1e6, 2),
                     "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                     "steps": steps, "ms_per_step": round(1000 * dt / steps, 1),
                     "molecules_per_s": round(done / dt, 1)})
    return rows


# Candidate settings ``molvae bench train --candidates`` compares by the quality each reaches in
# the same training time. Learning rates scale with the square root of the batch (Adam), with
# a warm-up; the transformer is sized like the default GRU decoder (3.8 M vs 3.2 M parameters).
CANDIDATES: dict[str, dict] = {
    "gru-b512": {"batch_size": 512, "lr": 1e-3},
    "gru-b1024": {"batch_size": 1024, "lr": 1.4e-3, "warmup_steps": 200},
    "gru-b2048": {"batch_size": 2048, "lr": 2e-3, "warmup_steps": 200},
    "gru-b2048-fp32": {"batch_size": 2048, "lr": 2e-3, "warmup_steps": 200, "bf16": False},
    "gru-b2048-freebits": {"batch_size": 2048, "lr": 2e-3, "warmup_steps": 200,
                           "model": {"free_bits": 0.25}},   # against dead latent units
    "gru-b2048-beta0.25": {"batch_size": 2048, "lr": 2e-3, "warmup_steps": 200,
                           "model": {"beta_max": 0.25}},
    "transformer-b1024": {"batch_size": 1024, "lr": 7e-4, "warmup_steps": 300,
                          "model": {"decoder": "transformer", "dec_hidden": 256, "dec_layers": 4}},
    "transformer-b2048": {"batch_size": 2048, "lr": 1e-3, "warmup_steps": 300,
                          "model": {"decoder": "transformer", "dec_hidden": 256, "dec_layers": 4}},
}


def benchmark_candidates(data: Any, out_dir: str | os.PathLike, names: list[str] | None = None,
                         seconds: float = 60.0, device: str = "auto", seed: int = 0,
                         base: dict | None = None) -> list[dict]:
    """Train each candidate for the same planned time and report the quality it reached.

    Each run plans its schedule for ``seconds`` of training (``plan_seconds``), so every
    candidate ends its cosine schedule, then validates: ``val_nll`` (recon + KL, the
    negative ELBO, nats per molecule), reconstruction rate, active units, molecules/s. The
    best candidate is the one with the lowest ``val_nll`` in the same time: quality per
    GPU-minute, which is what a short GPU job buys. ``base`` overrides every candidate's
    settings (e.g. ``max_train_molecules``, or tiny networks for a dry run).
    """
    data = _load_data(data)
    out = Path(out_dir)
    rows = []
    for name in names or list(CANDIDATES):
        if name not in CANDIDATES:
            raise MolvaeError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
        settings = {"epochs": 1, "patience": 0, "device": device, "seed": seed,
                    "plan_seconds": seconds, "max_valid_molecules": 5000, "recon_eval_molecules": 500,
                    **CANDIDATES[name], **(base or {})}
        settings["model"] = {**CANDIDATES[name].get("model", {}), **(base or {}).get("model", {})}
        run = out / name
        if run.exists():
            shutil.rmtree(run)
        t0 = time.time()
        summary = train(data, run, TrainConfig(**settings))
        last = summary["last"]
        history = json.loads((run / "summary.json").read_text())
        with open(run / "metrics.csv") as f:
            epochs_rows = list(csv.DictReader(f))
        seen = [sum(int(n) for n in r["rank_molecules"].split(";")) for r in epochs_rows]
        train_s = sum(n / float(r["molecules_per_s"]) for n, r in zip(seen, epochs_rows))
        rows.append({"candidate": name, "batch_size": settings["batch_size"], "lr": settings["lr"],
                     "precision": "bf16" if settings.get("bf16", True) else "fp32",
                     "decoder": settings["model"].get("decoder", "gru"),
                     "parameters": summary["parameters"], "steps": last["step"],
                     "molecules_per_s": round(sum(seen) / max(train_s, 1e-9), 1),
                     "val_nll": round(last["val_recon"] + last["val_kl"], 3),
                     "val_recon": round(last["val_recon"], 3), "val_kl": round(last["val_kl"], 3),
                     "val_recon_rate": last["val_recon_rate"], "active_units": last["active_units"],
                     "wall_s": round(time.time() - t0, 1), "epochs": history["epochs_run"]})
        log.info("candidate %s: val NLL %.2f, reconstruction %.3f, %.0f mol/s", name,
                 rows[-1]["val_nll"], last["val_recon_rate"], rows[-1]["molecules_per_s"])
    return rows
