"""Small result tables as Markdown (docs/results), without an optional dependency."""

from __future__ import annotations

import pandas as pd


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; floats to 3 significant digits, missing values as n/a."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "n/a"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)
