"""The end-to-end demo on built-in data: no downloads, a few minutes on a laptop CPU.

  1. generate a small synthetic HPA-like set with per-cell truth      -> demo_output/synthetic/
  2. read it back (the four channels of every sample, the labels)
  3. segment it with the bundled Cellpose models, cache every cell    -> demo_output/cells.h5
  4. train the attention-MIL model briefly, from image labels only    -> demo_output/model/
  5. predict image labels and per-cell localization, draw the maps   -> demo_output/predictions/, maps/, report/
  6. evaluate on the held-out validation images: image macro F1, cell-level mAP against the per-cell truth
  7. when the real HPA fields are present (../shared/data), segment them and draw their maps -> demo_output/real/

Rerunning resumes finished steps (delete demo_output/ to start over).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import ModuleType

from hpa_cells_cli import evaluate, predict, segment, train

REPO = Path(__file__).resolve().parents[1]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "demo_output", help="output folder (default: %(default)s)")
    p.add_argument("--n-images", type=int, default=64, help="synthetic images (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=16, help="MIL training epochs (default: %(default)s)")
    p.add_argument("--segmenter", choices=("cellpose", "watershed"), default="cellpose",
                   help="cellpose = the bundled offline Cellpose models (default: %(default)s)")
    p.add_argument("--real", type=Path, default=REPO.parent / "shared" / "data" / "hpa2021_subset",
                   help="real HPA fields to segment and map when present (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return p


def run_script(command: ModuleType, argv: list[str]) -> None:
    """Run another command's `main(argv)` in this process (one torch start-up for the whole demo)."""
    code = command.main(argv)
    if code:
        name = command.__name__.rpartition(".")[2]
        raise SystemExit(f"scripts/{name}.py failed with exit code {code}")


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the demo with `argv` (default: sys.argv[1:]); 0 when every step finished (a failed step exits)."""
    args = build_parser(prog).parse_args(argv)
    started = time.time()
    from hpa_cells.images import read_sample, scan_folder
    from hpa_cells.labels import read_labels
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

    out = args.out
    synthetic = out / "synthetic"
    t = step(f"1. synthetic data: {args.n_images} fields of 512 px with per-cell truth -> {synthetic}")
    summary = write_dataset(synthetic, args.n_images, SyntheticConfig(seed=args.seed, size=512, balanced=True),
                            show_progress=True)
    print(f"   {summary.n_images} images ({summary.n_written} new), {summary.n_cells} cells, "
          f"{int(summary.cell_counts.sum())} label-carrying cells ({time.time() - t:.1f} s)")

    t = step("2. read it back")
    scan = scan_folder(synthetic)
    labels = read_labels(synthetic / "train.csv")
    first = read_sample(synthetic, scan.ids[0])
    print(f"   {len(scan.complete)} complete samples, {len(scan.incomplete)} incomplete; {len(labels)} labelled; "
          f"sample {scan.ids[0]}: array {first.shape} {first.dtype} (channels red, green, blue, yellow)")

    cache = out / "cells.h5"
    step(f"3. segment ({args.segmenter}) and cache cells -> {cache}")
    run_script(segment, ["--images", str(synthetic), "--labels", str(synthetic / "train.csv"), "--out", str(cache),
                         "--segmenter", args.segmenter, "--diameter-tolerance", "0",  # one pass: the fast path
                         "--cell-assembly", "flows"])  # synthetic cells: flows fit them best (BENCHMARKS.md)
    model = out / "model"
    step(f"4. train attention MIL ({args.epochs} epochs), then self-train it (the default recipe) -> {model}")
    run_script(train, ["--cache", str(cache), "--out", str(model), "--epochs", str(args.epochs),
                       "--seed", str(args.seed)])
    predictions = out / "predictions"
    maps, report = out / "maps", out / "report"
    step(f"5. predict, draw the maps and the report -> {predictions}, {maps}, {report}")
    run_script(predict, ["--model", str(model), "--cache", str(cache), "--out", str(predictions),
                         "--maps", str(maps), "--report", str(report)])
    held_out = write_validation_labels(model, synthetic / "train.csv", out / "validation.csv")
    step(f"6. evaluate on the {held_out} held-out validation images against the per-cell truth")
    run_script(evaluate, ["--pred", str(predictions), "--labels", str(out / "validation.csv"),
                          "--truth", str(synthetic), "--json-out", str(out / "evaluation.json")])
    real_maps = None
    if (args.real / "images").is_dir():
        real = out / "real"
        step(f"7. the real HPA fields in {args.real}: segment ({args.segmenter}), predict, draw -> {real}")
        real_argv = ["--images", str(args.real / "images"), "--out", str(real / "cells.h5"),
                     "--segmenter", args.segmenter]
        if (args.real / "labels.csv").is_file():
            real_argv += ["--labels", str(args.real / "labels.csv")]
        run_script(segment, real_argv)
        real_maps = real / "maps"
        run_script(predict, ["--model", str(model), "--cache", str(real / "cells.h5"),
                             "--out", str(real / "predictions"), "--maps", str(real_maps)])
    else:
        print(f"\n(no real fields at {args.real}: step 7 skipped)")
    print_headline(out, time.time() - started, report, maps, real_maps)
    return 0


def write_validation_labels(model: Path, labels_path: Path, out_path: Path) -> int:
    """The labels of the model's validation images only (never trained on), as a 2018 label file."""
    import json

    from hpa_cells.labels import read_labels, write_labels_2018

    held_out = json.loads((model / "metrics.json").read_text())["val_image_ids"]
    labels = read_labels(labels_path)
    write_labels_2018(out_path, {image_id: labels[image_id] for image_id in held_out})
    return len(held_out)


def print_headline(out: Path, seconds: float, report: Path, maps: Path, real_maps: Path | None) -> None:
    import json

    scores = json.loads((out / "evaluation.json").read_text())
    print(f"\nDemo finished in {seconds:.0f} s. Headline on the {scores['n_images']} held-out synthetic images: "
          f"cell mAP {scores['cell_map']:.3f} with the project's segmentation, {scores['cell_map_true_masks']:.3f} "
          f"with the true masks; image macro F1 {scores['image_macro_f1']:.3f} (optimistic: the per-class "
          "thresholds were fitted on these same images).")
    print(f"  open {report / 'index.html'} in a browser (no server needed): the run summary, the per-class table, "
          "a gallery of every image")
    print(f"  per-image overviews and per-class panels: {maps}/")
    if real_maps is not None:
        print(f"  the real HPA fields: {real_maps}/")
    print(f"  everything else (cache, model folder, predictions, cells.csv/parquet): {out}/ (README.md, 'Outputs')")
