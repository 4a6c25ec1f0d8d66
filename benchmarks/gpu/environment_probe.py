"""What the GPU check runs on: the resolved device, torch and CUDA, the GPU, and the versions (and places) of the
packages the project needs; written as JSON. Exit status 2 when the device is cuda or auto and torch sees no GPU
(the JSON says so).

    python benchmarks/gpu/environment_probe.py --device auto --json OUT.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "cellpose": "cellpose.dynamics",
            "segmentation-models-pytorch": "segmentation_models_pytorch",
            "iterative-stratification": "iterstrat", "timm": "timm", "h5py": "h5py",
            "scikit-image": "skimage", "opencv-python-headless": "cv2", "numba": "numba", "scipy": "scipy",
            "pandas": "pandas", "fastremap": "fastremap", "fill-voids": "fill_voids", "dask": "dask",
            "distributed": "distributed"}
"""Distribution name -> module imported to check it loads (cellpose.dynamics: its numba functions compile at import,
which is where a numpy the pin does not allow would fail)."""


def package_report() -> dict:
    """Version and location of each package, or the error importing it."""
    report = {}
    for name, module in PACKAGES.items():
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        try:
            where = str(Path(importlib.import_module(module).__file__).parent.parent)
            report[name] = {"version": version, "from": where}
        except Exception as err:  # noqa: BLE001 - any import failure is what this probe reports
            report[name] = {"version": version, "error": f"{type(err).__name__}: {err}"}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    import torch

    from hpa_cells.devices import DeviceError, describe_device, resolve_device

    result: dict = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "torch_cuda_available": torch.cuda.is_available(),
                    "torch_cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                    "pythonpath": os.environ.get("PYTHONPATH", ""), "packages": package_report()}
    code = 0
    try:
        device = resolve_device(args.device)
        if args.device == "auto" and device == "cpu":
            raise DeviceError("--device auto: torch sees no CUDA GPU on this machine; nothing to check (give "
                              "--device cpu to run the check's plumbing on the CPU)")
        result["device"] = describe_device(device)
    except DeviceError as err:
        result["error"] = str(err)
        code = 2
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
