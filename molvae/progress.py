"""Progress bars that respect ``--quiet`` (env MOLVAE_QUIET=1)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def quiet() -> bool:
    return os.environ.get("MOLVAE_QUIET", "") not in ("", "0")


def progress(iterable=None, desc: str | None = None, total: int | None = None,
             disable: bool = False, **kwargs):
    """A tqdm bar, hidden under ``--quiet`` or when ``disable`` is set."""
    return tqdm(iterable, desc=desc, total=total, disable=disable or quiet(),
                leave=False, dynamic_ncols=True, mininterval=0.5, **kwargs)
