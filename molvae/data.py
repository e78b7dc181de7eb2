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

import csv
import gzip
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MolvaeError
from .tokens import EncodeError, Vocabulary, smiles_to_selfies

log = logging.getLogger(__name__)

SMILES_COLUMN_NAMES = ("smiles", "SMILES", "Smiles", "canonical_smiles", "CANONICAL_SMILES", "smi", "SMI")
DEFAULT_MAX_LEN = 100  # SELFIES tokens; MOSES molecules need at most ~60
MAX_MAX_LEN = 1_000  # a longer sequence is no longer a small molecule for a GRU to learn
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


def _is_binary(raw: bytes) -> bool:
    # A text table with a few hostile rows has a few control bytes; a spreadsheet, archive
    # or pickle has them everywhere (random bytes: 10.5 %). Rows are judged one by one.
    sample = raw[:65536]
    control = sum(sample.count(bytes([b])) for b in (*range(0, 9), *range(14, 32)))
    return control > 0.05 * len(sample)


def _read_lines(path: Path) -> tuple[list[str], dict[int, str]]:
    """The file's lines (``\n`` ends a line, a trailing ``\r`` is dropped), and the reason
    for each line that is not UTF-8 text (its text then shows the bytes escaped)."""
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
    if _is_binary(raw):
        raise MolvaeError(f"{path}: binary content, expected a text table of SMILES (.csv, .tsv, .smi)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # byte-order mark
    bad: dict[int, str] = {}
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:  # judge each line, so one bad row is one reject
        lines = []
        for i, chunk in enumerate(raw.split(b"\n")):
            try:
                lines.append(chunk.decode("utf-8"))
            except UnicodeDecodeError as exc:
                lines.append(chunk.decode("utf-8", errors="backslashreplace"))
                bad[i] = f"not UTF-8 text (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1})"
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline is not an empty row
    return lines, bad


def _looks_like_header(token: str) -> bool:
    from . import chem

    return token in SMILES_COLUMN_NAMES or chem.to_mol(token) is None


def _names_smiles(fields: list[str], smiles_column: str | None) -> bool:
    names = {f.strip().strip('"').strip() for f in fields}
    return (smiles_column in names) if smiles_column else any(
        n in SMILES_COLUMN_NAMES or n.lower() == "smiles" for n in names)


def _sniff(lines: list[str], kind: str, smiles_column: str | None) -> str | None:
    """The field delimiter (',' or tab), or ``None`` for a whitespace-separated .smi file.

    The extension is a hint: a header that names the SMILES column between commas or tabs
    decides, so a CSV saved as .txt (or a TSV saved as .csv) is read as what it is.
    SMILES never contain commas, so .smi lines whose first word has one are CSV rows.
    """
    header = lines[0]
    declared = {".csv": ",", ".tsv": "\t"}.get(kind)
    for sep in ([declared] if declared else []) + [",", "\t"]:
        if sep in header and _names_smiles(header.split(sep), smiles_column):
            return sep
    if declared:
        return declared
    first_words = [ln.split()[0] for ln in lines[:100] if ln.strip()]
    if sum("," in w for w in first_words) > len(first_words) / 2:
        return ","
    return None


def _split_row(line: str, sep: str) -> list[str]:
    if '"' not in line:
        return line.split(sep)
    # strict: an unclosed or stray quote is an error for this row, never a field that
    # swallows the lines after it
    return next(csv.reader([line], delimiter=sep, strict=True))


def _read_delimited(lines: list[str], sep: str, bad: dict[int, str], path: Path):
    try:
        header = [h.strip() for h in _split_row(lines[0], sep)]
    except csv.Error as exc:
        raise MolvaeError(f"{path}: the header line cannot be parsed ({exc})") from None
    seen: dict[str, int] = {}
    for j, name in enumerate(header):  # duplicate column names get a suffix, as in pandas
        if name in seen:
            seen[name] += 1
            header[j] = f"{name}.{seen[name]}"
        else:
            seen[name] = 0
    width = len(header)
    body = lines[1:]
    problems: dict[int, str] = {i - 1: why for i, why in bad.items() if i > 0}
    # fast path (a plain file: no quotes): one str.split per line
    rows = [ln.split(sep) if '"' not in ln else None for ln in body]
    for i in [i for i, r in enumerate(rows) if r is None or len(r) != width or i in problems]:
        fields, reason = rows[i], problems.get(i)
        if reason is None and fields is None:
            try:
                fields = _split_row(body[i], sep)
            except csv.Error as exc:
                reason = f"broken quoting ({exc}); quote a whole field, and double a quote inside it"
        if reason is None and len(fields) > width:
            name = "tab" if sep == "\t" else f"'{sep}'"
            reason = (f"{len(fields)} fields where the header has {width}: an unquoted {name} inside "
                      "a field? quote that field")
        if reason is not None:
            problems[i] = reason
            fields = [body[i]]  # the whole line, for rejects.csv
        rows[i] = fields + [""] * (width - len(fields))
    return pd.DataFrame(rows, columns=header, dtype=object), problems


def _read_smi(lines: list[str], bad: dict[int, str]):
    first = lines[0].split()
    has_header = bool(first) and 0 not in bad and _looks_like_header(first[0]) and first[0].lower() in (
        "smiles", "smi", "canonical_smiles")
    cols = [first[0], *(first[1:2] or ["name"])] if has_header else ["smiles", "name"]
    skip = 1 if has_header else 0
    rows, problems = [], {}
    for i, line in enumerate(lines[skip:]):
        if i + skip in bad:
            problems[i] = bad[i + skip]
            rows.append((line, ""))
            continue
        r = line.split(None, 1)
        rows.append((r[0] if r else "", r[1].strip() if len(r) > 1 else ""))
    return pd.DataFrame(rows, columns=cols[:2], dtype=object), problems


def _read_table(path: str | os.PathLike, smiles_column: str | None = None
                ) -> tuple[pd.DataFrame, str, dict[int, str]]:
    """``(table, smiles_column, problems)``: ``problems`` maps a row index to the reason
    that row could not be read (not UTF-8, broken quoting, too many fields); such a row
    holds the whole line in the SMILES column."""
    path = Path(path)
    lines, bad = _read_lines(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ".csv"
    sep = _sniff(lines, kind, smiles_column)
    if sep is None:
        table, problems = _read_smi(lines, bad)
        if smiles_column is None:
            smiles_column = table.columns[0]
    else:
        if kind in (".smi", ".txt", ".smiles"):
            log.info("%s: reading as %s-separated (its first line names the columns)",
                     path, "tab" if sep == "\t" else "comma")
        table, problems = _read_delimited(lines, sep, bad, path)
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
    if len(table) == 0:
        raise MolvaeError(f"{path}: no molecules: the file has only a header line "
                          f"({_short(lines[0])})")
    return table, smiles_column, problems


def _short(text: str, limit: int = 80) -> str:
    # chem.short without importing RDKit (reading a table needs none)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def read_smiles_table(path: str | os.PathLike, smiles_column: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read a .csv/.tsv/.smi/.txt file (optionally .gz) into a DataFrame of strings.

    Returns ``(table, smiles_column)``. Every line below the header is one row, kept even
    when empty or invalid, so later stages can account for each one. Other columns (ids,
    measured properties) come along unchanged. The delimiter is read from the header (a CSV
    named .txt is a CSV). A row that cannot be split into the header's fields (not UTF-8,
    broken quoting, an unquoted delimiter inside a field) holds its whole line in the SMILES
    column, where it fails as a molecule; :func:`prepare` gives the precise reason. A
    quoted field may not span lines.
    """
    table, col, _ = _read_table(path, smiles_column)
    return table, col


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


def _standardize_encode(text: str, keep_stereo: bool = True, max_chars: int | None = None
                        ) -> tuple[str | None, str | None, str | None]:
    from . import chem

    smi, reason = chem.standardize(text, keep_stereo, max_chars or chem.MAX_SMILES_CHARS)
    if smi is None:
        return None, None, reason
    try:
        return smi, smiles_to_selfies(smi), None
    except EncodeError as exc:
        return smi, None, str(exc)


@dataclass(eq=False)
class PreparedData:
    """A prepared dataset: vocabulary, train/valid token ids and their SMILES.

    ``train``/``valid`` are LongTensors ``(N, seq_len)``, made from the uint8/int16 arrays
    ``train_ids``/``valid_ids`` on first use: preparing data never imports torch (that
    import was 10 of the 12 s it took to prepare 31 molecules on a loaded 2-core machine).
    """

    vocab: Vocabulary
    train_ids: np.ndarray
    valid_ids: np.ndarray
    train_smiles: list[str]
    valid_smiles: list[str]
    path: Path | None = None
    summary: dict = field(default_factory=dict)

    @cached_property
    def train(self) -> "torch.Tensor":  # noqa: F821
        import torch

        return torch.from_numpy(self.train_ids.astype(np.int64))

    @cached_property
    def valid(self) -> "torch.Tensor":  # noqa: F821
        import torch

        return torch.from_numpy(self.valid_ids.astype(np.int64))


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail now, before any work, if a file cannot be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise MolvaeError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise MolvaeError(f"{flag} {path}: the folder {parent} {what}; create it or choose another path")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MolvaeError(f"{flag} {path}: not writable")
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail now, before any work, if ``path`` cannot be (or become) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MolvaeError(f"{flag} {path}: exists and is not a folder; choose a folder name")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MolvaeError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise MolvaeError(f"{flag} {path}: {ancestor} is not writable")
    return path


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


def _shown(text: str, limit: int = 1_000) -> str:
    """An input as rejects.csv shows it: control characters escaped, a giant one cut (a
    spreadsheet cell holds at most 32,767 characters), its length said."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else f"{text[:100]}... ({len(text):,} characters)"


def _check_max_len(max_len, vocab: Vocabulary | None) -> int:
    if max_len is None:
        return vocab.max_len if vocab is not None else DEFAULT_MAX_LEN
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or not 1 <= max_len <= MAX_MAX_LEN:
        raise MolvaeError(f"max_len (--max-len) must be a whole number from 1 to {MAX_MAX_LEN:,} SELFIES "
                          f"tokens, got {max_len!r} (default {DEFAULT_MAX_LEN})")
    if vocab is not None and max_len > vocab.max_len:
        raise MolvaeError(f"max_len (--max-len) {max_len} is longer than the vocabulary's max_len "
                          f"{vocab.max_len}: a model trained with that vocabulary reads no longer molecules")
    return int(max_len)


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
        max_len: longest molecule kept, in SELFIES tokens, 1 to 1,000 (default 100, or the
            given vocabulary's). Longer molecules are rejected with this limit in the
            reason; SMILES longer than 10 characters per token (at least 1,000) are refused
            before RDKit parses them (``chem.MAX_SMILES_CHARS``).
        vocab: an existing vocabulary (e.g. a trained model's): molecules with tokens outside
            it are rejected with the token named, instead of growing the alphabet.
        force: redo the work even if ``out_dir`` already holds this exact preparation.

    The split is a seeded permutation of the kept rows, so the same input and seed always
    give the same train/valid sets. A second call with the same input and settings loads
    the cached result instead of recomputing. ``out_dir`` is checked before any work.
    Raises :class:`MolvaeError` when no row is a usable molecule (``rejects.csv`` is
    written first, to say why).
    """
    input_path = Path(input_path)
    out = Path(out_dir)
    if isinstance(vocab, (str, os.PathLike)):
        vocab = Vocabulary.load(vocab)
    if not 0.0 <= valid_fraction < 1.0:
        raise MolvaeError(f"valid_fraction (--valid-fraction) must be in [0, 1), got {valid_fraction}")
    cap = _check_max_len(max_len, vocab)
    if not input_path.exists():
        raise MolvaeError(f"{input_path}: file not found")
    check_output_dir(out)
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

    table, col, problems = _read_table(input_path, smiles_column)
    n_in = len(table)
    texts = table[col].tolist()
    from . import chem  # imported here so that loading prepared data (training) needs no RDKit

    # 10 characters per SELFIES token is more than any organic molecule needs
    fn = partial(_standardize_encode, keep_stereo=keep_stereo, max_chars=max(chem.MAX_SMILES_CHARS, 10 * cap))
    todo = [i for i in range(n_in) if i not in problems]
    done = chem.parallel_map(fn, [texts[i] for i in todo], workers=workers, desc="standardize+encode",
                             progress=progress)
    results: list[tuple[str | None, str | None, str | None]] = [(None, None, r) for r in [None] * n_in]
    for i, r in zip(todo, done):
        results[i] = r
    for i, reason in problems.items():
        results[i] = (None, None, reason)

    from .tokens import split_selfies

    rejects: list[tuple[int, str, str]] = []
    first_row: dict[str, int] = {}
    keep_idx, keep_smiles, keep_selfies = [], [], []
    n_dup = 0
    for i, (smi, sel, reason) in enumerate(results):
        row = i + 1  # 1-based data row, as a spreadsheet user counts them below the header
        if reason is None and len(split_selfies(sel)) > cap:
            # the limit the user set; the vocabulary below only knows the molecules that fit
            reason = f"too long: {len(split_selfies(sel))} SELFIES tokens > max_len {cap}"
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

    if vocab is None and keep_selfies:
        vocab = Vocabulary.build(keep_selfies)  # max_len: the longest kept molecule (<= cap)
    ids_list, kept = [], []
    for j, sel in enumerate(keep_selfies):
        try:
            ids_list.append(vocab.encode_selfies(sel))
            kept.append(j)
        except EncodeError as exc:
            i = keep_idx[j]
            rejects.append((i + 1, texts[i], str(exc)))
    n_kept = len(kept)
    n_rejected = len(rejects) - n_dup
    assert n_kept + n_dup + n_rejected == n_in, "row accounting is broken"  # a bug, not user input

    out.mkdir(parents=True, exist_ok=True)
    rej = pd.DataFrame([(r, _shown(str(t)), why) for r, t, why in sorted(rejects)],
                       columns=["row", "input", "reason"])
    rej.to_csv(out / "rejects.csv.tmp", index=False)
    os.replace(out / "rejects.csv.tmp", out / "rejects.csv")
    if n_kept == 0:
        common = rej["reason"].value_counts().head(3)
        raise MolvaeError(f"{input_path}: none of the {n_in:,} rows is a usable molecule; reasons in "
                          f"{out / 'rejects.csv'} (most common: "
                          + "; ".join(f"{why} ({k}x)" for why, k in common.items()) + ")")

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

    tmp = out / "prepared.csv.tmp"
    prepared.to_csv(tmp, index=False)
    os.replace(tmp, out / "prepared.csv")
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
    train, valid = arrays["train"], arrays["valid"]
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
