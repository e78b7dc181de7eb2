"""Where the tensors run: device choice, CPU threads and reduced precision.

The foundation under ``model.py`` and ``train.py`` (both import from here, never the
reverse), so that a helper about the machine has one home.

* :func:`resolve_device` — ``'auto'`` picks CUDA when present.
* :func:`cpu_threads_for_busy_machine` — one torch thread when the cores are already busy.
* :func:`cpu_bf16_supported` / :func:`use_bf16` — bf16 only where the hardware computes it.
  On a Xeon with AMX/avx512_bf16 a GRU step ran 3.5x faster in bf16 than in fp32; on an
  AVX2-only CPU (AMD EPYC here) PyTorch emulates bf16 and the same decoding step ran 5-9x
  *slower* (`scripts`-free measurement: 256 rows x 50 GRU steps, 1.3-2.2 s fp32 against
  11.8 s bf16). So bf16 is never assumed: it is used on CUDA and on CPUs that report
  the instructions, and ``MOLVAE_CPU_BF16=0/1`` overrides the detection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

from .errors import MolvaeError

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MolvaeError(f"device {device!r}: CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise MolvaeError(f"device {device!r}: not a device name like cuda:0") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MolvaeError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if name == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    raise MolvaeError(f"device {device!r}: use auto, cpu, cuda or cuda:N")


def cpu_threads_for_busy_machine() -> int | None:
    """1 when other processes already keep every core busy, else ``None`` (torch's default).

    Measured on a shared 2-core machine: torch's 2 OpenMP threads ran a training step 26x
    slower than 1 thread (5.8 vs 153 molecules/s), as each thread spins waiting for the
    other to be scheduled. ``num_threads`` overrides this. Logged at debug level: it is
    a detail of the machine, not something a chemist has to act on.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1 and load >= cores:
        log.debug("load average %.1f on %d cores: using 1 torch CPU thread (set num_threads to "
                  "override)", load, cores)
        return 1
    return None


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 or AMX); env override.

    ``MOLVAE_CPU_BF16=1`` forces bf16 on (e.g. a non-Linux machine that has it),
    ``MOLVAE_CPU_BF16=0`` forces it off.
    """
    env = os.environ.get("MOLVAE_CPU_BF16", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return any(flag in _cpuinfo_flags() for flag in BF16_CPU_FLAGS)


def use_bf16(device: torch.device, requested: bool = True) -> bool:
    """bf16 for ``device``: asked for, and CUDA or a CPU with bf16 instructions."""
    if not requested:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_bf16_supported()


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast where :func:`use_bf16` allows it, else a no-op context."""
    if use_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
