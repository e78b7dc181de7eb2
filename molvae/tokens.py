"""SELFIES vocabulary: SMILES <-> SELFIES <-> token ids <-> padded tensors.

Every sequence the model sees is ``[bos] tok_1 … tok_n [eos] [pad] …`` with
``n <= vocab.max_len``. A molecule that SELFIES cannot encode, that uses a token outside the
vocabulary, or that is too long is rejected with that reason, never silently mangled.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import selfies as sf

from .errors import MolvaeError

PAD, BOS, EOS = "[pad]", "[bos]", "[eos]"
SPECIALS = (PAD, BOS, EOS)
FORMAT_VERSION = 1


class EncodeError(MolvaeError):
    """A molecule that cannot be turned into token ids; the message is the reason."""


def smiles_to_selfies(smiles: str) -> str:
    """SELFIES of a SMILES string; raises :class:`EncodeError` when SELFIES cannot encode it."""
    try:
        out = sf.encoder(smiles)
    except Exception as exc:  # selfies.EncoderError, or RDKit-free parse failures
        raise EncodeError(f"SELFIES cannot encode this molecule: {exc}") from None
    if not out:
        raise EncodeError("SELFIES cannot encode this molecule: empty encoding")
    return out


def selfies_to_smiles(selfies: str) -> str:
    """SMILES of a SELFIES string ('' if it decodes to nothing)."""
    try:
        return sf.decoder(selfies) or ""
    except Exception:
        return ""


#: Decoded SELFIES remembered by :func:`selfies_to_canonical`, and the longest string it
#: remembers (a model's decodes are far shorter): a few MB at most.
DECODE_CACHE_SIZE = 1 << 16
DECODE_CACHE_MAX_CHARS = 4096


def selfies_to_canonical(selfies: str) -> str | None:
    """Canonical SMILES of a SELFIES string, or ``None`` if it decodes to nothing valid.

    Cached: a converged search decodes the same token sequence again and again (a third of
    the trials of a 10,000-call CMA-ES run repeat a molecule), and the SELFIES decoder and
    RDKit's canonicalisation cost ~0.8 ms a molecule, as much as scoring QED.
    """
    if len(selfies) > DECODE_CACHE_MAX_CHARS:
        return _selfies_to_canonical.__wrapped__(selfies)
    return _selfies_to_canonical(selfies)


@lru_cache(maxsize=DECODE_CACHE_SIZE)
def _selfies_to_canonical(selfies: str) -> str | None:
    from .chem import canonical  # lazy: loading a vocabulary or training needs no RDKit

    return canonical(selfies_to_smiles(selfies))


def split_selfies(selfies: str) -> list[str]:
    return list(sf.split_selfies(selfies))


@dataclass
class Vocabulary:
    """Token list (ids are positions) and the maximum number of SELFIES tokens per molecule."""

    tokens: list[str]
    max_len: int

    def __post_init__(self):
        if list(self.tokens[:3]) != list(SPECIALS):
            raise MolvaeError(f"vocabulary must start with {SPECIALS}, got {self.tokens[:3]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise MolvaeError("vocabulary has duplicate tokens")
        self.stoi = {t: i for i, t in enumerate(self.tokens)}

    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def seq_len(self) -> int:
        """Length of a padded sequence: ``[bos]`` + ``max_len`` tokens + ``[eos]``."""
        return self.max_len + 2

    # ------------------------------------------------------------------ building and I/O

    @classmethod
    def build(cls, selfies: Iterable[str], max_len: int | None = None) -> "Vocabulary":
        """Vocabulary from a dataset's SELFIES alphabet; ``max_len`` defaults to the longest."""
        counts: Counter[str] = Counter()
        longest = 0
        for s in selfies:
            toks = split_selfies(s)
            counts.update(toks)
            longest = max(longest, len(toks))
        alphabet = sorted(counts)
        return cls(list(SPECIALS) + alphabet, max_len if max_len is not None else longest)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "tokens": self.tokens, "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocabulary") -> "Vocabulary":
        try:
            return cls(list(d["tokens"]), int(d["max_len"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MolvaeError(f"{source}: not a molvae vocabulary ({exc!r})") from None

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        path = Path(path)
        if not path.exists():
            raise MolvaeError(f"{path}: vocabulary file not found")
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MolvaeError(f"{path}: vocabulary is not valid JSON ({exc})") from None
        if isinstance(d, dict) and "tokens" not in d and isinstance(d.get("vocabulary"), dict):
            d = d["vocabulary"]  # a model folder's model.json holds its vocabulary
        return cls.from_dict(d, str(path))

    # ------------------------------------------------------------------ encoding

    def encode_selfies(self, selfies: str) -> list[int]:
        """``[bos] + ids + [eos]``; raises :class:`EncodeError` naming an unknown token or the length."""
        toks = split_selfies(selfies)
        if not toks:
            raise EncodeError("empty SELFIES")
        # Length first: an over-long molecule often also needs a token that only long
        # molecules use ([Ring3], [Branch3]), and its length is what the user must know.
        if len(toks) > self.max_len:
            raise EncodeError(f"too long: {len(toks)} SELFIES tokens > max_len {self.max_len}")
        for t in toks:
            if t not in self.stoi or t in SPECIALS:
                raise EncodeError(f"token {t} is not in the vocabulary")
        return [self.bos_id] + [self.stoi[t] for t in toks] + [self.eos_id]

    def encode(self, smiles: str) -> list[int]:
        """Token ids of a (standardized) SMILES string; raises :class:`EncodeError`."""
        return self.encode_selfies(smiles_to_selfies(smiles))

    def try_encode(self, smiles: str) -> tuple[list[int] | None, str | None]:
        """Like :meth:`encode`, returning ``(ids, None)`` or ``(None, reason)``."""
        try:
            return self.encode(smiles), None
        except EncodeError as exc:
            return None, str(exc)

    def to_tensor(self, seqs: Sequence[Sequence[int]]):
        """Pad id lists into a ``(batch, seq_len)`` LongTensor."""
        import torch

        out = torch.full((len(seqs), self.seq_len), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s) > self.seq_len:
                raise EncodeError(f"sequence {i} has {len(s)} ids > seq_len {self.seq_len}")
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out

    # ------------------------------------------------------------------ decoding

    def decode_selfies(self, ids: Iterable[int]) -> str:
        """SELFIES string of an id sequence: skips ``[bos]``/``[pad]``, stops at ``[eos]``."""
        toks = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id) or i >= len(self.tokens):
                continue
            toks.append(self.tokens[i])
        return "".join(toks)

    def decode(self, ids: Iterable[int]) -> str | None:
        """Canonical SMILES of an id sequence, or ``None`` if it decodes to nothing valid."""
        return selfies_to_canonical(self.decode_selfies(ids))
