"""The GPU check of issue 14 in one command: the GPU tests, then the GPU benchmarks against the same scripts on the
machine's CPU, within a time budget; every result in one folder. run_gpu_check.sh runs this after installing the
carried wheels; see benchmarks/gpu/README.md.

    python benchmarks/gpu/gpu_check.py --out DIR [--quick] [--device auto|cuda|cpu] [--budget SECONDS]
                                       [--only STAGE ...] [--skip STAGE ...] [--work DIR]

Stages, in this order (each but the first a subprocess with a time cap; one that fails or runs out of time is
recorded and the check goes on; a stage that no longer fits in the budget is skipped and says so):

  environment       nvidia-smi, torch and CUDA, the versions of the carried packages; stops the check when the
                    device is cuda (or auto) and torch sees no GPU
  data              benchmarks/gpu/prepare_data.py: the MIL benchmark's 800 synthetic fields and their true-mask
                    cache, a 64-field cache for the CPU runs, 512 fields to segment; made with every core, in the
                    background while pytest runs (which needs the GPU more than the CPU)
  pytest            pytest -m gpu --rungpu: tests/test_gpu_stages.py (and tests/test_training_gpu_path.py when
                    the tree has it); with --quick only the prediction test
  segmentation      fields/s at 512 px into the cache, GPU utilisation; and the segmenter alone
  segmentation_cpu  the same script on this machine's CPU, 48 fields
  training          MIL training cells/s, resnet10t at 64 px, 3 epochs on the 800-field cache (64 bags of up to 16
                    cells per step)
  training_cpu      the same script on the CPU, 2 epochs on the 64-field cache
  prediction        the bundled model over the 800-field cache, fields/s
  prediction_cpu    the same script on the CPU, over the 64-field cache
  mil800            benchmarks/bench_mil.py's attention row on the device for its full schedule (10 epochs; the
                    fields and cache of the data stage are reused), when the time left allows; else skipped, with
                    the command of a second call (--only mil800)

The CPU runs are brief (fewer fields, fewer epochs) and are the base of the ratios: the same scripts on the same
machine's CPU (all its cores).

Writes into --out: check.log (every stage's output), results.json, summary.md, nvidia-smi.txt. Exit status: 0 when
every stage that ran passed, 1 when one failed or ran out of time, 2 when there is no GPU to check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from gpu_report import STAGE_TITLES, write_report  # noqa: E402  (this folder, after the path is set)

STAGES = tuple(STAGE_TITLES)
NEEDS_DATA = {"segmentation", "training", "prediction", "segmentation_cpu", "training_cpu", "prediction_cpu", "mil800"}
CAPS = {"environment": 60, "pytest": 180, "data": 200, "segmentation": 120, "segmentation_cpu": 75, "training": 90,
        "training_cpu": 60, "prediction": 60, "prediction_cpu": 45, "mil800": 420}
"""Most seconds per stage (full mode; x3 with --quick); every cap is also cut to the time left."""
MINIMUM = {"mil800": 120}
"""A stage starts only with this much time left (default 20 s)."""
RESERVE = 10.0
"""Seconds kept back at the end for the report."""


@dataclass(frozen=True)
class Sizes:
    """What each stage works on."""

    fields: int = 800
    cpu_cache_fields: int = 64
    seg_distinct: int = 64
    seg_copies: int = 8
    seg_workers: int = max(1, (os.cpu_count() or 2) - 1)
    seg_batch: int = 64
    seg_network_batch: int = 32
    seg_cpu_limit: int = 48
    stream_fields: int = 256
    train_epochs: int = 3
    train_cpu_epochs: int = 2
    train_batch: int = 64
    train_max_cells: int = 16
    train_workers: int = 6
    mil_epochs: int | None = None
    """None: bench_mil.py's own schedule (10 epochs)."""


QUICK = Sizes(fields=12, cpu_cache_fields=6, seg_distinct=4, seg_copies=2, seg_workers=2, seg_batch=4,
              seg_network_batch=2, seg_cpu_limit=4, stream_fields=4, train_epochs=1, train_cpu_epochs=1, train_batch=4,
              train_max_cells=8, train_workers=0, mil_epochs=1)
"""--quick: a check of the check (minutes on a CPU), no numbers to keep."""


class Check:
    """One run of the check: the clock, the log, the results, and how stages run."""

    def __init__(self, args: argparse.Namespace, log: TextIO) -> None:
        self.args = args
        self.log = log
        self.started = float(os.environ.get("GPU_CHECK_STARTED", time.time()))  # the shell's start: installs count
        self.sizes = QUICK if args.quick else Sizes()
        self.results: dict = {"check": "hpa-cells GPU check (issue 14)", "date": datetime.date.today().isoformat(),
                              "quick": args.quick, "budget_seconds": args.budget, "sizes": asdict(self.sizes),
                              "stages": {}}
        self.device = args.device

    def remaining(self) -> float:
        return self.args.budget - (time.time() - self.started)

    def say(self, text: str) -> None:
        line = f"[{time.time() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def record(self, name: str, **entry: object) -> dict:
        self.results["stages"][name] = entry
        return entry

    def cap(self, name: str) -> float:
        return min(CAPS.get(name, 60) * (3 if self.args.quick else 1), self.remaining() - RESERVE)

    def start(self, name: str, command: list[str], env: dict | None = None) -> Stage | None:
        """Start one stage's command (its output to WORK/NAME.log); None (recorded as skipped) when its minimum
        time is no longer left."""
        cap = self.cap(name)
        if cap < MINIMUM.get(name, 20):
            self.record(name, status="skipped", reason=f"not enough time left ({self.remaining():.0f} s of the "
                                                       f"{self.args.budget:.0f} s budget)")
            return None
        self.say(f"stage {name} (cap {cap:.0f} s): {' '.join(command)}")
        log_path = self.args.work / f"{name}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        return Stage(name, command, process, time.time(), cap, log_path)

    def wait(self, stage: Stage, result_json: Path | None = None) -> dict:
        """Wait for a started stage within its cap (killing it, and every process it started, at the cap); append its
        output to check.log; record status, seconds and its result file."""
        try:
            code: int | None = stage.process.wait(timeout=max(1.0, stage.cap - (time.time() - stage.started)))
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(stage.process.pid, signal.SIGKILL)
            stage.process.wait()
            code, status = None, "timeout"
        seconds = round(time.time() - stage.started, 1)
        self.log.write(f"----- {stage.name} ({status}, {seconds} s) -----\n{stage.log_path.read_text(errors='replace')}")
        self.log.flush()
        entry: dict = {"status": status, "seconds": seconds, "cap_seconds": round(stage.cap), "exit_code": code,
                       "command": " ".join(stage.command).replace(str(REPO) + "/", "")}
        if result_json is not None:  # a failing stage may still say why in its result file
            try:
                entry["result"] = json.loads(result_json.read_text())
            except (OSError, ValueError) as err:
                if status == "ok":
                    entry.update(status="failed", reason=f"no result file {result_json.name}: {err}")
        if status == "timeout":
            entry["reason"] = f"stopped at its cap of {stage.cap:.0f} s"
        self.say(f"stage {stage.name}: {entry['status']} in {seconds} s")
        return self.record(stage.name, **entry)

    def run(self, name: str, command: list[str], result_json: Path | None = None, env: dict | None = None) -> dict:
        """Start one stage and wait for it."""
        stage = self.start(name, command, env)
        return self.results["stages"][name] if stage is None else self.wait(stage, result_json)


@dataclass
class Stage:
    """A stage's running command."""

    name: str
    command: list[str]
    process: subprocess.Popen
    started: float
    cap: float
    log_path: Path


def environment(check: Check) -> bool:
    """nvidia-smi into the output folder, the device and package versions into the results; False when the
    check cannot go on (no GPU for a cuda or auto run)."""
    smi = []
    for command in (["nvidia-smi"], ["nvidia-smi", "-L"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            smi.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        except (OSError, subprocess.TimeoutExpired) as err:
            smi.append(f"$ {' '.join(command)}\n{type(err).__name__}: {err}\n")
    (check.args.out / "nvidia-smi.txt").write_text("\n".join(smi))
    probe = check.args.work / "environment.json"
    entry = check.run("environment", [sys.executable, str(HERE / "environment_probe.py"), "--device",
                                      check.args.device, "--json", str(probe)], probe)
    if entry["status"] != "ok":
        return False
    check.device = entry["result"]["device"]["device"]
    return True


def python_command(check: Check, name: str, script: str, options: list[str]) -> tuple[list[str], Path]:
    """The command of a stage script of this folder, writing its results to WORK/NAME.json; (command, that path)."""
    result = check.args.work / f"{name}.json"
    return [sys.executable, str(HERE / script), *options, "--json", str(result)], result


def pytest_stage(check: Check) -> dict:
    tests = [str(REPO / "tests" / "test_gpu_stages.py")]
    ddp_tests = REPO / "tests" / "test_training_gpu_path.py"
    if ddp_tests.is_file() and not check.args.quick:
        tests.append(str(ddp_tests))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "--rungpu", *tests]
    if check.args.quick:
        command += ["-k", "prediction"]
    entry = check.run("pytest", command, env={"HPA_GPU_TEST_DEVICE": check.device})
    if entry.get("status") != "skipped":
        entry["result"] = pytest_counts(check.args.work / "pytest.log")
    return entry


def pytest_counts(log_path: Path) -> dict:
    """The counts of pytest's summary line ("3 passed, 1 failed in 40.1s") in its log."""
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    lines = [line for line in text.splitlines()
             if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)", line) and re.search(r" in [\d.]+s", line)]
    counts: dict = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    if lines:
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1]):
            counts["errors" if word.startswith("error") else word] = int(number)
        counts["line"] = lines[-1].strip("= ")
    return counts


def start_data(check: Check) -> Stage | None:
    s = check.sizes
    command, _ = python_command(check, "data", "prepare_data.py", [
        "--work", str(check.args.work), "--fields", str(s.fields), "--cpu-cache-fields", str(s.cpu_cache_fields),
        "--seg-distinct", str(s.seg_distinct), "--seg-copies", str(s.seg_copies)])
    return check.start("data", command)


def segmentation_stage(check: Check, device: str, name: str) -> dict:
    s = check.sizes
    options = ["--images", str(check.args.work / "segmentation_fields"), "--out", str(check.args.work / "seg"),
               "--device", device, "--workers", str(s.seg_workers), "--batch-size", str(s.seg_batch),
               "--network-batch-size", str(s.seg_network_batch)]
    if name.endswith("_cpu"):
        options += ["--limit", str(s.seg_cpu_limit), "--stream-fields", "0"]
    else:
        options += ["--stream-fields", str(s.stream_fields)]
    return check.run(name, *python_command(check, name, "bench_gpu_segmentation.py", options))


def training_stage(check: Check, device: str, name: str) -> dict:
    s = check.sizes
    cpu = name.endswith("_cpu")
    cache = check.args.work / ("cells_truth_small.h5" if cpu else "bench_mil/cells_truth.h5")
    return check.run(name, *python_command(check, name, "bench_gpu_training.py", [
        "--cache", str(cache), "--out", str(check.args.work / "train"), "--device", device,
        "--epochs", str(s.train_cpu_epochs if cpu else s.train_epochs), "--batch-size", str(s.train_batch),
        "--max-cells", str(s.train_max_cells), "--workers", str(min(2, s.train_workers) if cpu else s.train_workers)]))


def prediction_stage(check: Check, device: str, name: str) -> dict:
    cache = check.args.work / ("cells_truth_small.h5" if name.endswith("_cpu") else "bench_mil/cells_truth.h5")
    return check.run(name, *python_command(check, name, "bench_gpu_prediction.py",
                                           ["--cache", str(cache), "--device", device]))


def mil800_stage(check: Check) -> dict:
    s = check.sizes
    result = check.args.work / "mil800.json"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_mil.py"), "--out", str(check.args.work / "bench_mil"),
               "--rows", "attention", "--device", check.device, "--images", str(s.fields), "--threads", "4",
               "--workers", str(s.train_workers), "--results", str(result)]
    if s.mil_epochs is not None:
        command += ["--epochs", str(s.mil_epochs)]
    return check.run("mil800", command, result)


def wanted(args: argparse.Namespace) -> list[str]:
    """The stages to run, in order: --only (plus what they need: environment, data) minus --skip."""
    chosen = set(args.only) if args.only else set(STAGES)
    if chosen & NEEDS_DATA:
        chosen.add("data")
    chosen.add("environment")
    return [name for name in STAGES if name in chosen and name not in (args.skip or [])]


def run_stages(check: Check) -> None:
    """Every wanted stage in order, the data stage in the background while pytest runs; when the data stage did not
    finish, the stages that need it are skipped."""
    stages = wanted(check.args)
    if "environment" in stages and not environment(check):
        return
    data = start_data(check) if "data" in stages else None
    if "pytest" in stages:
        pytest_stage(check)
    if data is not None:
        check.wait(data, check.args.work / "data.json")
    runners = {"segmentation": lambda: segmentation_stage(check, check.device, "segmentation"),
               "segmentation_cpu": lambda: segmentation_stage(check, "cpu", "segmentation_cpu"),
               "training": lambda: training_stage(check, check.device, "training"),
               "training_cpu": lambda: training_stage(check, "cpu", "training_cpu"),
               "prediction": lambda: prediction_stage(check, check.device, "prediction"),
               "prediction_cpu": lambda: prediction_stage(check, "cpu", "prediction_cpu"),
               "mil800": lambda: mil800_stage(check)}
    data_ok = check.results["stages"].get("data", {}).get("status") == "ok"
    for name in [n for n in stages if n in runners]:
        if not data_ok:
            check.record(name, status="skipped", reason="the data stage did not finish")
            continue
        runners[name]()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the output folder (check.log, results.json, summary.md, "
                                                           "nvidia-smi.txt)")
    p.add_argument("--work", type=Path, help="scratch folder for data, caches and models (default: /tmp/gpu_check)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a check of the check, not numbers")
    p.add_argument("--device", default="auto", help="the device checked against the CPU (default: %(default)s)")
    p.add_argument("--budget", type=float, help="seconds for the whole check, from the shell's start "
                                                "(default: 470; --quick: 1800)")
    p.add_argument("--only", nargs="+", choices=STAGES, metavar="STAGE", help=f"run only these: {', '.join(STAGES)}")
    p.add_argument("--skip", nargs="+", choices=STAGES, metavar="STAGE", help="run all stages but these")
    args = p.parse_args(argv)
    args.budget = args.budget or (1800.0 if args.quick else 470.0)
    args.work = args.work or Path("/tmp/gpu_check")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    with (args.out / "check.log").open("a") as log:
        check = Check(args, log)
        check.say(f"GPU check, {'quick' if args.quick else 'full'}, budget {args.budget:.0f} s, out {args.out}")
        run_stages(check)
        check.results["elapsed_seconds"] = round(time.time() - check.started, 1)
        summary = write_report(check.results, args.out)
        check.say(f"done in {check.results['elapsed_seconds']} s; results in {args.out}")
    print("\n" + summary)
    stages = check.results["stages"]
    if stages.get("environment", {}).get("status") != "ok":
        return 2
    failed = [n for n, e in stages.items() if e["status"] in ("failed", "timeout")]
    pytest = stages.get("pytest", {}).get("result", {})
    return 1 if failed or pytest.get("failed") or pytest.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
