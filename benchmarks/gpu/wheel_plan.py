"""The wheels a bare GPU machine lacks for this project, downloaded for it (run by prepare_wheels.sh).

    python benchmarks/gpu/wheel_plan.py [--dest .whl] [--limit-mib 64] [--dry-run]

Starts from pyproject.toml's dependencies and follows each downloaded wheel's Requires-Dist (markers evaluated for
CPython 3.12 on Linux x86-64, with the extras asked for), skipping every package that the GPU machine already has
(gpu_machine_packages.txt, from the device tool's KINDS.md), torch, torchvision, triton and the nvidia-* CUDA
libraries (the machine's own CUDA builds must stay), and the few in NOT_CARRIED (not imported by any code path the
project uses). Each package is pinned to the version installed in the Python running this script (this project's
environment), else the newest the requirement allows. Wheels only (manylinux, Python 3.12), one version of each;
stale wheels in the folder are removed. Prints every wheel and its size, the working tree's size, and the total
against the device tool's 64 MiB limit on what travels with a call; exits 1 when over it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
GPU_PACKAGES_FILE = Path(__file__).with_name("gpu_machine_packages.txt")
NEVER_CARRIED_PREFIXES = ("nvidia-",)
NEVER_CARRIED = {"torch", "torchvision", "torchaudio", "triton"}
NOT_CARRIED = {
    "imagecodecs": "tifffile's compression codecs (about 28 MB): cellpose 3.1 lists it, but neither cellpose's modules "
                   "that the project imports (resnet_torch, dynamics, utils, transforms, core, models) nor the project "
                   "import it, and the project reads no compressed TIFF there",
}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "implementation_version": "3.12.3", "platform_python_implementation": "CPython", "os_name": "posix",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "platform_release": "", "platform_version": ""}
"""The GPU machine's interpreter, for evaluating environment markers."""
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in (24, 26, 27, 28, 31, 34, 35, 36, 38, 39))]
"""pip matches manylinux tags exactly: every tag up to the machine's glibc (2.39, Ubuntu 24.04)."""
MIB = 2**20


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    path: Path
    needed_by: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def gpu_machine_packages(path: Path = GPU_PACKAGES_FILE) -> set[str]:
    """Normalised names of the packages the GPU machine has."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(line) for line in lines if line and not line.startswith("#")}


def project_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[Requirement]:
    return [Requirement(text) for text in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether a Requires-Dist line counts on the GPU machine, for a package installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET, "extra": extra}) for extra in extras | {""})


def skip_reason(name: str, present: set[str]) -> str | None:
    if name in NEVER_CARRIED or name.startswith(NEVER_CARRIED_PREFIXES):
        return "the GPU machine's own CUDA build"
    if name in present:
        return "on the GPU machine"
    return NOT_CARRIED.get(name)


def pinned(requirement: Requirement) -> str:
    """`name==version` of this environment's installed version, else the requirement itself (pip picks)."""
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return f"{canonicalize_name(requirement.name)}{requirement.specifier}"
    if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        return f"{canonicalize_name(requirement.name)}{requirement.specifier}"
    return f"{canonicalize_name(requirement.name)}=={version}"


def wheels_in(dest: Path) -> dict[str, Path]:
    """Normalised name -> wheel file in `dest`."""
    found = {}
    for path in dest.glob("*.whl"):
        name, _, _, _ = parse_wheel_filename(path.name)
        found[canonicalize_name(name)] = path
    return found


def download(spec: str, name: str, dest: Path) -> Path:
    """pip download of one wheel for the GPU machine (no dependencies); the file."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    done = subprocess.run([*command, spec], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: no wheel of {spec} for CPython 3.12 manylinux x86-64 could be downloaded:\n"
                         f"{done.stderr.strip()[-2000:]}")
    path = wheels_in(dest).get(name)
    if path is None:
        raise SystemExit(f"error: pip downloaded {spec} but no {name} wheel is in {dest}")
    return path


def requires_dist(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")]


def plan(dest: Path, present: set[str], dry_run: bool = False) -> tuple[list[Wheel], dict[str, str]]:
    """Follow the requirements from pyproject.toml; (wheels to carry, skipped name -> reason)."""
    queue = deque((r, "pyproject.toml") for r in project_requirements())
    chosen: dict[str, Wheel] = {}
    extras_of: dict[str, set[str]] = {}
    skipped: dict[str, str] = {}
    while queue:
        requirement, parent = queue.popleft()
        name = canonicalize_name(requirement.name)
        reason = skip_reason(name, present)
        if reason is not None:
            skipped.setdefault(name, reason)
            continue
        new_extras = set(requirement.extras) - extras_of.get(name, set())
        if name in chosen and not new_extras:
            continue
        extras_of[name] = extras_of.get(name, set()) | set(requirement.extras)
        if name not in chosen:
            spec = pinned(requirement)
            if dry_run:
                print(f"would download {spec} (needed by {parent})")
                continue
            path = download(spec, name, dest)
            chosen[name] = Wheel(name, parse_wheel_filename(path.name)[1].public, path, parent)
        for dependency in requires_dist(chosen[name].path):
            if applies(dependency, extras_of[name]):
                queue.append((dependency, name))
    return sorted(chosen.values(), key=lambda w: w.name), skipped


def travelling_tree_bytes(root: Path = REPO) -> int:
    """Bytes of what a device call sends without `carry`: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    files = {root / name.decode() for name in listed if name}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def ensure_ignored(dest: Path) -> None:
    """The wheel folder must be ignored by git (it travels only through `carry`); say so when it is not."""
    probe = dest / "probe.whl"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=REPO).returncode == 0
    if not ignored:
        exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=REPO,
                                      capture_output=True, text=True, check=True).stdout.strip())
        exclude = exclude if exclude.is_absolute() else REPO / exclude
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as handle:
            handle.write(f"\n/{dest.relative_to(REPO).as_posix()}/\n")
        print(f"added /{dest.relative_to(REPO).as_posix()}/ to {exclude} (git ignores it now)")


def report(wheels: list[Wheel], skipped: dict[str, str], tree: int, limit: int) -> bool:
    """Print the plan and the sizes; True when the total fits under `limit` bytes."""
    print(f"{'wheel':62s} {'MiB':>6s}  needed by")
    for wheel in wheels:
        print(f"{wheel.path.name:62s} {wheel.size / MIB:6.2f}  {wheel.needed_by}")
    for name, reason in sorted(skipped.items()):
        if reason not in ("on the GPU machine", "the GPU machine's own CUDA build"):
            print(f"not carried: {name}: {reason}")
    carried = sum(w.size for w in wheels)
    total = carried + tree
    print(f"\nwheels {carried / MIB:.1f} MiB ({len(wheels)} files) + working tree {tree / MIB:.1f} MiB = "
          f"{total / MIB:.1f} MiB of the {limit / MIB:.0f} MiB a device call carries")
    if total > limit:
        print(f"error: {total / MIB:.1f} MiB is over the {limit / MIB:.0f} MiB limit: drop a wheel (NOT_CARRIED in "
              f"{Path(__file__).name}) or make the working tree smaller", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=REPO / ".whl", help="wheel folder (default: %(default)s)")
    p.add_argument("--limit-mib", type=float, default=64.0, help="what a device call may carry (default: 64)")
    p.add_argument("--dry-run", action="store_true", help="list the first level of downloads, fetch nothing")
    args = p.parse_args(argv)
    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    ensure_ignored(dest)
    wheels, skipped = plan(dest, gpu_machine_packages(), args.dry_run)
    if args.dry_run:
        return 0
    keep = {w.path for w in wheels}
    for path in dest.glob("*.whl"):
        if path not in keep:
            print(f"removing a wheel no longer planned: {path.name}")
            path.unlink()
    return 0 if report(wheels, skipped, travelling_tree_bytes(), int(args.limit_mib * MIB)) else 1


if __name__ == "__main__":
    sys.exit(main())
