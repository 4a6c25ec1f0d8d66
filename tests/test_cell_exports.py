"""Per-cell table exports: Parquet equals cells.csv; the .h5ad holds probabilities, cell metadata and centroids
where scanpy/squidpy look for them; a missing anndata gives the install command."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from map_fixtures import THRESHOLDS, PredictionFixture, cell_probabilities, write_prediction_fixture

from hpa_cells.cell_exports import (
    ExportDependencyError,
    read_cell_table,
    write_cells_parquet,
    write_h5ad,
)
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.predictions import PredictionFolderError


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> PredictionFixture:
    return write_prediction_fixture(tmp_path_factory.mktemp("run"))


def test_parquet_round_trips_the_cell_table(fixture: PredictionFixture, tmp_path: Path) -> None:
    path = write_cells_parquet(fixture.pred, tmp_path / "cells.parquet")
    table = pd.read_parquet(path)
    expected = read_cell_table(fixture.pred)
    assert list(table.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(table, expected)
    assert table["image_id"].tolist() == ["fieldA"] * 3 + ["fieldB"] * 2
    # predict.py's own parquet holds the same cells
    written = pd.read_parquet(fixture.pred / "cells.parquet")
    np.testing.assert_allclose(written[list(CLASS_NAMES)].to_numpy(), table[list(CLASS_NAMES)].to_numpy(), atol=1e-5)


def test_h5ad_layout(fixture: PredictionFixture, tmp_path: Path) -> None:
    anndata = pytest.importorskip("anndata")
    path = write_h5ad(fixture.pred, tmp_path / "cells.h5ad")
    adata = anndata.read_h5ad(path)
    assert adata.shape == (5, NUM_CLASSES)
    assert list(adata.obs_names) == ["fieldA:1", "fieldA:2", "fieldA:5", "fieldB:1", "fieldB:2"]
    assert list(adata.var_names) == list(CLASS_NAMES)
    np.testing.assert_allclose(np.asarray(adata.X[2]), cell_probabilities("fieldA", 5), atol=1e-6)
    np.testing.assert_array_equal(adata.var["threshold"].to_numpy(), THRESHOLDS)
    assert adata.var["class_id"].tolist() == list(range(NUM_CLASSES))
    assert adata.obs["image_id"].dtype == "category"
    assert list(adata.obs["top_label"].cat.categories) == list(CLASS_NAMES)
    assert adata.obs["top_label"].iloc[0] == CLASS_NAMES[int(np.argmax(cell_probabilities("fieldA", 1)))]
    assert adata.obs["qc_flag_names"].tolist() == ["", "", "border", "", ""]
    assert adata.obs["used_for_image"].tolist() == [True, True, False, True, True]
    cells = read_cell_table(fixture.pred)
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["centroid_x", "centroid_y"]].to_numpy())
    assert "centroid_x" not in adata.obs.columns
    assert adata.uns["hpa_cells"]["cache"] == str(fixture.cache)


def test_missing_anndata_names_the_extra(fixture: PredictionFixture, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_anndata(name: str, *args: object, **kwargs: object) -> object:
        if name == "anndata" or name.startswith("anndata."):
            raise ImportError("No module named 'anndata'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_anndata)
    with pytest.raises(ExportDependencyError, match=r"needs the anndata package: pip install 'hpa-cells\[anndata\]'"):
        write_h5ad(fixture.pred, tmp_path / "cells.h5ad")
    assert not (tmp_path / "cells.h5ad").exists()


def test_bad_folders_are_named(fixture: PredictionFixture, tmp_path: Path) -> None:
    with pytest.raises(PredictionFolderError, match=f"{tmp_path} is not a prediction folder: cells.csv is missing"):
        read_cell_table(tmp_path)
    broken = tmp_path / "pred"
    shutil.copytree(fixture.pred, broken)
    table = pd.read_csv(broken / "cells.csv").drop(columns=["Cytosol"])
    table.to_csv(broken / "cells.csv", index=False)
    with pytest.raises(PredictionFolderError, match=r"cells.csv: missing columns \['Cytosol'\]"):
        write_cells_parquet(broken)
