"""Datasets: read SMILES tables, prepare them for training, cache the encoded tensors.

``prepare`` turns any SMILES file into a *prepared folder*::

    prepared.csv        row, smiles (standardized), selfies, split (train/valid), other input columns
    vocab.json          the SELFIES vocabulary (see molvae.tokens)
    rejects.csv         row, input, reason — every input row that was not kept, duplicates included
    encoded.safetensors token ids of the train and valid splits (the cache that makes reloads fast)
    summary.json        counts, settings and the input's checksum

Rows in = rows kept + duplicates + rows rejected; nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MolvaeError
from .tokens import EncodeError, Vocabulary, smiles_to_selfies

log = logging.getLogger(__name__)

SMILES_COLUMN_NAMES = ("smiles", "SMILES", "Smiles", "canonical_smiles", "CANONICAL_SMILES", "smi", "SMI")
DEFAULT_MAX_LEN = 100  # SELFIES tokens; MOSES molecules need at most ~60
PREPARED_FORMAT = 1
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = {
    "train": PACKAGE_ROOT / "data" / "moses_train_100k.csv.gz",
    "test": PACKAGE_ROOT / "data" / "moses_test.csv.gz",
    "test_scaffolds": PACKAGE_ROOT / "data" / "moses_test_scaffolds.csv.gz",
}


def cache_dir() -> Path:
    """Folder for caches (downloaded datasets, prepared files): $MOLVAE_CACHE or ~/.cache/molvae."""
    return Path(os.environ.get("MOLVAE_CACHE", Path.home() / ".cache" / "molvae"))


# ---------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    if not path.exists():
        raise MolvaeError(f"{path}: file not found")
    if path.is_dir():
        raise MolvaeError(f"{path}: is a folder, expected a SMILES file (.csv, .tsv, .smi, optionally .gz)")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise MolvaeError(f"{path}: not a readable gzip file ({exc})") from None
    if not raw.strip():
        raise MolvaeError(f"{path}: file is empty")
    if b"\x00" in raw[:65536]:
        raise MolvaeError(f"{path}: binary content, expected a text table of SMILES (.csv, .tsv, .smi)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MolvaeError(f"{path}: not UTF-8 text ({exc}); expected a SMILES table") from None


def _looks_like_header(token: str) -> bool:
    from . import chem

    return token in SMILES_COLUMN_NAMES or chem.to_mol(token) is None


def read_smiles_table(path: str | os.PathLike, smiles_column: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read a .csv/.tsv/.smi/.txt file (optionally .gz) into a DataFrame of strings.

    Returns ``(table, smiles_column)``. Every input row is kept — empty or invalid SMILES
    included — so later stages can account for each one. Other columns (ids, measured
    properties) come along unchanged.
    """
    path = Path(path)
    text = _read_text(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ".csv"
    read = dict(dtype=str, keep_default_na=False, skip_blank_lines=False)
    try:
        if kind in (".smi", ".txt", ".smiles"):
            lines = text.splitlines()
            while lines and not lines[-1].strip():
                lines.pop()  # a trailing newline is not an empty row
            first = lines[0].split()
            has_header = bool(first) and _looks_like_header(first[0]) and first[0].lower() in (
                "smiles", "smi", "canonical_smiles")
            header = first if has_header else None
            rows = [ln.split(None, 1) for ln in lines[1 if has_header else 0:]]
            cols = [header[0], *(header[1:2] or ["name"])] if header else ["smiles", "name"]
            table = pd.DataFrame([(r[0] if r else "", r[1].strip() if len(r) > 1 else "") for r in rows],
                                 columns=cols[:2])
            if smiles_column is None:
                smiles_column = cols[0]
        else:
            sep = "\t" if kind == ".tsv" else ","
            table = pd.read_csv(io.StringIO(text), sep=sep, **read)
            table = table.dropna(how="all") if len(table.columns) > 1 else table
    except pd.errors.ParserError as exc:
        raise MolvaeError(f"{path}: cannot parse as a table ({exc})") from None
    if smiles_column is None:
        found = [c for c in SMILES_COLUMN_NAMES if c in table.columns]
        if not found:
            lower = {c.lower(): c for c in table.columns}
            found = [lower[c] for c in ("smiles",) if c in lower]
        if not found:
            raise MolvaeError(
                f"{path}: no SMILES column found; columns are {list(table.columns)[:10]}. "
                "Name it 'smiles' or pass --smiles-column."
            )
        smiles_column = found[0]
    elif smiles_column not in table.columns:
        raise MolvaeError(f"{path}: column '{smiles_column}' not found; columns are {list(table.columns)[:10]}")
    return table.reset_index(drop=True), smiles_column


def read_smiles(path: str | os.PathLike, smiles_column: str | None = None) -> list[str]:
    """Just the SMILES strings of a file (as written; not standardized)."""
    table, col = read_smiles_table(path, smiles_column)
    return table[col].astype(str).tolist()


def bundled(name: str = "train") -> list[str]:
    """SMILES of a bundled MOSES file: 'train' (100k sample), 'test', 'test_scaffolds'."""
    if name not in BUNDLED:
        raise MolvaeError(f"unknown bundled dataset '{name}'; choose from {sorted(BUNDLED)}")
    return read_smiles(BUNDLED[name])


# ---------------------------------------------------------------------------- preparing


def _standardize_encode(text: str, keep_stereo: bool = True) -> tuple[str | None, str | None, str | None]:
    from . import chem

    smi, reason = chem.standardize(text, keep_stereo)
    if smi is None:
        return None, None, reason
    try:
        return smi, smiles_to_selfies(smi), None
    except EncodeError as exc:
        return smi, None, str(exc)


def _standardize_encode_nostereo(text):
    return _standardize_encode(text, keep_stereo=False)


@dataclass
class PreparedData:
    """A prepared dataset: vocabulary, train/valid token-id tensors and their SMILES."""

    vocab: Vocabulary
    train: "torch.Tensor"  # noqa: F821  (LongTensor, (N, seq_len))
    valid: "torch.Tensor"  # noqa: F821
    train_smiles: list[str]
    valid_smiles: list[str]
    path: Path | None = None
    summary: dict = field(default_factory=dict)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    valid_fraction: float = 0.05,
    max_len: int | None = None,
    vocab: Vocabulary | str | os.PathLike | None = None,
    keep_stereo: bool = True,
    smiles_column: str | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> PreparedData:
    """Standardize, deduplicate, encode and split a SMILES file into ``out_dir``.

    Args:
        max_len: longest molecule kept, in SELFIES tokens (default 100, or the given
            vocabulary's). The vocabulary's ``max_len`` becomes the longest kept molecule.
        vocab: an existing vocabulary (e.g. a trained model's): molecules with tokens outside
            it are rejected with the token named, instead of growing the alphabet.
        force: redo the work even if ``out_dir`` already holds this exact preparation.

    The split is a seeded permutation of the kept rows, so the same input and seed always
    give the same train/valid sets. A second call with the same input and settings loads
    the cached result instead of recomputing.
    """
    input_path = Path(input_path)
    out = Path(out_dir)
    if isinstance(vocab, (str, os.PathLike)):
        vocab = Vocabulary.load(vocab)
    if not 0.0 <= valid_fraction < 1.0:
        raise MolvaeError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    cap = max_len or (vocab.max_len if vocab is not None else DEFAULT_MAX_LEN)
    if not input_path.exists():
        raise MolvaeError(f"{input_path}: file not found")
    settings = {
        "format": PREPARED_FORMAT, "input_sha256": _file_digest(input_path), "seed": seed,
        "valid_fraction": valid_fraction, "max_len": cap, "keep_stereo": keep_stereo,
        "smiles_column": smiles_column, "vocab": vocab.to_dict() if vocab is not None else None,
    }
    if not force and (out / "summary.json").exists():
        try:
            old = json.loads((out / "summary.json").read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("settings") == settings and (out / "encoded.safetensors").exists():
            log.info("%s: already prepared from this input with these settings (cached)", out)
            return load_prepared(out)

    table, col = read_smiles_table(input_path, smiles_column)
    n_in = len(table)
    texts = table[col].tolist()
    from . import chem  # imported here so that loading prepared data (training) needs no RDKit

    fn = _standardize_encode if keep_stereo else _standardize_encode_nostereo
    results = chem.parallel_map(fn, texts, workers=workers, desc="standardize+encode", progress=progress)

    rejects: list[tuple[int, str, str]] = []
    first_row: dict[str, int] = {}
    keep_idx, keep_smiles, keep_selfies = [], [], []
    n_dup = 0
    for i, (smi, sel, reason) in enumerate(results):
        row = i + 1  # 1-based data row, as a spreadsheet user counts them below the header
        if reason is not None:
            rejects.append((row, texts[i], reason))
            continue
        if smi in first_row:
            n_dup += 1
            rejects.append((row, texts[i], f"duplicate of row {first_row[smi]}"))
            continue
        first_row[smi] = row
        keep_idx.append(i)
        keep_smiles.append(smi)
        keep_selfies.append(sel)

    # Length and alphabet checks need the vocabulary, which is built from what survives.
    if vocab is None:
        from .tokens import split_selfies
        lengths = [len(split_selfies(s)) for s in keep_selfies]
        fits = [n <= cap for n in lengths]
        vocab = Vocabulary.build([s for s, ok in zip(keep_selfies, fits) if ok])
        vocab.max_len = min(cap, vocab.max_len) if vocab.max_len else cap
    ids_list, kept = [], []
    for j, sel in enumerate(keep_selfies):
        try:
            if len(vocab.tokens) <= 3:
                raise EncodeError("no molecule left to build a vocabulary from")
            ids_list.append(vocab.encode_selfies(sel))
            kept.append(j)
        except EncodeError as exc:
            i = keep_idx[j]
            rejects.append((i + 1, texts[i], str(exc)))
    n_kept = len(kept)
    n_rejected = len(rejects) - n_dup
    assert n_kept + n_dup + n_rejected == n_in, "row accounting is broken"  # a bug, not user input

    rng = np.random.RandomState(seed)
    order = rng.permutation(n_kept)
    n_valid = int(round(n_kept * valid_fraction)) if n_kept > 1 else 0
    split = np.array(["train"] * n_kept, dtype=object)
    split[order[:n_valid]] = "valid"

    rows = [keep_idx[j] for j in kept]
    prepared = table.iloc[rows].drop(columns=[col]).reset_index(drop=True)
    prepared.insert(0, "row", [r + 1 for r in rows])
    prepared.insert(1, "smiles", [keep_smiles[j] for j in kept])
    prepared.insert(2, "selfies", [keep_selfies[j] for j in kept])
    prepared.insert(3, "split", split)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "prepared.csv.tmp"
    prepared.to_csv(tmp, index=False)
    os.replace(tmp, out / "prepared.csv")
    rej = pd.DataFrame(sorted(rejects), columns=["row", "input", "reason"])
    rej.to_csv(out / "rejects.csv.tmp", index=False)
    os.replace(out / "rejects.csv.tmp", out / "rejects.csv")
    vocab.save(out / "vocab.json")
    _save_encoded(out / "encoded.safetensors", vocab, ids_list, split)
    summary = {
        "input": str(input_path), "smiles_column": col, "rows_in": n_in, "kept": n_kept,
        "duplicates": n_dup, "rejected": n_rejected, "train": int((split == "train").sum()),
        "valid": n_valid, "vocab_size": len(vocab), "max_len": vocab.max_len, "settings": settings,
    }
    _atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return load_prepared(out)


def _save_encoded(path: Path, vocab: Vocabulary, ids_list: list[list[int]], split: np.ndarray) -> None:
    from safetensors.numpy import save_file

    dtype = np.uint8 if len(vocab) < 256 else np.int16
    arr = np.full((len(ids_list), vocab.seq_len), vocab.pad_id, dtype=dtype)
    for i, ids in enumerate(ids_list):
        arr[i, : len(ids)] = ids
    is_train = split == "train"
    tmp = path.with_name(path.name + ".tmp")
    save_file({"train": np.ascontiguousarray(arr[is_train]), "valid": np.ascontiguousarray(arr[~is_train])}, str(tmp))
    os.replace(tmp, path)


def load_prepared(path: str | os.PathLike, **prepare_kwargs) -> PreparedData:
    """Load a prepared folder; a raw SMILES file is prepared first into the cache folder."""
    import torch
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if path.is_file():
        digest = _file_digest(path)[:16]
        return prepare(path, cache_dir() / "prepared" / f"{path.name}-{digest}", **prepare_kwargs)
    if not path.exists():
        raise MolvaeError(f"{path}: not found (expected a prepared folder or a SMILES file)")
    need = ["summary.json", "vocab.json", "encoded.safetensors", "prepared.csv"]
    missing = [n for n in need if not (path / n).exists()]
    if missing:
        raise MolvaeError(f"{path}: not a prepared dataset folder (missing {', '.join(missing)}); "
                          "run `molvae data prepare INPUT --out DIR` first")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except json.JSONDecodeError as exc:
        raise MolvaeError(f"{path / 'summary.json'}: corrupt JSON ({exc})") from None
    vocab = Vocabulary.load(path / "vocab.json")
    try:
        arrays = load_file(str(path / "encoded.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MolvaeError(f"{path / 'encoded.safetensors'}: corrupt or truncated ({exc}); "
                          "re-run `molvae data prepare` with --force") from None
    table = pd.read_csv(path / "prepared.csv", usecols=["smiles", "split"], dtype=str, keep_default_na=False)
    train_smiles = table.loc[table.split == "train", "smiles"].tolist()
    valid_smiles = table.loc[table.split == "valid", "smiles"].tolist()
    train = torch.from_numpy(arrays["train"].astype(np.int64))
    valid = torch.from_numpy(arrays["valid"].astype(np.int64))
    if train.shape[0] != len(train_smiles) or valid.shape[0] != len(valid_smiles):
        raise MolvaeError(f"{path}: encoded.safetensors does not match prepared.csv; re-run with --force")
    return PreparedData(vocab, train, valid, train_smiles, valid_smiles, path, summary)


# ---------------------------------------------------------------------------- MOSES


MOSES_WHEEL = "molsets==0.3.1"
MOSES_FILES = {"train": "train.csv.gz", "test": "test.csv.gz", "test_scaffolds": "test_scaffolds.csv.gz"}


def extract_moses(wheel: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Path]:
    """Unpack the MOSES train / test / scaffold-test CSVs from a ``molsets`` wheel."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for key, fname in MOSES_FILES.items():
                member = f"moses/dataset/data/{fname}"
                if member not in names:
                    raise MolvaeError(f"{wheel}: does not contain {member}; is it the molsets wheel?")
                target = dest / fname
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_bytes(zf.read(member))
                os.replace(tmp, target)
                out[key] = target
    except zipfile.BadZipFile:
        raise MolvaeError(f"{wheel}: not a zip/wheel file") from None
    return out


def fetch_moses(dest: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch the full MOSES sets (1.58M train, 176k test, 176k scaffold test) into a cache.

    The files ship inside the ``molsets`` wheel on PyPI (MIT licence; the official location
    is the molecularsets/moses repository), so pip downloads the wheel and we unpack it.
    Already-fetched files are reused.
    """
    import subprocess
    import sys
    import tempfile

    dest = Path(dest) if dest else cache_dir() / "moses"
    done = {k: dest / f for k, f in MOSES_FILES.items()}
    if all(p.exists() for p in done.values()):
        return done
    if wheel is not None:
        return extract_moses(wheel, dest)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", MOSES_WHEEL, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("molsets-*.whl"))
        if res.returncode != 0 or not wheels:
            raise MolvaeError(f"could not download {MOSES_WHEEL} from PyPI: {res.stderr.strip()[-500:]}")
        return extract_moses(wheels[0], dest)
