"""What a run leaves: the PMO scores of its curve (:func:`top_k_auc`), the summary, the
molecules table best first, ``top.csv``, ``summary.json`` and ``curve.png``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import chem
from .ledger import MoleculeLog
from .loop import _Stats
from .objective import _Scorer

TOP_N = 100


def top_k_auc(scores: Sequence[float], k: int = 10, budget: int | None = None, freq: int = 100,
              finish: bool = True) -> float:
    """PMO's area under the running top-``k`` mean curve (Gao et al. 2022, ``top_auc``).

    ``scores`` are in oracle-call order. The mean of the ``k`` best scores is taken every
    ``freq`` calls and at the end, integrated by the trapezoid rule from 0 (value 0 at call
    0), padded to ``budget`` with the last value when the run stopped early (``finish``),
    and divided by ``budget``: 1.0 means a top-``k`` mean of 1 from the first call on.
    """
    s = np.asarray(scores, dtype=float)
    n = len(s)
    budget = int(budget or n)
    if n == 0 or budget == 0:
        return 0.0
    total, prev, called = 0.0, 0.0, 0
    for idx in range(freq, min(n, budget), freq):
        now = float(np.mean(np.sort(s[:idx])[::-1][:k]))
        total += freq * (now + prev) / 2
        prev, called = now, idx
    now = float(np.mean(np.sort(s[: min(n, budget)])[::-1][:k]))
    total += (min(n, budget) - called) * (now + prev) / 2
    if finish and n < budget:
        total += (budget - n) * now
    return total / budget


def running_top_mean(scores: Sequence[float], k: int) -> np.ndarray:
    """Mean of the ``k`` best scores among the first ``i`` calls, for each ``i``."""
    import heapq

    heap: list[float] = []
    total = 0.0
    out = np.empty(len(scores))
    for i, s in enumerate(scores):
        s = float(s) if np.isfinite(s) else -np.inf
        if len(heap) < k:
            heapq.heappush(heap, s)
            total += s
        elif s > heap[0]:
            total += s - heapq.heapreplace(heap, s)
        out[i] = total / len(heap)
    return out


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """True for rows not dominated by any other row (all columns maximized)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominated = np.all(v >= v[i], axis=1) & np.any(v > v[i], axis=1)
        if dominated.any():
            mask[i] = False
    return mask


def _summarize(mlog: MoleculeLog, scorer: _Scorer, stats: _Stats, wall: float, budget: int,
               reason: str, info: dict[str, Any]) -> dict[str, Any]:
    scores = np.asarray(mlog.scores, dtype=float)
    ranked = np.sort(scores)[::-1]

    def top(k):
        return float(ranked[:k].mean()) if len(ranked) else float("nan")

    frame = mlog.frame()
    n_feasible = int(frame["feasible"].sum()) if len(frame) else 0
    time_split = {f"{k}_s": round(v, 3) for k, v in stats.time.items()}
    accounted = sum(stats.time.values())
    time_split["other_s"] = round(max(0.0, wall - accounted), 3)
    time_split["storage_background_s"] = round(stats.storage_background, 3)
    out = {
        **info,
        "objective": scorer.describe(),
        "budget": budget,
        "oracle_calls": len(mlog),
        "new_oracle_calls": stats.new,
        "stop_reason": reason,
        "top1": top(1), "top10_mean": top(10), "top100_mean": top(100),
        "auc_top1": top_k_auc(scores, 1, budget), "auc_top10": top_k_auc(scores, 10, budget),
        "auc_top100": top_k_auc(scores, 100, budget),
        "feasible_fraction": float(frame["feasible"].mean()) if len(mlog) else float("nan"),
        "trials": stats.trials,
        "invalid_decodes": stats.invalid,
        "duplicate_decodes": stats.duplicates,
        "over_budget_decodes": stats.over_budget,
        "valid_fraction": 1 - stats.invalid / stats.trials if stats.trials else float("nan"),
        "new_fraction": stats.new / stats.trials if stats.trials else float("nan"),
        "wall_s": round(wall, 3),
        "wall_s_total": round(mlog.last_seconds(), 3),
        "calls_per_s": round(stats.new / wall, 2) if wall > 0 else float("nan"),
        "time": time_split,
        # Everything but scoring: what the optimizer adds on top of the oracle's own cost.
        "overhead_fraction": round(1 - stats.time["score"] / wall, 4) if wall > 0 else float("nan"),
        "n_feasible": n_feasible,
        "n_failed": mlog.n_failed,
        "warnings": _warnings(frame, scorer, mlog.n_failed, n_feasible),
    }
    if scorer.multi:
        values = frame[scorer.value_columns].to_numpy() if len(mlog) else np.zeros((0, 1))
        out["pareto_size"] = int(pareto_mask(values).sum()) if len(values) else 0
        out["objectives"] = {c: {"top1": float(np.max(values[:, j])) if len(values) else float("nan"),
                                 "auc_top10": top_k_auc(values[:, j], 10, budget)}
                             for j, c in enumerate(scorer.value_columns)}
    return out


def _warnings(frame: pd.DataFrame, scorer: _Scorer, n_failed: int, n_feasible: int) -> list[str]:
    """What a run's scores alone would hide: molecules that failed, and no feasible molecule."""
    out = []
    if n_failed:
        first = frame.loc[frame["error"] != "", "error"].iloc[0]
        out.append(f"{n_failed} of {len(frame)} molecules could not be scored (the objective raised or "
                   f"returned no number); they are infeasible, and the error column of molecules.csv "
                   f"says why, e.g. {first}")
    if len(frame) and n_feasible == 0:
        rejected = [f"{name} rejected {int((frame[name] == 0).sum())}" for name in scorer.filter_names()]
        out.append(f"no feasible molecule among the {len(frame)} scored"
                   + (f" ({', '.join(rejected)})" if rejected else "")
                   + ": every score is the infeasible score, not a result. A filter no decoded "
                     "molecule passes (an impossible scaffold, a similarity floor too high for the "
                     "trust region) cannot be optimized; loosen it.")
    return out


def _table(mlog: MoleculeLog, scorer: _Scorer) -> pd.DataFrame:
    df = mlog.frame()
    if scorer.multi and len(df):
        df["pareto"] = pareto_mask(df[scorer.value_columns].to_numpy())
    elif scorer.multi:
        df["pareto"] = pd.Series(dtype=bool)
    df["_rank"] = mlog.scores
    keys = ["pareto", "_rank"] if scorer.multi else ["_rank"]
    df = df.sort_values(keys + ["oracle_call"], ascending=[False] * len(keys) + [True], kind="stable")
    return df.drop(columns="_rank").reset_index(drop=True)


def _write_outputs(out: Path, table: pd.DataFrame, summary: dict[str, Any], mlog: MoleculeLog) -> None:
    top = table.head(TOP_N).copy()
    props = chem.properties_many(top["smiles"].tolist(), names=("qed", "logp", "sa", "mw", "tpsa",
                                                                "heavy_atoms"), progress=False)
    for c in props.columns:
        if c not in top.columns and f"{c}_raw" not in top.columns:
            top[c] = props[c].to_numpy()
    _atomic_csv(top, out / "top.csv")
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(_json_safe(summary), indent=1))
    os.replace(tmp, out / "summary.json")
    plot_curve(mlog.scores, out / "curve.png", title=summary.get("objective", ""),
               budget=summary.get("budget"))


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def plot_curve(scores: Sequence[float], path: str | os.PathLike, title: str = "",
               budget: int | None = None) -> None:
    """Best and top-10 mean score against oracle calls, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.asarray(scores, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if len(s):
        x = np.arange(1, len(s) + 1)
        ax.plot(x, np.maximum.accumulate(np.where(np.isfinite(s), s, -np.inf)), label="best")
        ax.plot(x, running_top_mean(s, 10), label="top-10 mean")
        ax.scatter(x, s, s=2, alpha=0.15, color="grey", label="each molecule")
    if budget:
        ax.set_xlim(0, budget)
    ax.set_xlabel("oracle calls (unique molecules scored)")
    ax.set_ylabel("score")
    ax.set_title(title[:80], fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)

