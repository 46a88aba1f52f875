"""The notebooks run top to bottom with their default (small) parameters, show their figures
inline, and are stored clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# The market and mechanism notebooks run the embedded model; the bidding one is numpy only.
USES_MODEL = {"01_quickstart.ipynb", "03_mechanism_properties.ipynb"}


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_bidding_equilibria.ipynb",
                                           "03_mechanism_properties.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_and_with_parameters_cell(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell is the parameters"
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, "strip outputs before committing"


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.name in USES_MODEL
                                  else p for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend
    book = nbformat.read(path, as_version=4)
    # Run in a scratch folder so run outputs land there, not in the repository.
    NotebookClient(book, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in book.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    # A figure cell must show its figure: library code that switches matplotlib's backend
    # (e.g. to Agg for its own files) would silently turn the inline figures off.
    figure_cells = [c for c in code if "plt.subplots" in c.source]
    assert figure_cells
    blank = [c.source.splitlines()[0] for c in figure_cells
             if not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not blank, f"figure cells without an image: {blank}"
