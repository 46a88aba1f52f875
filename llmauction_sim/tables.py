"""Tables the runs write: the per-query log in native Arrow types, and small result tables as
Markdown (docs/results), without an optional dependency."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmauction_sim.runfolder import temp_path

# The per-query log's nested columns (simulate, evaluate, IRPO's market log): ad ID lists, and
# maps from ad ID (or format error kind) to a number. Other columns keep pandas' own types.
LIST_COLUMNS = ("candidates", "exposed", "clicked")
MAP_COLUMNS = {"bids": pa.float64(), "click_probabilities": pa.float64(),
               "payments": pa.float64(), "click_prices": pa.float64(),
               "format_error_kinds": pa.int64()}


def _mapping(value) -> dict:
    if isinstance(value, str):  # logs written when these columns held JSON text
        return json.loads(value)
    return dict(value)  # a dict, or the (key, value) pairs a plain pd.read_parquet gives


def write_query_log(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a per-query log atomically, ID lists as list<string> and maps as map<string, _>."""
    path = Path(path)
    frame = frame.copy()
    for name in MAP_COLUMNS.keys() & set(frame.columns):
        frame[name] = frame[name].map(_mapping)
    for name in set(LIST_COLUMNS) & set(frame.columns):
        frame[name] = frame[name].map(list)
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    for name in frame.columns:
        if name in MAP_COLUMNS:
            kind = pa.map_(pa.string(), MAP_COLUMNS[name])
        elif name in LIST_COLUMNS:
            kind = pa.list_(pa.string())
        else:
            continue
        schema = schema.set(schema.get_field_index(name), pa.field(name, kind))
    tmp = temp_path(path)
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), tmp)
    os.replace(tmp, path)


def read_query_log(path: str | Path) -> pd.DataFrame:
    """A per-query log with its maps as dicts (a plain `pd.read_parquet` gives (key, value)
    pairs: `dict(row["bids"])`)."""
    frame = pd.read_parquet(path, to_pandas_kwargs={"maps_as_pydicts": "strict"})
    for name in MAP_COLUMNS.keys() & set(frame.columns):
        frame[name] = frame[name].map(_mapping)
    return frame


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
