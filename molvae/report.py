"""The run report: one self-contained HTML file a chemist opens in any browser, offline.

Every picture is embedded (molecule drawings as SVG data URIs, plots as PNG data URIs); there
is no external CSS, JavaScript or font, so the file can be mailed or archived on its own.
A section appears only when its data is present; an absent section is left out, never empty.

Sections, in order:
    settings     provenance (versions of molvae / torch / RDKit / CUDA, device, date), then the
                 value every setting had, one table per pipeline stage
    best         cards of the best optimized molecules, one per cluster of close analogs
                 (:func:`pick_diverse`), each with its PAINS / Brenk alerts named (the Pareto
                 front for multi-objective runs)
    progress     key figures (best, top-10 mean, molecules scored, wall time, time spent
                 scoring ...) and the curves: best and top-10 mean score against oracle calls
    pareto       the Pareto front: pairwise scatter of the objectives, front highlighted
    prior        the optimized molecules beside as many molecules decoded from prior samples
    generated    a grid of sampled molecules and their validity / uniqueness / novelty rates
    properties   QED, logP, SA and MW histograms of generated vs training molecules
    latent       2-D map of the latent space (PCA of encoded molecules) coloured by a property
    moses        MOSES metrics beside the published MOSES VAE / CharRNN / JT-VAE rows
    training     training curves (loss, reconstruction, KL, β, reconstruction rate, active units)

Python::

    from molvae.report import write_report, report_from_run_dir
    write_report("report.html", title="QED run", settings=cfg, provenance=prov,
                 optimization=pd.read_csv("optimize/molecules.csv"))
    report_from_run_dir("runs/quickstart")     # -> runs/quickstart/report.html

Legends sit above the panels (or beside one), never over data. Building the report of the
quickstart run takes ~5 s of CPU; its pipeline stage spends most of its time encoding
molecules for the latent map and computing RDKit properties (QED ~4 ms a molecule).

A small inline script checks, on load, that every image decoded and no section is empty; it
writes the counts as JSON into ``<pre id="img-check">`` and shows a warning if anything failed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import heapq
import html
import io
import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import chem
from .errors import MolvaeError
from .progress import progress as _progress_bar

log = logging.getLogger("molvae.report")

#: Published MOSES distribution-learning figures (30,000 samples vs the MOSES test set), from
#: DESIGN.md; shown beside the run's own metrics for comparison.
MOSES_REFERENCE: dict[str, dict[str, float]] = {
    "MOSES VAE": {"valid": 0.977, "unique@10k": 0.998, "FCD/Test": 0.099, "SNN/Test": 0.626,
                  "Frag/Test": 0.999, "Scaf/Test": 0.939, "IntDiv": 0.856, "novelty": 0.695},
    "MOSES CharRNN": {"valid": 0.975, "unique@10k": 0.999, "FCD/Test": 0.073, "SNN/Test": 0.602,
                      "Frag/Test": 1.000, "Scaf/Test": 0.924, "IntDiv": 0.856, "novelty": 0.842},
    "JT-VAE": {"valid": 1.000, "unique@10k": 1.000, "FCD/Test": 0.395, "SNN/Test": 0.548,
               "Frag/Test": 0.997, "Scaf/Test": 0.896, "IntDiv": 0.855, "novelty": 0.914},
}
# Metrics where smaller is better; the table says so, since FCD reads the other way round.
_LOWER_IS_BETTER = ("FCD",)

#: Files :func:`report_from_run_dir` looks for, relative to the run folder.
RUN_FILES = {
    "settings": ("config.json", "resolved.toml"),
    "provenance": ("provenance.json",),
    "training_metrics": ("train/metrics.csv",),
    "moses_metrics": ("evaluate/metrics.json",),
    "samples": ("sample/samples.csv",),
    "training_smiles": ("data/prepared.csv", "train/prepared.csv"),
    "optimization": ("optimize/molecules.csv",),
    "optimization_summary": ("optimize/summary.json",),
    "prior": ("optimize/prior/molecules.csv",),
    "prior_summary": ("optimize/prior/summary.json",),
    "latent": ("latent.npz",),
    "training_properties": ("report/training_properties.csv",),
}

_LABELS = {"qed": "QED", "logp": "logP", "sa": "SA score", "mw": "MW (Da)",
           "penalized_logp": "penalized logP", "tpsa": "TPSA (Å²)"}
_SHORT = {"qed": "QED", "logp": "logP", "sa": "SA", "mw": "MW", "penalized_logp": "pLogP", "tpsa": "TPSA"}
# Caption precision a chemist expects: QED to 2 decimals, MW to the dalton.
_CAPTION_FORMAT = {"qed": "{:.2f}", "logp": "{:.2f}", "sa": "{:.2f}", "mw": "{:.0f}", "penalized_logp": "{:.2f}",
                   "tpsa": "{:.0f}"}
_PROVENANCE_ORDER = ("molvae", "torch", "rdkit", "cuda", "cudnn", "device", "gpu", "python",
                     "platform", "host", "date", "started", "finished", "git", "command")
# The histograms' bins follow the smaller set (<= ~1,000 samples), so 2,000 training molecules
# draw the same shape as 5,000 did, for 6 s less CPU (QED costs ~4 ms a molecule).
_MAX_PROPERTY_MOLECULES = 2000
#: Best-molecule cards: at most one per cluster of close analogs (Tanimoto distance < 0.4 on
#: Morgan radius-2 bits, i.e. similarity >= 0.6, a common "same series" cut-off).
CLUSTER_DISTANCE = 0.4
_GEN_COLOUR, _TRAIN_COLOUR, _FRONT_COLOUR = "#d95f02", "#7570b3", "#d62728"


# ---------------------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A number as a chemist reads it: integers whole, 3 decimals below 100, 1 above."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if math.isnan(x):
            return "—"
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if abs(x) >= 100:
            return f"{x:,.1f}"
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.2e}"
        return f"{x:.3f}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ``(dotted.key, value)`` rows; lists of tables stay JSON."""
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _kv_table(rows: Sequence[tuple[str, Any]], caption: str | None = None, fmt=None) -> str:
    fmt = fmt or (lambda k, v: _fmt(v))
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(fmt(k, v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cap}<tbody>{body}</tbody></table>'


# What a setting left empty means, so that the settings table says it rather than showing a dash.
_UNSET = {"smiles_column": "auto (smiles or SMILES)", "max_train_molecules": "all", "time_limit": "no limit",
          "lead": "none", "scaffold": "none", "start": "none (random start)",
          "min_similarity": "none (no lead)", "objectives": "none (one objective)",
          "objective": "none (several objectives)", "output_init_scale": "PyTorch default",
          "cuda": "none (CPU build)", "gpu": "none", "model": "the shipped default"}


def _setting(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _UNSET.get(key.rsplit(".", 1)[-1], "none")
    return _fmt(value)


def _frame_table(frame: pd.DataFrame, smiles_columns: Sequence[str] = ("smiles",)) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for col, v in zip(frame.columns, rec):
            cls = ' class="smiles"' if col in smiles_columns else (
                ' class="num"' if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else "")
            cells.append(f"<td{cls}>{_esc(_fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _img(data_uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{data_uri}" alt="{_esc(alt)}">'


# ---------------------------------------------------------------------------- pictures


def _figure(n_panels: int = 1, ncols: int | None = None, panel: tuple[float, float] = (4.2, 3.2)):
    # Figure without pyplot: no global state and no GUI backend, only Agg (safe in threads/CI).
    from matplotlib.figure import Figure

    ncols = ncols or n_panels
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    for ax in axes[:n_panels]:
        ax.grid(True, alpha=0.25, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes[:n_panels])


def _outside_legend(fig, ax, **kwargs) -> None:
    """One legend for the figure, above its panels (constrained layout makes room), so that
    it never covers data, wherever the data lie."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        # As many columns as the figure's width holds (~2 inches an entry), so none is cut off.
        ncols = max(1, min(len(handles), int(fig.get_figwidth() // 2.0)))
        fig.legend(handles, labels, loc="outside upper center", ncols=ncols, fontsize=8,
                   frameon=False, **kwargs)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def molecule_svg(smiles: str, size: tuple[int, int] = (260, 200)) -> str | None:
    """An RDKit 2-D drawing of ``smiles`` as SVG text, or ``None`` if RDKit cannot parse it."""
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = chem.to_mol(smiles)
    if mol is None:
        return None
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    drawer.drawOptions().addStereoAnnotation = True
    try:
        rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    except Exception:  # RDKit can fail on exotic valences it still sanitized; skip the picture
        return None
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


def _molecule_grid(items: Sequence[tuple[str, list[str]]]) -> str:
    """Cards of (SMILES, caption lines); molecules RDKit cannot draw are left out."""
    cards = []
    for smiles, lines in items:
        svg = molecule_svg(smiles)
        if svg is None:
            continue
        uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
        caption = "".join(f"<div>{line}</div>" for line in lines)
        cards.append(f'<figure class="mol">{_img(uri, smiles, "mol")}<figcaption>{caption}'
                     f'<div class="smiles">{_esc(smiles)}</div></figcaption></figure>')
    return f'<div class="grid">{"".join(cards)}</div>' if cards else ""


def _property_line(props: Mapping[str, float]) -> str:
    parts = [f"{_SHORT.get(k, k)} {_esc(_CAPTION_FORMAT[k].format(v) if k in _CAPTION_FORMAT else _fmt(v))}"
             for k, v in props.items() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return " · ".join(parts)


def structural_alerts(smiles: str) -> list[tuple[str, str]]:
    """``(catalog, alert)`` pairs — catalog ``PAINS`` or ``Brenk`` — that ``smiles`` matches,
    from the same RDKit FilterCatalog as :func:`molvae.chem.structural_alerts`."""
    mol = chem.to_mol(smiles)
    if mol is None:
        return []
    out = []
    for entry in chem._alert_catalog().GetMatches(mol):
        kind = entry.GetProp("FilterSet") if "FilterSet" in entry.GetPropList() else "alert"
        out.append(("PAINS" if kind.startswith("PAINS") else kind, entry.GetDescription()))
    return out


def _alert_line(alerts: list[tuple[str, str]]) -> str:
    if not alerts:
        return '<span class="ok">no PAINS or Brenk alert</span>'
    tags = "".join(f'<span class="alert {_esc(kind.lower())}">⚠ {_esc(kind)}: {_esc(name)}</span>'
                   for kind, name in alerts)
    return f'<span class="alerts">{tags}</span>'


def pick_diverse(smiles: Sequence[str], n: int, distance: float = CLUSTER_DISTANCE) -> tuple[list[int], list[int]]:
    """Up to ``n`` molecules, best first, no two within ``distance`` of each other.

    ``smiles`` must be ordered best first. Walking down the list, a molecule within Tanimoto
    ``distance`` (Morgan radius 2, 2048 bits) of one already picked joins that molecule's
    cluster; any other starts a new cluster and is picked. So each pick is the best molecule of
    its cluster (leader clustering in score order, a Butina-like sphere exclusion that cannot
    drop the best molecule). Returns the picked indices and, for each, its number of analogs.
    """
    from rdkit import DataStructs

    picked: list[int] = []
    fps: list[Any] = []
    analogs: list[int] = []
    for i, smi in enumerate(smiles):
        fp = chem.morgan_fp(smi) if isinstance(smi, str) else None
        if fp is None:
            continue
        if fps:
            sims = np.asarray(DataStructs.BulkTanimotoSimilarity(fp, fps))
            j = int(sims.argmax())
            if 1.0 - sims[j] < distance:
                analogs[j] += 1
                continue
        if len(picked) < n:
            picked.append(i)
            fps.append(fp)
            analogs.append(0)
    return picked, analogs


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _tiles(figures: Sequence[tuple[str, str, str]]) -> str:
    """Key figures as labelled tiles: (label, value, note)."""
    cells = "".join(f'<div class="tile"><div class="label">{_esc(label)}</div><div class="value">{_esc(value)}</div>'
                    + (f'<div class="note">{_esc(note)}</div>' if note else "") + "</div>"
                    for label, value, note in figures)
    return f'<div class="tiles">{cells}</div>'


# ---------------------------------------------------------------------------- helpers on tables


def pareto_front(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n, k), every column maximized.

    A row is dominated when another row is at least as good in every column and better in
    one. Rows with a NaN are never on the front.
    """
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v).any(axis=1)
    front = ok.copy()
    idx = np.flatnonzero(ok)
    for i in idx:
        if not front[i]:
            continue
        others = v[idx]
        dominated = (others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)
        if dominated.any():
            front[i] = False
    return front


def _bool_column(series: pd.Series) -> np.ndarray:
    if series.dtype == bool:
        return series.to_numpy()
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "yes")).to_numpy()


def _has_flags(table: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` holds any flag at all (``novel`` is left empty without a training set)."""
    if column not in table.columns:
        return False
    values = table[column].dropna()
    return bool((values.astype(str).str.strip() != "").any())


def _objective_columns(table: pd.DataFrame, names: Sequence[str] | None) -> list[str]:
    """Column names of the objectives: a name may be the column or ``<name>_score``."""
    if names is None:
        return [c for c in table.columns if c.endswith("_score") and c != "score"]
    out = []
    for name in names:
        if name in table.columns:
            out.append(name)
        elif f"{name}_score" in table.columns:
            out.append(f"{name}_score")
        else:
            raise MolvaeError(f"report: objective {name!r} is not a column of the molecules table "
                              f"(columns: {', '.join(map(str, table.columns))})")
    return out


def _in_call_order(table: pd.DataFrame) -> pd.DataFrame:
    """Unique molecules in the order the oracle scored them (budget = unique molecules)."""
    t = table.copy()
    if "oracle_call" in t.columns:
        t = t[pd.to_numeric(t["oracle_call"], errors="coerce").notna()]
        t = t.sort_values("oracle_call", kind="stable")
    if "smiles" in t.columns:
        t = t.drop_duplicates("smiles", keep="first")
    return t.reset_index(drop=True)


def running_curves(scores: Sequence[float], top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Best-so-far and running top-``top_k`` mean of ``scores`` in call order.

    The top-k mean counts missing places as 0 until ``top_k`` molecules are scored, as the
    PMO benchmark's AUC does, so an early lucky molecule does not look like a good top-10.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    best = np.maximum.accumulate(s) if s.size else s
    topk = np.empty_like(s)
    heap: list[float] = []
    total = 0.0
    for i, x in enumerate(s):
        if len(heap) < top_k:
            heapq.heappush(heap, x)
            total += x
        elif x > heap[0]:
            total += x - heapq.heapreplace(heap, x)
        topk[i] = total / top_k
    return best, topk


def _properties_of(smiles: Sequence[str]) -> pd.DataFrame:
    return chem.properties_many(list(smiles), chem.MAIN_PROPERTIES, progress=False)


def _subsample(items: Sequence[str], n: int, seed: int = 0) -> list[str]:
    items = list(items)
    if len(items) <= n:
        return items
    pick = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(pick)]


# ---------------------------------------------------------------------------- sections


def _section_settings(settings: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    """Provenance, then the run's top-level settings, then one table per stage ([optimize] ...)."""
    parts = []
    if provenance:
        keys = sorted(provenance, key=lambda k: (_PROVENANCE_ORDER.index(k) if k in _PROVENANCE_ORDER
                                                 else len(_PROVENANCE_ORDER), str(k)))
        parts.append(_kv_table(_flatten({k: provenance[k] for k in keys}), "Provenance", _setting))
    top = {k: v for k, v in settings.items() if not isinstance(v, Mapping)}
    if top.get("device") == "auto" and provenance.get("device"):
        top["device"] = f"auto ({provenance['device']})"
    if top:
        parts.append(_kv_table(list(top.items()), "Settings", _setting))
    for key, value in settings.items():
        if isinstance(value, Mapping):
            parts.append(_kv_table(_flatten(value), f"[{key}]", _setting))
    return f'<div class="columns">{"".join(parts)}</div>' if parts else ""


def _section_best(table: pd.DataFrame, top_n: int, objective_cols: list[str], pareto: np.ndarray | None) -> str:
    t = _in_call_order(table)
    if "smiles" not in t.columns or t.empty:
        return ""
    feasible = _bool_column(t["feasible"]) if "feasible" in t.columns else np.ones(len(t), bool)
    valid = t["smiles"].map(lambda s: chem.to_mol(s) is not None if isinstance(s, str) else False).to_numpy()
    analogs = None
    if pareto is not None:
        # Multi-objective: the best molecules are the front, ordered by the first objective.
        keep = t[pareto[: len(t)] & valid] if len(pareto) == len(t) else t.iloc[0:0]
        keep = keep.sort_values(objective_cols[0], ascending=False)
        note = (f"The {len(keep)} molecules on the Pareto front, ordered by {_esc(objective_cols[0])}"
                + (f"; the first {top_n} shown." if len(keep) > top_n else "."))
        keep = keep.head(top_n)
    elif "score" in t.columns:
        ranked = t[valid & feasible].sort_values("score", ascending=False, kind="stable")
        # Ten near-copies of one molecule tell a chemist less than ten series: one card per
        # cluster of close analogs, the best of each (candidates capped to bound the cost).
        ranked = ranked.head(max(50 * top_n, 2000))
        picks, counts = pick_diverse(ranked["smiles"].tolist(), top_n)
        keep, analogs = ranked.iloc[picks], counts
        note = (f"The best feasible molecule of each of the {len(keep)} best clusters of close analogs "
                f"(Tanimoto similarity ≥ {1 - CLUSTER_DISTANCE:.1f}, Morgan radius 2) among {len(t)} molecules "
                "scored; each card says how many analogs it stands for. Structural alerts (RDKit's PAINS "
                "and Brenk catalogs) are flagged on each card.")
    else:
        return ""
    if keep.empty:
        return ""
    props = _properties_of(keep["smiles"].tolist())
    # Raw component values a card does not already show; alert counts are shown by name below.
    raw_cols = [c for c in keep.columns if c.endswith("_raw")
                and c[: -len("_raw")] not in (*chem.MAIN_PROPERTIES, "alerts", "pains", "brenk", "nih", "zinc")]
    alerts = [structural_alerts(smi) for smi in keep["smiles"]]
    items = []
    for rank, (row, (_, p)) in enumerate(zip(keep.to_dict("records"), props.iterrows()), 1):
        if pareto is not None:
            head = " · ".join(f"{_esc(c.removesuffix('_score'))} {_esc(_fmt(row[c]))}" for c in objective_cols)
        else:
            head = f"score {_esc(_fmt(row['score']))}"
        lines = [f"<b>#{rank}</b> · {head}", _property_line(p.to_dict())]
        extra = {c[: -len("_raw")]: row[c] for c in raw_cols}
        if extra:
            lines.append(_property_line(extra))
        lines.append(_alert_line(alerts[rank - 1]))
        tail = []
        if analogs is not None:
            k = analogs[rank - 1]
            tail.append(f"{k} close analog{'s' if k != 1 else ''} scored" if k else "no close analog scored")
        if "oracle_call" in row:
            tail.append(f"oracle call {_esc(_fmt(row['oracle_call']))}")
        if tail:
            lines.append(f'<span class="muted">{" · ".join(tail)}</span>')
        items.append((row["smiles"], lines))
    grid = _molecule_grid(items)
    if not grid:
        return ""
    shown = ["smiles"] + (objective_cols if pareto is not None else ["score"])
    shown += [c for c in ("oracle_call", "trial") if c in keep.columns]
    listing = keep[shown].reset_index(drop=True)
    listing.insert(0, "rank", range(1, len(listing) + 1))
    if analogs is not None:
        listing["analogs"] = analogs[: len(listing)]
    listing["alerts"] = ["; ".join(f"{k}: {n}" for k, n in a) or "none" for a in alerts]
    table_html = pd.concat([listing, props.rename(columns=_SHORT)], axis=1)
    return f'<p>{note}</p>{grid}<details><summary>As a table</summary>{_frame_table(table_html)}</details>'


def _key_figures(t: pd.DataFrame, summary: Mapping[str, Any] | None, objective_cols: list[str]) -> str:
    """The summary a chemist reads first, as labelled figures with units."""
    summary = summary or {}
    figures: list[tuple[str, str, str]] = []
    if "score" in t.columns and len(t):
        best, top10 = running_curves(pd.to_numeric(t["score"], errors="coerce"))
        figures += [("Best score", _fmt(best[-1]), ""), ("Top-10 mean", _fmt(top10[-1]), "")]
    elif summary.get("top1") is not None:
        figures.append(("Best score", _fmt(summary["top1"]), ""))
    for c in objective_cols:
        v = pd.to_numeric(t[c], errors="coerce").max() if c in t.columns else None
        figures.append((f"Best {c.removesuffix('_score')}", _fmt(v), ""))
    if objective_cols and "pareto_size" in summary:
        figures.append(("Pareto front", _fmt(summary["pareto_size"]), "non-dominated molecules"))
    n = len(t) if len(t) else summary.get("oracle_calls")
    if n is not None:
        budget = _number(summary.get("budget"))
        figures.append(("Molecules scored", f"{int(n):,}", f"of a budget of {int(budget):,}" if budget else
                        "unique molecules"))
    if "feasible" in t.columns and len(t):
        figures.append(("Feasible", f"{100 * _bool_column(t['feasible']).mean():.0f}%", "pass every hard filter"))
    valid = _number(summary.get("valid_fraction"))
    if valid is not None:
        figures.append(("Valid decodes", f"{100 * valid:.0f}%", "of latent points decoded"))
    walls = [w for w in (_number(summary.get("wall_s")), _number(summary.get("wall_s_total"))) if w]
    wall = max(walls) if walls else None
    if wall:
        reason = summary.get("stop_reason")
        figures.append(("Wall time", _duration(wall), f"stopped: {reason}" if reason else ""))
    time_split = summary.get("time") if isinstance(summary.get("time"), Mapping) else {}
    score_s = _number(time_split.get("score_s"))
    if score_s is not None:
        share = f" ({100 * score_s / wall:.0f}% of wall time)" if wall else ""
        figures.append(("Time spent scoring", _duration(score_s) + share, "the objective's own cost"))
    if summary.get("sampler"):
        batch = summary.get("batch_size")
        figures.append(("Sampler", str(summary["sampler"]), f"batches of {batch}" if batch else ""))
    return _tiles(figures) if figures else ""


def _section_progress(table: pd.DataFrame, summary: Mapping[str, Any] | None,
                      objective_cols: list[str], prior: pd.DataFrame | None = None) -> str:
    t = _in_call_order(table)
    parts = [_key_figures(t, summary, objective_cols)]
    if not t.empty:
        calls = (pd.to_numeric(t["oracle_call"]).to_numpy() if "oracle_call" in t.columns
                 else np.arange(1, len(t) + 1))
        series = {"score": t["score"]} if "score" in t.columns else {c: t[c] for c in objective_cols}
        p = _in_call_order(prior) if prior is not None and "score" in prior.columns and "score" in series else None
        if series:
            panel = (8.0, 3.6) if len(series) == 1 else (5.6, 3.4)
            fig, axes = _figure(len(series), ncols=min(2, len(series)), panel=panel)
            for ax, (name, s) in zip(axes, series.items()):
                ax.scatter(calls, pd.to_numeric(s, errors="coerce"), s=5, color="0.6", alpha=0.5,
                           label="each molecule", rasterized=True)
                best, top10 = running_curves(pd.to_numeric(s, errors="coerce"))
                ax.plot(calls, best, color="#1b9e77", lw=1.8, label="best so far")
                ax.plot(calls, top10, color="#7570b3", lw=1.8, label="top-10 mean")
                if p is not None and len(p):
                    pb, pt = running_curves(pd.to_numeric(p["score"], errors="coerce"))
                    x = np.arange(1, len(p) + 1)
                    ax.plot(x, pb, color="#1b9e77", lw=1.2, ls="--", label="prior samples: best")
                    ax.plot(x, pt, color="#7570b3", lw=1.2, ls="--", label="prior samples: top-10 mean")
                ax.set_xlabel("oracle calls (unique molecules scored)")
                ax.set_ylabel(name)
            _outside_legend(fig, axes[0])
            parts.append(_img(_png(fig), "optimization curves"))
            finals = []
            for name, s in series.items():
                best, top10 = running_curves(pd.to_numeric(s, errors="coerce"))
                finals.append(f"{_esc(name)}: best {_esc(_fmt(best[-1]))}, top-10 mean {_esc(_fmt(top10[-1]))}")
            parts.append(f"<p>After {len(t)} unique molecules — {'; '.join(finals)}.</p>")
    if summary:
        parts.append(f"<details><summary>Every field of summary.json</summary>"
                     f"{_kv_table(_flatten(summary), 'Run summary')}</details>")
    return "".join(parts)


def _section_prior(opt: pd.DataFrame, prior: pd.DataFrame, summary: Mapping[str, Any] | None,
                   prior_summary: Mapping[str, Any] | None) -> str:
    """Optimized molecules beside as many molecules decoded from prior samples z ~ N(0, I),
    scored with the same objective: what the search added over sampling the model."""
    t, p = _in_call_order(opt), _in_call_order(prior)
    if "score" not in t.columns or "score" not in p.columns or t.empty or p.empty:
        return ""
    summary, prior_summary = summary or {}, prior_summary or {}

    def figures(frame: pd.DataFrame, summ: Mapping[str, Any]) -> dict[str, float | None]:
        s = pd.to_numeric(frame["score"], errors="coerce").fillna(0.0).to_numpy()
        ranked = np.sort(s)[::-1]
        out = {"Best score": ranked[0], "Top-10 mean": ranked[:10].mean(), "Top-100 mean": ranked[:100].mean(),
               "Molecules scored": float(len(frame))}
        if "feasible" in frame.columns:
            out["Feasible"] = _bool_column(frame["feasible"]).mean()
        out["Valid decodes"] = _number(summ.get("valid_fraction"))
        out["AUC top-10"] = _number(summ.get("auc_top10"))
        out["Wall time"] = _number(summ.get("wall_s"))
        return out

    a, b = figures(t, summary), figures(p, prior_summary)
    rows = []
    for name in a:
        x, y = a[name], b.get(name)
        if x is None and y is None:
            continue
        pct = name in ("Feasible", "Valid decodes")
        show = (lambda v: "n/a" if v is None else f"{100 * v:.0f}%" if pct else
                f"{int(v):,}" if name == "Molecules scored" else _duration(v) if name == "Wall time" else _fmt(v))
        diff = ("" if x is None or y is None or name in ("Molecules scored", "Wall time") else
                f"{100 * (x - y):+.0f} points" if pct else f"{x - y:+.3f}")
        rows.append(f"<tr><th>{_esc(name)}</th><td class='num run'>{_esc(show(x))}</td>"
                    f"<td class='num'>{_esc(show(y))}</td><td class='num'>{_esc(diff)}</td></tr>")
    head = "<tr><th></th><th>optimized</th><th>prior samples</th><th>optimized − prior</th></tr>"
    gain = a["Best score"] - b["Best score"]
    verdict = (f"The search found a best score of {_fmt(a['Best score'])} against {_fmt(b['Best score'])} "
               f"from {len(p):,} molecules decoded from prior samples z ~ N(0, I) and scored with the same "
               f"objective ({gain:+.3f}); top-10 mean {_fmt(a['Top-10 mean'])} against {_fmt(b['Top-10 mean'])}.")
    return (f"<p>{_esc(verdict)}</p><table class='data'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            "<p class='muted'>Prior sampling is the baseline any latent-space search has to beat; the "
            "dashed curves under “Optimization progress” show it call by call.</p>")


def _section_pareto(table: pd.DataFrame, objective_cols: list[str], front: np.ndarray) -> str:
    t = _in_call_order(table)
    if len(objective_cols) < 2 or t.empty:
        return ""
    values = t[objective_cols].apply(pd.to_numeric, errors="coerce").to_numpy()
    pairs = [(i, j) for i in range(len(objective_cols)) for j in range(i + 1, len(objective_cols))][:3]
    panel = (6.0, 4.6) if len(pairs) == 1 else (4.6, 3.8)
    fig, axes = _figure(len(pairs), ncols=min(3, len(pairs)), panel=panel)
    for ax, (i, j) in zip(axes, pairs):
        ax.scatter(values[~front, i], values[~front, j], s=8, color="0.7", alpha=0.6,
                   label="dominated", rasterized=True)
        ax.scatter(values[front, i], values[front, j], s=26, color=_FRONT_COLOUR,
                   edgecolor="black", linewidth=0.5, label="Pareto front", zorder=3)
        if len(objective_cols) == 2:
            # The front of two maximized objectives is a descending staircase; draw it as one.
            # At x between two front points the frontier's height is that of the right-hand one.
            pts = values[front][np.argsort(values[front, i])]
            ax.step(pts[:, i], pts[:, j], where="pre", color=_FRONT_COLOUR, lw=1, alpha=0.7, zorder=2)
        ax.set_xlabel(objective_cols[i])
        ax.set_ylabel(objective_cols[j])
    _outside_legend(fig, axes[0])
    note = (f"{int(front.sum())} of {len(t)} molecules are non-dominated "
            f"(every objective maximized: {', '.join(_esc(c) for c in objective_cols)}).")
    if len(objective_cols) > 2:
        note += " With more than two objectives a front molecule may look dominated in one projection."
    return f"<p>{note}</p>{_img(_png(fig), 'Pareto front')}"


def _section_generated(samples: pd.DataFrame, top_n: int) -> str:
    if "smiles" not in samples.columns or samples.empty:
        return ""
    s = samples.copy()
    valid = _bool_column(s["valid"]) if "valid" in s.columns else s["smiles"].map(
        lambda x: chem.to_mol(x) is not None if isinstance(x, str) else False).to_numpy()
    unique = _bool_column(s["unique"]) if "unique" in s.columns else (~s["smiles"].duplicated()).to_numpy()
    good = s[valid & unique]
    rates = [("samples", len(s)), ("valid", valid.mean())]
    if valid.any():
        rates.append(("unique (of valid)", (valid & unique).sum() / valid.sum()))
    has_novel = _has_flags(s, "novel")
    if has_novel and (valid & unique).any():
        novel = _bool_column(s["novel"])
        rates.append(("novel (of valid unique)", (novel & valid & unique).sum() / (valid & unique).sum()))
    novel_flags = _bool_column(good["novel"]) if has_novel else None
    # The first valid unique samples, in sampling order: an honest look at what the prior gives.
    shown = good.head(top_n)
    have_props = all(p in shown.columns for p in chem.MAIN_PROPERTIES)
    props = shown[list(chem.MAIN_PROPERTIES)] if have_props else _properties_of(shown["smiles"].tolist())
    items = []
    for k, (smi, (_, p)) in enumerate(zip(shown["smiles"], props.iterrows())):
        lines = [_property_line(p.to_dict()), _alert_line(structural_alerts(smi))]
        if novel_flags is not None:
            lines.append('<span class="tag">novel</span>' if novel_flags[k] else
                         '<span class="muted">in training set</span>')
        items.append((smi, lines))
    grid = _molecule_grid(items)
    stats = _kv_table(rates, "Sampling")
    return f'{stats}<p>The first {len(shown)} valid, unique samples in the order drawn.</p>{grid}'


def _section_properties(generated: pd.DataFrame | None, training: pd.DataFrame | None) -> str:
    frames = {k: v for k, v in (("generated", generated), ("training", training)) if v is not None and len(v)}
    if not frames:
        return ""
    names = [p for p in chem.MAIN_PROPERTIES if any(p in f.columns for f in frames.values())]
    if not names:
        return ""
    colours = {"generated": _GEN_COLOUR, "training": _TRAIN_COLOUR}
    fig, axes = _figure(len(names), ncols=2, panel=(4.8, 3.0))
    for ax, name in zip(axes, names):
        data = {k: pd.to_numeric(f[name], errors="coerce").dropna().to_numpy()
                for k, f in frames.items() if name in f.columns}
        data = {k: v for k, v in data.items() if v.size}
        if not data:
            ax.set_visible(False)
            continue
        lo = min(v.min() for v in data.values())
        hi = max(v.max() for v in data.values())
        # Bins follow the smaller set, so a few hundred samples give a shape rather than noise.
        n_bins = int(np.clip(2 * np.sqrt(min(len(v) for v in data.values())), 10, 50))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, n_bins + 1)
        for k, v in data.items():
            ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=colours[k])
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.4, color=colours[k],
                    label=f"{k} (n={len(frames[k])})")
        ax.set_xlabel(_label(name))
        ax.set_ylabel("density")
    _outside_legend(fig, max(axes, key=lambda a: len(a.get_legend_handles_labels()[0])))
    rows = []
    for k, f in frames.items():
        row = {"set": k, "molecules": len(f)}
        for name in names:
            if name in f.columns:
                v = pd.to_numeric(f[name], errors="coerce")
                row[f"{_SHORT[name]} mean"] = v.mean()
                row[f"{_SHORT[name]} sd"] = v.std()
        rows.append(row)
    return _img(_png(fig), "property distributions") + _frame_table(pd.DataFrame(rows))


def _section_latent(latent: Mapping[str, Any]) -> str:
    coords = np.asarray(latent.get("coords"), dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2 or len(coords) == 0:
        raise MolvaeError(f"report: latent['coords'] must be an (n, 2) array, got shape {coords.shape}")
    n = len(coords)
    values = latent.get("values")
    values = np.full(n, np.nan) if values is None else np.asarray(values, dtype=float)
    labels = latent.get("labels")
    labels = np.asarray(["molecules"] * n if labels is None else labels).astype(str)
    if len(values) != n or len(labels) != n:
        raise MolvaeError(f"report: latent 'values' and 'labels' need one entry per coordinate row ({n})")
    prop = str(latent.get("property") or "value")
    fig, axes = _figure(1, panel=(7.6, 5.6))
    ax = axes[0]
    finite = values[np.isfinite(values)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    markers = ["o", "^", "*", "s", "D", "P", "X"]
    sizes = {"training": 7, "generated": 14, "optimized": 70}
    order = sorted(set(labels), key=lambda g: (g != "training", g != "generated", g))
    mappable = None
    for k, group in enumerate(order):
        m = labels == group
        ok = m & np.isfinite(values)
        size = sizes.get(group, 14)
        if (m & ~np.isfinite(values)).any():
            ax.scatter(coords[m & ~np.isfinite(values), 0], coords[m & ~np.isfinite(values), 1], s=size,
                       color="0.8", marker=markers[k % len(markers)], rasterized=True)
        if ok.any():
            edge = dict(edgecolor="black", linewidth=0.5) if group == "optimized" else dict(linewidth=0)
            mappable = ax.scatter(coords[ok, 0], coords[ok, 1], c=values[ok], cmap="viridis", vmin=vmin,
                                  vmax=vmax, s=size, marker=markers[k % len(markers)], alpha=0.85,
                                  label=f"{group} (n={int(m.sum())})", zorder=2 + k, rasterized=True, **edge)
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label=_label(prop))
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if len(order) > 1 or labels[0] != "molecules":
        _outside_legend(fig, ax, markerscale=1.5)
    return (f"<p>Posterior means of {n} encoded molecules projected on the first two principal "
            f"components, coloured by {_esc(_label(prop))}.</p>{_img(_png(fig), 'latent space map')}")


def _section_moses(metrics: Mapping[str, Any]) -> str:
    flat = dict(_flatten(metrics))
    if not flat:
        return ""
    names = list(flat) + [k for k in MOSES_REFERENCE["MOSES VAE"] if k not in flat]
    refs = list(MOSES_REFERENCE)
    head = "<tr><th>metric</th><th>this run</th>" + "".join(f"<th>{_esc(r)}</th>" for r in refs) + "</tr>"
    rows = []
    for name in names:
        arrow = " ↓" if any(name.startswith(p) for p in _LOWER_IS_BETTER) else ""
        cells = [f"<td class='num run'>{_esc(_fmt(flat.get(name)))}</td>"]
        cells += [f"<td class='num'>{_esc(_fmt(MOSES_REFERENCE[r].get(name)))}</td>" for r in refs]
        rows.append(f"<tr><th>{_esc(name)}{arrow}</th>{''.join(cells)}</tr>")
    note = ("<p>Reference rows: the MOSES benchmark (30,000 samples against the MOSES test set). "
            "Higher is better except where marked ↓. Figures from fewer samples or another test "
            "set are indicative only.</p>")
    return f'{note}<div class="scroll"><table class="data metrics"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _section_training(metrics: pd.DataFrame) -> str:
    if metrics.empty:
        return ""
    m = metrics.apply(pd.to_numeric, errors="coerce")
    x = m["epoch"] if "epoch" in m.columns else pd.Series(np.arange(1, len(m) + 1))
    panels = [
        ("loss", [("loss", "train"), ("val_loss", "validation")]),
        ("reconstruction / KL", [("recon", "reconstruction"), ("val_recon", "val reconstruction"),
                                 ("kl", "KL"), ("val_kl", "val KL")]),
        ("KL weight β", [("beta", "β")]),
        ("validation reconstruction rate", [("val_recon_rate", "exact reconstructions")]),
        ("active latent units", [("active_units", "active units")]),
    ]
    panels = [(t, [(c, lab) for c, lab in lines if c in m.columns and m[c].notna().any()]) for t, lines in panels]
    panels = [(t, lines) for t, lines in panels if lines]
    if not panels:
        return ""
    fig, axes = _figure(len(panels), ncols=min(3, len(panels)), panel=(4.2, 3.0))
    for ax, (title, lines) in zip(axes, panels):
        for col, lab in lines:
            ax.plot(x, m[col], marker="o", ms=3, lw=1.5, label=lab)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        if len(lines) > 1:  # beside the panel: the curves fill their panels
            ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    # Column by column, so integer columns (epoch, active units) stay integers.
    last = [(str(c), metrics[c].iloc[-1]) for c in metrics.columns]
    return _img(_png(fig), "training curves") + _kv_table(last, "Last epoch")


# ---------------------------------------------------------------------------- page


_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#d9e2ec; --bg:#f5f7fa; --accent:#1b6ca8; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); line-height:1.45; font-size:15px; }
header { background:#102a43; color:#fff; padding:18px 28px 14px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; }
header .sub { color:#bcccdc; font-size:13px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 28px; display:flex; flex-wrap:wrap; gap:6px 18px; font-size:14px; }
nav a { color:var(--accent); text-decoration:none; } nav a:hover { text-decoration:underline; }
main { max-width:1280px; margin:0 auto; padding:8px 28px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 20px 18px; margin:18px 0; }
section h2 { margin:0 0 10px; font-size:19px; font-weight:600; }
p { margin:6px 0 12px; }
img.plot { max-width:100%; height:auto; display:block; margin:8px 0; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(230px, 1fr)); gap:12px; }
figure.mol { margin:0; border:1px solid var(--line); border-radius:6px; padding:6px; background:#fff; }
figure.mol img { width:100%; height:auto; display:block; }
figcaption { font-size:12.5px; padding:2px 4px; }
.smiles { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size:11px;
          color:var(--muted); word-break:break-all; }
.muted { color:var(--muted); }
.tag { background:#e3f8ff; color:#035388; border-radius:4px; padding:0 5px; font-size:11.5px; }
table { border-collapse:collapse; font-size:13.5px; margin:6px 0 12px; }
caption { text-align:left; font-weight:600; padding:4px 0; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; vertical-align:top; }
table.kv th { color:var(--muted); font-weight:500; white-space:nowrap; }
table.kv td { word-break:break-word; max-width:640px; }
table.data thead th { background:var(--bg); position:sticky; top:0; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
td.run { font-weight:600; background:#f0f4f8; }
.columns { display:flex; flex-wrap:wrap; gap:10px 40px; align-items:flex-start; }
.scroll { overflow-x:auto; max-height:560px; }
details summary { cursor:pointer; color:var(--accent); margin:10px 0 4px; }
.tiles { display:flex; flex-wrap:wrap; gap:10px; margin:4px 0 12px; }
.tile { border:1px solid var(--line); border-radius:6px; padding:6px 12px; min-width:130px; background:var(--bg); }
.tile .label { font-size:12px; color:var(--muted); }
.tile .value { font-size:19px; font-weight:600; font-variant-numeric:tabular-nums; }
.tile .note { font-size:11.5px; color:var(--muted); }
.alerts { display:flex; flex-wrap:wrap; gap:3px; }
.alert { border-radius:4px; padding:0 5px; font-size:11.5px; background:#fff3c4; color:#8d2b0b; }
.alert.pains { background:#ffe3e3; color:#8a1c1c; font-weight:600; }
.ok { color:#2f8132; font-size:11.5px; }
#check-warning { display:none; background:#ffe3e3; color:#8a1c1c; padding:8px 28px; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:0 0 30px; }
"""

# Runs on load: counts images that failed to decode and sections with nothing in them, writes
# the counts into #img-check (read by tests through a headless browser) and warns the reader.
_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var sections = Array.prototype.slice.call(document.querySelectorAll('section.report-section'));
  var empty = sections.filter(function (s) {
    return !Array.prototype.slice.call(s.children).some(function (c) {
      if (c.tagName === 'H2') return false;
      return c.textContent.trim() !== '' || c.matches('img,svg,table') || c.querySelector('img,svg,table');
    });
  });
  document.getElementById('img-check').textContent = JSON.stringify({
    images: imgs.length, broken_images: broken.length, sections: sections.length,
    empty_sections: empty.map(function (s) { return s.id; })
  });
  if (broken.length || empty.length) {
    var w = document.getElementById('check-warning');
    w.textContent = 'This report did not render completely: ' + broken.length +
      ' image(s) failed to load, ' + empty.length + ' empty section(s).';
    w.style.display = 'block';
  }
});
"""


def _page(title: str, sections: list[tuple[str, str, str]], generated_at: str) -> str:
    nav = "".join(f'<a href="#{sid}">{_esc(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(f'<section class="report-section" id="{sid}"><h2>{_esc(heading)}</h2>{content}</section>'
                   for sid, heading, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><div class=\"sub\">molvae report · written {_esc(generated_at)}</div></header>"
        f"<div id=\"check-warning\"></div><nav>{nav}</nav><main>{body}</main>"
        "<footer>Self-contained: all pictures are embedded; open offline in any browser.</footer>"
        f"<pre id=\"img-check\" hidden></pre><script>{_CHECK_JS}</script></body></html>\n"
    )


def write_report(
    out_path: str | os.PathLike,
    *,
    title: str,
    settings: Mapping[str, Any],
    provenance: Mapping[str, Any],
    samples: pd.DataFrame | None = None,
    training_smiles: Sequence[str] | None = None,
    training_properties: pd.DataFrame | None = None,
    optimization: pd.DataFrame | None = None,
    optimization_summary: Mapping[str, Any] | None = None,
    prior: pd.DataFrame | None = None,
    prior_summary: Mapping[str, Any] | None = None,
    pareto_objectives: Sequence[str] | None = None,
    latent: Mapping[str, Any] | None = None,
    moses_metrics: Mapping[str, Any] | None = None,
    training_metrics: pd.DataFrame | None = None,
    top_n: int = 24,
    progress: bool = True,
) -> Path:
    """Write the self-contained HTML report and return its path.

    Args:
        settings: the run's resolved settings; top-level values in one table, each nested
            table (a pipeline stage) in its own.
        provenance: versions and hardware (molvae, torch, rdkit, cuda, device, date …).
        samples: ``samples.csv`` of :func:`molvae.generate.sample` (smiles, valid, unique,
            novel, qed, logp, sa, mw).
        training_smiles: training molecules for the property comparison (a random 2,000 are
            used when there are more).
        training_properties: their properties already computed (columns of
            :data:`molvae.chem.MAIN_PROPERTIES`); then ``training_smiles`` is not needed.
        optimization: the optimizer's ``molecules.csv`` (smiles, score, feasible, component
            columns, oracle_call, trial; multi-objective runs: ``<objective>_score`` columns
            and a boolean ``pareto`` column).
        optimization_summary: the optimizer's ``summary.json``, shown as labelled figures
            (the raw fields folded away).
        prior, prior_summary: the same tables of :func:`molvae.optimize.sample_prior_baseline`
            with the same objective and budget: shown beside the optimized molecules.
        pareto_objectives: objective names (the column or ``<name>_score``) of a
            multi-objective run; ``None`` with a ``pareto`` column uses every ``*_score``.
        latent: ``{'coords': (n, 2), 'values': (n,), 'property': 'qed', 'labels': (n,)}``;
            labels group points, e.g. 'training' / 'generated' / 'optimized'.
        moses_metrics: MOSES metrics of the run (``metrics.json``), shown beside the
            published rows.
        training_metrics: ``metrics.csv`` of training, one row per epoch.
        top_n: molecules per grid.
        progress: a progress bar over the sections (hidden under ``--quiet``).

    Raises:
        MolvaeError: when an input table lacks the columns a section needs.
    """
    out = Path(out_path)
    top_n = max(1, int(top_n))
    sections: list[tuple[str, str, str]] = []
    bar = _progress_bar(total=7, desc="report", disable=not progress)
    clock = [time.perf_counter()]

    def done(part: str) -> None:
        # One tick per part, timed in the debug log (molvae -v): a slow report says where its time went.
        now = time.perf_counter()
        log.debug("report: %s in %.2f s", part, now - clock[0])
        clock[0] = now
        bar.set_postfix_str(part)
        bar.update(1)

    def add(sid: str, heading: str, content: str) -> None:
        if content.strip():  # an absent or empty section is left out, never shown blank
            sections.append((sid, heading, content))

    add("settings", "Run settings and provenance", _section_settings(settings or {}, provenance or {}))
    done("settings")

    if optimization is not None and len(optimization):
        if "smiles" not in optimization.columns:
            raise MolvaeError("report: the molecules table has no 'smiles' column")
        opt = _in_call_order(optimization)
        multi = pareto_objectives is not None or "pareto" in opt.columns
        objective_cols = _objective_columns(opt, pareto_objectives) if multi else []
        front = None
        if multi and len(objective_cols) >= 2:
            vals = opt[objective_cols].apply(pd.to_numeric, errors="coerce").to_numpy()
            front = _bool_column(opt["pareto"]) if "pareto" in opt.columns else pareto_front(vals)
        elif "score" not in opt.columns and objective_cols:
            opt = opt.assign(score=opt[objective_cols[0]])
            objective_cols = []
        add("best", "Best molecules", _section_best(opt, top_n, objective_cols, front))
        done("best molecules")
        single = front is None and prior is not None and len(prior) > 0
        add("progress", "Optimization progress",
            _section_progress(opt, optimization_summary, objective_cols, prior if single else None))
        if front is not None:
            add("pareto", "Pareto front", _section_pareto(opt, objective_cols, front))
        if single:
            add("prior", "Optimized vs prior samples", _section_prior(opt, prior, optimization_summary, prior_summary))
    elif optimization_summary:
        add("progress", "Optimization progress", _section_progress(pd.DataFrame(), optimization_summary, []))
    done("optimization progress")

    generated_props = None
    if samples is not None and len(samples):
        add("generated", "Generated molecules", _section_generated(samples, top_n))
        valid = _bool_column(samples["valid"]) if "valid" in samples.columns else np.ones(len(samples), bool)
        good = samples[valid]
        if "unique" in good.columns:
            good = good[_bool_column(good["unique"])]
        if all(p in good.columns for p in chem.MAIN_PROPERTIES):
            generated_props = good[list(chem.MAIN_PROPERTIES)]
        elif "smiles" in good.columns:
            generated_props = _properties_of(_subsample(good["smiles"].dropna().astype(str), _MAX_PROPERTY_MOLECULES))
    done("generated molecules")
    training_props = training_properties if training_properties is not None and len(training_properties) else None
    if training_props is None and training_smiles is not None and len(training_smiles):
        training_props = _properties_of(_subsample(training_smiles, _MAX_PROPERTY_MOLECULES))
    add("properties", "Property distributions", _section_properties(generated_props, training_props))
    done("property distributions")

    if latent is not None and latent.get("coords") is not None:
        add("latent", "Latent space", _section_latent(latent))
    done("latent map")
    if moses_metrics:
        add("moses", "MOSES metrics", _section_moses(moses_metrics))
    if training_metrics is not None and len(training_metrics):
        add("training", "Training", _section_training(training_metrics))
    done("training curves")
    bar.close()

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = _page(title, sections, now)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a report
    return out


# ---------------------------------------------------------------------------- run folders


def _first(run: Path, key: str) -> Path | None:
    return next((run / name for name in RUN_FILES[key] if (run / name).is_file()), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MolvaeError(f"{path}: not valid JSON ({exc}); re-run the stage that wrote it") from None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MolvaeError(f"{path}: not a readable CSV table ({exc}); re-run the stage that wrote it") from None


def report_from_run_dir(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                        title: str | None = None, top_n: int = 24,
                        training_smiles: list[str] | None = None, progress: bool = True) -> Path:
    """Build ``report.html`` in a run folder from the standard files it holds.

    Looks for (each optional, see :data:`RUN_FILES`): ``config.json`` or ``resolved.toml``,
    ``provenance.json``, ``train/metrics.csv``, ``evaluate/metrics.json``,
    ``sample/samples.csv``, ``data/prepared.csv`` (training SMILES, rows with split=train),
    ``optimize/molecules.csv``, ``optimize/summary.json``, the prior-sampling baseline in
    ``optimize/prior/``, ``report/training_properties.csv`` (properties of training molecules,
    written by the pipeline so a rebuild need not recompute them), and ``latent.npz`` with arrays
    ``coords`` (n, 2), ``values`` (n,), optional ``labels`` (n,) of str and a 0-d ``property``.
    ``summary.json`` may name a multi-objective run's objectives under ``objectives``.
    ``training_smiles`` is the reference set for property distributions when the run
    folder has no prepared data (e.g. a run that used the shipped model).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise MolvaeError(f"{run}: run folder not found")
    found = {k: _first(run, k) for k in RUN_FILES}
    if not any(found.values()):
        raise MolvaeError(f"{run}: no run files found (looked for {', '.join(n for v in RUN_FILES.values() for n in v)})")

    settings: dict[str, Any] = {}
    if (p := found["settings"]) is not None:
        if p.suffix == ".toml":
            try:
                settings = tomllib.loads(p.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise MolvaeError(f"{p}: not valid TOML ({exc})") from None
        else:
            settings = _read_json(p)
        if not isinstance(settings, dict):
            raise MolvaeError(f"{p}: expected a table of settings, got {type(settings).__name__}")
    provenance = _read_json(found["provenance"]) if found["provenance"] else {}
    summary = _read_json(found["optimization_summary"]) if found["optimization_summary"] else None
    optimization = _read_csv(found["optimization"]) if found["optimization"] else None
    objectives = None
    if isinstance(summary, Mapping) and isinstance(summary.get("objectives"), list) and optimization is not None:
        names = [o if isinstance(o, str) else o.get("name") for o in summary["objectives"]]
        if len(names) >= 2 and all(isinstance(n, str) for n in names):
            objectives = names

    training_properties = None
    if (p := found["training_properties"]) is not None:
        training_properties = _read_csv(p)
        if not all(c in training_properties.columns for c in chem.MAIN_PROPERTIES):
            training_properties = None  # an older or foreign file: recompute from the SMILES
    if training_smiles is None and training_properties is None and (p := found["training_smiles"]) is not None:
        table = _read_csv(p)
        if "smiles" in table.columns:
            if "split" in table.columns:
                table = table[table["split"] == "train"]
            training_smiles = table["smiles"].dropna().astype(str).tolist()

    latent = None
    if (p := found["latent"]) is not None:
        try:
            with np.load(p, allow_pickle=False) as z:
                latent = {k: z[k] for k in z.files}
        except (ValueError, OSError) as exc:
            raise MolvaeError(f"{p}: not a readable .npz file ({exc})") from None
        if "property" in latent:
            latent["property"] = str(latent["property"])

    if title is None:
        run_table = settings.get("run") if isinstance(settings.get("run"), Mapping) else {}
        name = settings.get("name") or run_table.get("name")
        title = f"molvae run: {name or run.resolve().name}"
    return write_report(
        out_path or run / "report.html", title=title, settings=settings, provenance=provenance,
        samples=_read_csv(found["samples"]) if found["samples"] else None,
        training_smiles=training_smiles, training_properties=training_properties, optimization=optimization,
        optimization_summary=summary,
        prior=_read_csv(found["prior"]) if found["prior"] else None,
        prior_summary=_read_json(found["prior_summary"]) if found["prior_summary"] else None,
        pareto_objectives=objectives, latent=latent,
        moses_metrics=_read_json(found["moses_metrics"]) if found["moses_metrics"] else None,
        training_metrics=_read_csv(found["training_metrics"]) if found["training_metrics"] else None,
        top_n=top_n, progress=progress)
