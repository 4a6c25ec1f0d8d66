"""The HTML report: every link and image resolves inside the folder, nothing is fetched from elsewhere, the
numbers match the known fixture, and the CLIs (make_maps.py, predict.py --maps/--report) produce it."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from map_fixtures import CELL_BOXES, CELL_TRUTH, PredictionFixture, masks_of, write_prediction_fixture

import hpa_cells_cli.evaluate as evaluate_command
import hpa_cells_cli.maps as maps_command
import hpa_cells_cli.predict as predict_command
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.maps import PredictionRun, write_maps
from hpa_cells.metrics import cell_level_map
from hpa_cells.report import TruthFolderError, write_maps_and_report, write_report
from hpa_cells.report.pages import fmt
from hpa_cells.scoring import score_prediction_folder


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> PredictionFixture:
    return write_prediction_fixture(tmp_path_factory.mktemp("run"))


class _References(HTMLParser):
    """Every href/src of a page, and the tags that could load something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.loaders: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.references.append(value)
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.loaders.append(tag)


def check_links(report_dir: Path) -> int:
    """Assert every reference of every HTML file is a relative path to an existing file; returns how many."""
    checked = 0
    pages = sorted(report_dir.rglob("*.html"))
    assert pages, f"no HTML in {report_dir}"
    for page in pages:
        parser = _References()
        parser.feed(page.read_text(encoding="utf-8"))
        assert parser.loaders == [], f"{page} loads {parser.loaders}"
        for reference in parser.references:
            parsed = urlparse(reference)
            assert not parsed.scheme and not parsed.netloc, f"{page}: absolute reference {reference}"
            target = (page.parent / unquote(parsed.path)).resolve()
            assert target.is_file(), f"{page}: {reference} does not exist"
            assert report_dir.resolve() in target.parents, f"{page}: {reference} leaves the report folder"
            checked += 1
    return checked


def test_report_links_resolve_and_numbers_match(fixture: PredictionFixture, tmp_path: Path) -> None:
    report = tmp_path / "report"
    with PredictionRun(fixture.pred) as run:
        maps = write_maps(run, tmp_path / "maps", write_tiff=False)
        index = write_report(run, maps, report, labels_path=fixture.labels, truth_dir=fixture.truth)
    assert index == report / "index.html"
    pages = sorted(p.relative_to(report).as_posix() for p in report.rglob("*.html"))
    assert pages == ["images/fieldA.html", "images/fieldB.html", "index.html"]
    assert check_links(report) >= 2 * 2 + 2 + 2 * 4  # thumbnails, page links, figures, overview/panels
    assert (report / "figures" / "pr_curves.png").is_file()
    assert (report / "maps" / "fieldA" / "overview.png").is_file()  # copied: the folder stands alone

    text = index.read_text()
    # image-level F1 against labels A: {0, 2}, B: {25}; predicted A: {0, 25}, B: {}
    assert "macro F1 <b>0.333</b>" in text
    row = re.search(r"<tr><td class=\"num\">0</td>.*?</tr>", text).group(0)
    assert ">1.000<" in row  # Nucleoplasm F1 1
    assert "5/5 true cells matched at IoU" in text
    assert "1 (50%)" in row  # predicted in one of two images

    page = (report / "images" / "fieldA.html").read_text()
    cell_rows = re.findall(r"<tr( class=\"flagged\")?><td class=\"num\">(\d+)</td>", page)
    assert [(flag != "", int(cell)) for flag, cell in cell_rows] == [(False, 1), (False, 2), (True, 5)]
    assert "border" in page and "next &rsaquo;" in page and "previous" not in page


def test_cell_curves_agree_with_cell_level_map(fixture: PredictionFixture) -> None:
    with PredictionRun(fixture.pred) as run:  # the report's scores: the shared scorer on the run's open cache
        scores = score_prediction_folder(run.folder, None, fixture.truth, cache=run.cache)
        probs = {i: {int(c): row for c, row in zip(g["cell_id"], g[list(CLASS_NAMES)].to_numpy(), strict=True)}
                 for i, g in run.cells.groupby("image_id")}
    masks = {i: masks_of(i)[0] for i in CELL_BOXES}
    truth: dict[str, dict[int, tuple[int, ...]]] = {}
    for (image_id, cell_id), labels in CELL_TRUTH.items():
        truth.setdefault(image_id, {})[cell_id] = labels
    reference = cell_level_map(masks, truth, masks, probs)
    assert sorted(scores.cell_curves) == [0, 2, 25]
    for c, curve in scores.cell_curves.items():
        assert curve.average_precision == pytest.approx(reference.per_class_ap[c])
        assert curve.recall[-1] == pytest.approx(1.0)  # perfect segmentation: every positive is retrieved
    assert scores.cell_map == pytest.approx(reference.mean_ap)
    assert (scores.cells_true, scores.cells_matched, scores.cells_predicted) == (5, 5, 5)


def _index_numbers(text: str) -> tuple[str, dict[str, str], str]:
    """(macro F1, class name -> image F1 cell, cell mAP) as shown on a report's index page."""
    macro = re.search(r"macro F1 <b>([^<]*)</b>", text).group(1)
    cell_map = re.search(r"cell mAP <b>([^<]*)</b>", text).group(1)
    header = next(h for h in re.findall(r"<thead>(.*?)</thead>", text, re.S) if "image F1" in h)
    columns = re.findall(r"<th[^>]*>([^<]*)</th>", header)
    f1_column = columns.index("image F1")
    per_class = {}
    for row in re.findall(r"<tr><td class=\"num\">\d+</td>.*?</tr>", text, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        name = html.unescape(re.sub(r"<[^>]*>", "", cells[1]))
        per_class[name] = cells[f1_column]
    return macro, per_class, cell_map


def test_report_shows_what_evaluate_prints(fixture: PredictionFixture, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mil.evaluation

    # evaluate.py's second cell mAP re-runs the model on the true masks (the fixture has no model, and the report
    # does not show that number): skip only that pass; everything compared below is evaluate.py's own output
    monkeypatch.setattr(mil.evaluation, "_add_true_mask_scores", lambda *args: None)
    report = tmp_path / "report"
    result = write_maps_and_report(fixture.pred, report_dir=report, labels_path=fixture.labels,
                                   truth_dir=fixture.truth)
    json_out = tmp_path / "evaluation.json"
    assert evaluate_command.main(["--pred", str(fixture.pred), "--labels", str(fixture.labels), "--truth",
                                  str(fixture.truth), "--json-out", str(json_out)]) == 0
    capsys.readouterr()
    evaluation = json.loads(json_out.read_text())
    macro, per_class, cell_map = _index_numbers(result.report_index.read_text())
    assert macro == fmt(evaluation["image_macro_f1"]) == "0.333"
    assert per_class == {name: fmt(evaluation["per_class_f1"][name]) for name in CLASS_NAMES}
    assert cell_map == fmt(evaluation["cell_map"])
    assert f"{evaluation['cells_matched']}/{evaluation['cells_true']} true cells matched" in \
        result.report_index.read_text()


def test_report_without_labels_or_truth(fixture: PredictionFixture, tmp_path: Path) -> None:
    result = write_maps_and_report(fixture.pred, report_dir=tmp_path / "report", extra_classes=[27])
    assert result.maps_dir == tmp_path / "report" / "maps"
    assert result.maps[0].cells_tiff is None  # maps drawn straight into the report: no OME-TIFFs
    check_links(tmp_path / "report")
    text = result.report_index.read_text()
    assert "labels stored in the cell cache" in text  # the cache's labels stand in for a labels file
    assert "Cell-level precision-recall" not in text
    assert (tmp_path / "report" / "maps" / "fieldB" / "class_27.png").is_file()


def test_truth_folder_errors_name_the_file(fixture: PredictionFixture, tmp_path: Path) -> None:
    with PredictionRun(fixture.pred) as run:
        with pytest.raises(TruthFolderError, match=f"{tmp_path} has no cells.csv with per-cell truth"):
            score_prediction_folder(run.folder, None, tmp_path, cache=run.cache)
        (tmp_path / "cells.csv").write_text((fixture.truth / "cells.csv").read_text())
        with pytest.raises(TruthFolderError, match="no true cell mask fieldA_cells.png for image fieldA"):
            score_prediction_folder(run.folder, None, tmp_path, cache=run.cache)
        with pytest.raises(TruthFolderError, match="no true cell mask fieldA_cells.png for image fieldA"):
            write_report(run, [], tmp_path / "report", truth_dir=tmp_path)  # the report raises the same


def test_make_maps_cli(fixture: PredictionFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_maps = maps_command
    code = make_maps.main(["--pred", str(fixture.pred), "--maps", str(tmp_path / "maps"), "--report",
                           str(tmp_path / "report"), "--classes", "3", "Cytosol", "--limit", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Drew maps of 1 images" in out and "index.html" in out
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["fieldA", "maps_index.csv"]
    assert (tmp_path / "maps" / "fieldA" / "class_03.png").is_file()
    assert (tmp_path / "maps" / "fieldA" / "probabilities.ome.tif").is_file()
    check_links(tmp_path / "report")

    assert make_maps.main(["--pred", str(fixture.pred), "--maps", str(tmp_path / "m2"), "--classes", "golgi"]) == 2
    assert "unknown class 'golgi'" in capsys.readouterr().err
    assert make_maps.main(["--pred", str(tmp_path / "nowhere"), "--maps", str(tmp_path / "m3")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_maps.main(["--pred", str(fixture.pred)])


def test_predict_draws_maps_and_report(fixture: PredictionFixture, tmp_path: Path) -> None:
    import torch

    from mil.config import MILConfig
    from mil.model_folder import build_model, save_model_folder

    torch.manual_seed(0)
    model = build_model(MILConfig(encoder="resnet10t", input_size=16, dropout=0.0)).eval()
    save_model_folder(tmp_path / "model", model, np.full(NUM_CLASSES, 0.5), {}, training={})
    predict = predict_command
    code = predict.main(["--model", str(tmp_path / "model"), "--cache", str(fixture.cache), "--out",
                         str(tmp_path / "pred"), "--maps", str(tmp_path / "maps"), "--report", str(tmp_path / "report"),
                         "--map-classes", "Nucleoli"])
    assert code == 0
    for image_id in CELL_BOXES:
        assert (tmp_path / "maps" / image_id / "class_02.png").is_file()
        assert (tmp_path / "maps" / image_id / "cells.ome.tif").is_file()
    check_links(tmp_path / "report")
    assert predict.main(["--model", str(tmp_path / "model"), "--cache", str(fixture.cache), "--out",
                         str(tmp_path / "p2"), "--map-classes", "99"]) == 2


def test_predict_maps_with_an_input_file_deleted_after_segmenting(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16: one input file deleted after segmenting stopped `predict.py --maps` at that image with a
    traceback; the maps are drawn from the cache's stored pixels now."""
    import torch

    from mil.config import MILConfig
    from mil.model_folder import build_model, save_model_folder

    fixture = write_prediction_fixture(tmp_path / "run")
    (fixture.images / "fieldA_green.png").unlink()
    torch.manual_seed(0)
    model = build_model(MILConfig(encoder="resnet10t", input_size=16, dropout=0.0)).eval()
    save_model_folder(tmp_path / "model", model, np.full(NUM_CLASSES, 0.5), {}, training={})
    assert predict_command.main(["--model", str(tmp_path / "model"), "--cache", str(fixture.cache), "--out",
                                 str(tmp_path / "pred"), "--maps", str(tmp_path / "maps"), "--report",
                                 str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    assert "could not be drawn" not in captured.out and "Traceback" not in captured.err
    for image_id in CELL_BOXES:
        assert (tmp_path / "maps" / image_id / "overview.png").is_file()
    check_links(tmp_path / "report")
