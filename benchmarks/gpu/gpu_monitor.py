"""GPU utilisation and memory sampled in a background thread while a benchmark runs (NVML through pynvml, which
the GPU machine has as nvidia-ml-py; else `nvidia-smi`; on the CPU, nothing).

    with GpuMonitor("cuda") as monitor:
        ...
    monitor.summary()  # {"gpu_util_mean": 63.2, "gpu_util_max": 100, "gpu_memory_max_mib": 5120, ...}

Utilisation is NVML's: the share of the last sample period in which a kernel was running (not how full the GPU
was), so it says whether the GPU was kept busy, not how efficiently.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time


class GpuMonitor:
    """Samples utilisation (%) and used memory (MiB) of GPU `index` every `interval` s while inside `with`."""

    def __init__(self, device: str, interval: float = 0.2) -> None:
        self.device = str(device)
        self.index = int(self.device.split(":")[1]) if ":" in self.device else 0
        self.interval = interval
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader() if self.device.startswith("cuda") else None

    def _reader(self):
        """A function returning (utilisation %, used MiB) now, from pynvml or nvidia-smi; None when neither works."""
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "pynvml"

            def from_nvml() -> tuple[float, float]:
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                return float(rates.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

            return from_nvml
        except Exception:  # noqa: BLE001 - no NVML here: try nvidia-smi
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        self.source = "nvidia-smi"

        def from_smi() -> tuple[float, float]:
            line = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu,memory.used",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                  timeout=5).stdout.strip().splitlines()[0]
            util, used = (float(x) for x in line.split(","))
            return util, used

        return from_smi

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                util, used = self._read()
            except Exception:  # noqa: BLE001 - a failed sample is skipped, the benchmark goes on
                continue
            self.utilisation.append(util)
            self.memory_mib.append(used)

    def __enter__(self) -> GpuMonitor:
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
            self._thread.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict:
        """Mean, median and max utilisation, max memory and the sample count (None without samples)."""
        if not self.utilisation:
            return {"gpu_util_source": self.source, "gpu_util_samples": 0, "gpu_util_mean": None,
                    "gpu_util_median": None, "gpu_util_max": None, "gpu_memory_max_mib": None}
        return {"gpu_util_source": self.source, "gpu_util_samples": len(self.utilisation),
                "gpu_util_mean": round(statistics.fmean(self.utilisation), 1),
                "gpu_util_median": round(statistics.median(self.utilisation), 1),
                "gpu_util_max": round(max(self.utilisation), 1),
                "gpu_memory_max_mib": round(max(self.memory_mib))}
