"""The objective as the search sees it: one interface over a single objective or several
(a Pareto search), the columns it gives ``molecules.csv``, and the hard filters (lead
similarity, scaffold) that ``optimize`` adds to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd


class _Scorer:
    """One interface over an Objective or a MultiObjective: the score table, and the value
    column(s) the sampler is told (``score``, or ``<objective>_score`` for each objective)."""

    def __init__(self, objective):
        from ..scoring import MultiObjective

        self.objective = objective
        self.multi = isinstance(objective, MultiObjective)
        if self.multi:
            self.value_columns = [f"{n}_score" for n in objective.names]
            self.infeasible = [objective.objectives[n].infeasible_score for n in objective.names]
            self.bounded = True
        else:
            self.value_columns = ["score"]
            self.infeasible = [objective.infeasible_score]
            self.bounded = objective.bounded
        empty = self.score([])
        self.columns = list(empty.columns)

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * len(self.value_columns)

    def score(self, smiles: Sequence[str]) -> pd.DataFrame:
        return self.objective.score(list(smiles), progress=False)

    def filter_names(self) -> list[str]:
        """Columns of the hard filters (value 0 = the molecule failed that filter)."""
        objectives = self.objective.objectives.values() if self.multi else [self.objective]
        names = [r.name for o in objectives for r in o._resolved if r.component.filter]
        return [n for n in dict.fromkeys(names) if n in self.columns]

    def describe(self) -> str:
        if self.multi:
            return "multi-objective: " + ", ".join(self.objective.names)
        o = self.objective
        return o.description or o.source


def _log_columns(scorer: _Scorer) -> list[str]:
    """Columns of molecules.csv: see :mod:`molvae.optimize` (``error`` follows ``feasible``)."""
    values = scorer.value_columns
    components = [c for c in scorer.columns if c not in ("smiles", "feasible", *values)]
    return ["oracle_call", "smiles", *values, "feasible", *components, "trial", "batch", "worker", "seconds"]


def _resolve_objective(objective, allow_code: bool = False) -> Any:
    from ..scoring import MultiObjective, as_multi_objective, as_objective

    if isinstance(objective, MultiObjective):
        return objective
    if isinstance(objective, (list, tuple)):
        return as_multi_objective(list(objective), allow_code=allow_code)
    return as_objective(objective, allow_code=allow_code)


def _with_filters(objective, components: list) -> Any:
    """The objective with extra hard-constraint components (lead similarity, scaffold)."""
    from ..scoring import MultiObjective, Objective

    if not components:
        return objective
    if isinstance(objective, MultiObjective):
        return MultiObjective({n: _with_filters(o, components) for n, o in objective.objectives.items()})
    return Objective(list(objective.components) + components, aggregate=objective.aggregate,
                     infeasible_score=objective.infeasible_score if objective._explicit_infeasible else None,
                     source=objective.source, base_dir=objective.base_dir,
                     description=objective.description, allow_code=objective.allow_code)
