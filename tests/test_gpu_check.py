"""The GPU check (benchmarks/gpu/) on the CPU: its stage plan, its report, its refusal without a GPU, and (slow) the
whole `run_gpu_check.sh --quick --device cpu` writing every file with every key."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / "benchmarks" / "gpu"
EXPECTED_FILES = {"check.log", "results.json", "summary.md", "nvidia-smi.txt"}


@pytest.fixture(scope="module")
def check_modules():
    sys.path.insert(0, str(GPU_DIR))
    try:
        yield importlib.import_module("gpu_check"), importlib.import_module("gpu_report")
    finally:
        sys.path.remove(str(GPU_DIR))


def test_stages_bring_what_they_need_and_keep_their_order(check_modules) -> None:
    gpu_check, _ = check_modules
    plan = gpu_check.wanted(gpu_check.parse_args(["--out", "x", "--only", "mil800"]))
    assert plan == ["environment", "data", "mil800"]
    plan = gpu_check.wanted(gpu_check.parse_args(["--out", "x", "--only", "pytest"]))
    assert plan == ["environment", "pytest"]
    everything = gpu_check.wanted(gpu_check.parse_args(["--out", "x", "--skip", "mil800", "training_cpu"]))
    assert everything == [s for s in gpu_check.STAGES if s not in ("mil800", "training_cpu")]
    assert everything[:3] == ["environment", "data", "pytest"]
    full, quick = gpu_check.parse_args(["--out", "x"]), gpu_check.parse_args(["--out", "x", "--quick"])
    assert (full.budget, quick.budget) == (470.0, 1800.0)  # 8 minutes on the GPU machine, installs included


def test_a_stage_without_its_minimum_time_is_skipped_and_says_why(check_modules, tmp_path: Path) -> None:
    gpu_check, _ = check_modules
    args = gpu_check.parse_args(["--out", str(tmp_path), "--work", str(tmp_path), "--budget", "100"])
    with (tmp_path / "check.log").open("w") as log:
        check = gpu_check.Check(args, log)
        check.started -= 50  # 50 s used, 40 s usable: too little for mil800 (120 s)
        assert check.start("mil800", [sys.executable, "-c", "pass"]) is None
        entry = check.run("prediction", [sys.executable, "-c", "import sys; print('hello'); sys.exit(3)"])
    assert check.results["stages"]["mil800"] == {"status": "skipped",
                                                 "reason": "not enough time left (50 s of the 100 s budget)"}
    assert entry["status"] == "failed" and entry["exit_code"] == 3 and entry["cap_seconds"] == 40
    assert "----- prediction (failed" in (tmp_path / "check.log").read_text()
    assert "hello" in (tmp_path / "check.log").read_text()


def test_pytest_counts_are_read_from_its_summary_line(check_modules, tmp_path: Path) -> None:
    gpu_check, _ = check_modules
    log = tmp_path / "pytest.log"
    log.write_text("..F\n=== 2 passed, 1 failed, 3 skipped, 1 error in 40.12s ===\n")
    assert gpu_check.pytest_counts(log) == {"passed": 2, "failed": 1, "skipped": 3, "errors": 1,
                                            "line": "2 passed, 1 failed, 3 skipped, 1 error in 40.12s"}
    assert gpu_check.pytest_counts(tmp_path / "missing.log") == {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}


def test_the_report_gives_ratios_targets_and_the_second_call(check_modules, tmp_path: Path) -> None:
    _, gpu_report = check_modules
    ok = {"status": "ok", "seconds": 1.0}
    results = {"date": "2026-12-01", "quick": False, "budget_seconds": 470, "elapsed_seconds": 455.0, "stages": {
        "segmentation": {**ok, "result": {"job": {"fields_per_second": 60.0, "gpu_util_mean": 55.0,
                                                  "gpu_util_median": 60.0, "gpu_memory_max_mib": 9000},
                                          "segmenter_only": {"fields_per_second": 90.0}}},
        "segmentation_cpu": {**ok, "result": {"job": {"fields_per_second": 6.0}}},
        "training": {**ok, "result": {"train_cells_per_second": 4000.0}},
        "training_cpu": {"status": "timeout", "seconds": 60.0, "reason": "stopped at its cap of 60 s"},
        "mil800": {"status": "skipped", "reason": "not enough time left (40 s of the 470 s budget)"}}}
    text = gpu_report.write_report(results, tmp_path)
    ratios = json.loads((tmp_path / "results.json").read_text())["ratios"]
    assert ratios["segmentation"]["ratio_to_cpu"] == 10.0 and ratios["segmentation"]["target_met"] is True
    assert ratios["training"]["cpu"] is None and ratios["training"]["ratio_to_cpu"] is None
    assert ratios["training"]["target_met"] is False  # 4,000 < 5,000 cells/s
    assert ratios["prediction"]["device"] is None and ratios["prediction"]["target_met"] is None
    assert "| segmentation (fields/s) | 60.0 | 6.0 | 10.0 | 1.49 | 40.3 | 50 | True |" in text
    assert "segmentation mean 55.0% (median 60.0%, max memory 9000 MiB)" in text
    assert "run it alone in a second call: `benchmarks/gpu/run_gpu_check.sh --only mil800`" in text
    assert (tmp_path / "summary.md").read_text() == text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_check_stops_at_once_and_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(GPU_DIR / "run_gpu_check.sh"), "--no-install", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["stages"]) == ["environment"]
    assert results["stages"]["environment"]["result"]["error"].startswith("--device auto: torch sees no CUDA GPU")
    assert EXPECTED_FILES <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.slow
def test_quick_check_on_the_cpu_writes_every_file_with_every_key(tmp_path: Path) -> None:
    """The whole check with tiny sizes on the CPU (about 4 minutes on the 2-core VM): every stage runs and
    reports, so the one GPU call meets no error of the check's own."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "out"
    done = subprocess.run([str(GPU_DIR / "run_gpu_check.sh"), "--quick", "--device", "cpu", "--no-install",
                           "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    results = json.loads((out / "results.json").read_text())
    sys.path.insert(0, str(GPU_DIR))
    try:
        stages = importlib.import_module("gpu_check").STAGES
    finally:
        sys.path.remove(str(GPU_DIR))
    assert list(results["stages"]) == list(stages)
    assert {n: e["status"] for n, e in results["stages"].items()} == dict.fromkeys(stages, "ok")
    assert results["stages"]["pytest"]["result"]["passed"] == 1
    assert results["stages"]["environment"]["result"]["packages"]["cellpose"]["version"].startswith("3.1")
    for name in ("segmentation", "training", "prediction"):
        ratio = results["ratios"][name]
        assert ratio["device"] > 0 and ratio["cpu"] > 0 and ratio["ratio_to_cpu"] > 0
    assert results["stages"]["segmentation"]["result"]["job"]["fields"] == 8
    assert results["stages"]["mil800"]["result"]["rows"]["attention"]["epochs"] == 1
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check") and "| measure | device | CPU, same script | ratio |" in summary
    log = (out / "check.log").read_text()
    assert all(f"----- {name} (ok" in log for name in stages if name != "environment")
