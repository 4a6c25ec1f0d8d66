"""Run every benchmark script and keep each one's markdown output in benchmarks/results/{name}.md.

  python benchmarks/run_all.py [name ...]
      (names: synthetic, cell_cache, segmentation, segment_layouts, dask, ddp; default all; the longer ones with
      their own folders, bench_mil.py, bench_real.py, bench_real_mosaics.py and benchmarks/gpu/, are run alone)

BENCHMARKS.md quotes these outputs with the machine, date and command.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("synthetic", "cell_cache", "segmentation", "segment_layouts", "dask", "ddp")


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    failed = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        print(f"== {script.name}", flush=True)
        started = time.time()
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        print(run.stdout)
        if run.returncode:
            print(run.stderr[-3000:], file=sys.stderr)
            failed.append(name)
            continue
        (results / f"{name}.md").write_text(run.stdout)
        print(f"   ({time.time() - started:.0f} s, kept in {results / (name + '.md')})")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
