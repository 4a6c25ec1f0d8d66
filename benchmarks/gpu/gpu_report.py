"""The GPU check's report: the ratios of each device number to the CPU run of the same script, the issue's targets,
results.json and summary.md (used by gpu_check.py)."""

from __future__ import annotations

import json
from pathlib import Path

STAGE_TITLES = {
    "environment": "device, torch, CUDA, package versions",
    "data": "synthetic fields and caches (beside pytest)",
    "pytest": "pytest -m gpu --rungpu (cuda vs cpu per stage)",
    "segmentation": "segmentation into the cache, device",
    "segmentation_cpu": "segmentation into the cache, CPU",
    "training": "MIL training, device",
    "training_cpu": "MIL training, CPU",
    "prediction": "prediction, device",
    "prediction_cpu": "prediction, CPU",
    "mil800": "800-field MIL benchmark (attention row), full schedule, device",
}
"""The stages in the order they run (gpu_check.py)."""
MEASURES = {  # name -> (device stage, CPU stage, path of the number in the stage's result, unit, issue's target)
    "segmentation": ("segmentation", "segmentation_cpu", ("job", "fields_per_second"), "fields/s", 50.0),
    "training": ("training", "training_cpu", ("train_cells_per_second",), "cells/s", 5000.0),
    "prediction": ("prediction", "prediction_cpu", ("fields_per_second",), "fields/s", None),
}
REFERENCE_2_CORE_VM = {
    "segmentation": (1.49, "BENCHMARKS.md, whole segment job, default settings, 1 thread"),
    "training": (22.3, "BENCHMARKS.md, MIL benchmark attention row, 1 thread per row"),
    "prediction": (8.6, "BENCHMARKS.md, MIL benchmark attention row inference, 2 threads"),
}
"""The development VM's numbers (2 shared cores), for context: the ratios above use this run's own CPU."""
MIL800_CPU = {"train_seconds": 2277, "train_cells_per_second": 22.3, "image_macro_f1": 0.563, "cell_map_gated": 0.402}
"""BENCHMARKS.md's attention row (2-core VM, 1 thread, 10 epochs)."""


def _number(results: dict, stage: str, path: tuple[str, ...]) -> float | None:
    entry = results["stages"].get(stage, {})
    value = entry.get("result") if entry.get("status") == "ok" else None
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def ratios(results: dict) -> dict:
    """Per measure: the device number, the CPU number, their ratio, the 2-core VM's number, the target and
    whether it is met (None when a number is missing)."""
    out = {}
    for name, (device_stage, cpu_stage, path, unit, target) in MEASURES.items():
        device, cpu = _number(results, device_stage, path), _number(results, cpu_stage, path)
        vm, vm_source = REFERENCE_2_CORE_VM[name]
        out[name] = {"unit": unit, "device": device, "cpu": cpu,
                     "ratio_to_cpu": round(device / cpu, 1) if device and cpu else None,
                     "cpu_is": "this machine's CPU, the same script, fewer fields or one epoch",
                     "two_core_vm": vm, "two_core_vm_source": vm_source,
                     "ratio_to_two_core_vm": round(device / vm, 1) if device else None,
                     "target": target, "target_met": (device >= target) if device is not None and target else None}
    return out


def _cell(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _stage_lines(results: dict) -> list[str]:
    lines = ["| stage | status | seconds | note |", "|---|---|---|---|"]
    for name, title in STAGE_TITLES.items():
        entry = results["stages"].get(name)
        if entry is None:
            continue
        note = entry.get("reason", "")
        if name == "pytest":
            note = entry.get("result", {}).get("line", note)
        if name == "environment" and "result" in entry:
            note = entry["result"].get("error") or json.dumps(entry["result"].get("device", {}))
        lines.append(f"| {title} | {entry['status']} | {_cell(entry.get('seconds'))} | {note} |")
    return lines


def _mil800_lines(results: dict) -> list[str]:
    entry = results["stages"].get("mil800")
    if entry is None:
        return []
    if entry.get("status") != "ok":
        return ["", f"800-field MIL benchmark: {entry.get('status')} ({entry.get('reason', 'see check.log')}); run it "
                "alone in a second call: `benchmarks/gpu/run_gpu_check.sh --only mil800` (data, then 10 epochs)"]
    row = entry["result"]["rows"]["attention"]
    lines = ["", "800-field MIL benchmark, attention row, full schedule (device vs BENCHMARKS.md's 2-core VM):", "",
             "| | train s | epochs | train cells/s | inference images/s | image macro F1 | cell mAP gated |",
             "|---|---|---|---|---|---|---|",
             f"| device | {_cell(row.get('train_seconds'))} | {row.get('epochs')} | "
             f"{_cell(row.get('train_cells_per_second'))} | {_cell(row.get('inference_images_per_second'))} | "
             f"{_cell(row.get('image_macro_f1'), 3)} | {_cell(row.get('cell_map_gated'), 3)} |",
             f"| 2-core VM | {MIL800_CPU['train_seconds']} | 10 | {MIL800_CPU['train_cells_per_second']} | 8.6 | "
             f"{MIL800_CPU['image_macro_f1']} | {MIL800_CPU['cell_map_gated']} |"]
    return lines


def _utilisation_line(results: dict) -> str:
    parts = []
    for stage in ("segmentation", "training", "prediction"):
        result = results["stages"].get(stage, {}).get("result") or {}
        job = result.get("job", result)
        if job.get("gpu_util_mean") is not None:
            parts.append(f"{stage} mean {job['gpu_util_mean']}% (median {job['gpu_util_median']}%, "
                         f"max memory {job['gpu_memory_max_mib']} MiB)")
    return "GPU utilisation: " + ("; ".join(parts) if parts else "not sampled (no GPU, or no NVML / nvidia-smi)")


def summary_markdown(results: dict) -> str:
    lines = [f"# GPU check, {results['date']}{' (--quick: plumbing only, not numbers)' if results['quick'] else ''}",
             "", f"elapsed {results.get('elapsed_seconds')} s of a {results['budget_seconds']:.0f} s budget", ""]
    lines += ["| measure | device | CPU, same script | ratio | 2-core VM | device / VM | target | met |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in results["ratios"].items():
        lines.append(f"| {name} ({r['unit']}) | {_cell(r['device'])} | {_cell(r['cpu'])} | "
                     f"{_cell(r['ratio_to_cpu'])} | {r['two_core_vm']} | {_cell(r['ratio_to_two_core_vm'])} | "
                     f"{_cell(r['target'], 0)} | {_cell(r['target_met'])} |")
    segmenter = ((results["stages"].get("segmentation", {}).get("result") or {}).get("segmenter_only") or {})
    if segmenter:
        lines += ["", f"segmenter alone (in memory, no reading/cropping/writing): {segmenter['fields_per_second']} "
                      f"fields/s: the ceiling of the job above if the cache side kept up"]
    lines += ["", _utilisation_line(results), ""] + _stage_lines(results) + _mil800_lines(results)
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path) -> str:
    """Add the ratios to `results`, write results.json and summary.md into `out`; the summary's text."""
    results["stages"] = {name: results["stages"][name] for name in STAGE_TITLES if name in results["stages"]}
    results["ratios"] = ratios(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = summary_markdown(results)
    (out / "summary.md").write_text(text)
    return text
