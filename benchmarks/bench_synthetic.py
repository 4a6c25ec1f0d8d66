"""Speed of the synthetic HPA generator: images/s for generation alone, for writing alone, and for both.

Single process. Generation alone is the baseline; the other rows are reported relative to it in the
same run. Wall-clock rates depend on what else the machine runs, so the CPU time the process used per
generated image is reported too (with `--cv2-threads 1` it equals single-core time). Prints a markdown
table row (machine, date, command, numbers) for BENCHMARKS.md.

Example: python benchmarks/bench_synthetic.py --n 40 --size 512
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="images per measurement")
    parser.add_argument("--size", type=int, default=512, help="image side in px")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--warmup", type=int, default=2, help="images generated first and not timed")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed passes; the fastest is reported (others' load is noise)"
    )
    parser.add_argument(
        "--cv2-threads", type=int, default=None, help="OpenCV threads (default: OpenCV's choice)"
    )
    return parser


def machine_description() -> str:
    """CPU model, logical cores, Python and library versions, current load."""
    import cv2
    import numpy as np

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} logical cores, load {load:.1f}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, OpenCV {cv2.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import cv2

    from hpa_cells.synthetic import SyntheticConfig, SyntheticGenerator, write_dataset, write_sample_files

    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    config = SyntheticConfig(seed=args.seed, size=args.size)
    generator = SyntheticGenerator(config)
    for index in range(args.warmup):
        generator.generate(10_000 + index)

    cpu_seconds: dict[str, float] = {}

    def best_of(name: str, run: Callable[[], None]) -> float:
        times, cpu = [], []
        for _ in range(args.repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            run()
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        cpu_seconds[name] = min(cpu)
        return min(times)

    samples = []

    def generate_only() -> None:
        samples.clear()
        samples.extend(generator.generate(index) for index in range(args.n))

    generation = best_of("gen", generate_only)
    with tempfile.TemporaryDirectory(prefix="bench_synthetic_") as tmp:
        counter = iter(range(1_000_000))

        def write_only() -> None:
            folder = Path(tmp) / f"write_{next(counter)}"
            folder.mkdir()
            for sample in samples:
                write_sample_files(folder, sample)

        def generate_and_write() -> None:
            write_dataset(Path(tmp) / f"dataset_{next(counter)}", args.n, config)

        def generate_and_write_2_processes() -> None:
            write_dataset(Path(tmp) / f"dataset_{next(counter)}", args.n, config, workers=2)

        writing = best_of("write", write_only)
        both = best_of("both", generate_and_write)
        both_2 = best_of("both2", generate_and_write_2_processes)

    rate = {
        name: args.n / seconds
        for name, seconds in (("gen", generation), ("write", writing), ("both", both), ("both2", both_2))
    }
    cells = sum(len(sample.cells) for sample in samples) / len(samples)
    command = "python benchmarks/bench_synthetic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"synthetic generator, {args.size} px, {args.n} images x {args.repeats} passes (best), {cells:.1f} cells/image"
    )
    cpu_ms = 1000 * cpu_seconds["gen"] / args.n
    print(
        f"  generation only:      {rate['gen']:6.2f} images/s  ({1000 / rate['gen']:.0f} ms/image, "
        f"{cpu_ms:.0f} ms CPU/image = {1000 / cpu_ms:.1f} images per CPU-second)  baseline"
    )
    print(f"  PNG writing only:     {rate['write']:6.2f} images/s  ({1000 / rate['write']:.0f} ms/image)")
    print(
        f"  generation + writing: {rate['both']:6.2f} images/s  ({rate['both'] / rate['gen']:.2f}x baseline)"
    )
    print(
        f"  generation + writing, 2 processes: {rate['both2']:6.2f} images/s  "
        f"({rate['both2'] / rate['gen']:.2f}x baseline)"
    )
    print()
    print(
        "| date | machine | command | size | cells/image | generation img/s | generation CPU ms/img "
        "| writing img/s | generation + writing img/s | generation + writing, 2 processes img/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {datetime.date.today().isoformat()} | {machine_description()} | `{command.strip()}` | {args.size} | "
        f"{cells:.1f} | {rate['gen']:.2f} | {cpu_ms:.0f} | {rate['write']:.2f} | "
        f"{rate['both']:.2f} ({rate['both'] / rate['gen']:.2f}x) | {rate['both2']:.2f} ({rate['both2'] / rate['gen']:.2f}x) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
