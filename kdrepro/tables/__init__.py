"""The chapters' tables and figures from long-form results, by concern.

- :mod:`~kdrepro.tables.dataset` — the dataset against the papers' statistics; what each protocol holds out.
- :mod:`~kdrepro.tables.compare` — ours next to the papers: ratios, variant tables with ranks, ordering
  agreement, gains, λ grids (claims and verdicts: :mod:`kdrepro.paper`).
- :mod:`~kdrepro.tables.efficiency` — parameters and recommendation time per student size.
- :mod:`~kdrepro.tables.selection` — DE's expert selection over training.
"""

from kdrepro.tables import compare, dataset, efficiency, selection

__all__ = ["compare", "dataset", "efficiency", "selection"]
