"""Appearance settings of the synthetic generator and the named presets built from them (issue 13).

`Appearance` holds factors and offsets applied on top of the generator's own random draws: the neutral
values (`Appearance()`, preset "default") leave every image byte-identical to the generator without them,
because the settings only rescale drawn values and never add or remove random draws. A preset is a named
`Appearance` tuned so that the generator's field statistics (`hpa_cells.synthetic.realism`) come closer to
a real layout's; `PRESETS` lists them and `benchmarks/synthetic_realism.py` measures them.

Where each setting acts: `cell_scale`, `cell_count_scale`, `coverage_scale` and `nucleus_scale` change the
cell line (`apply_to_line`), the rest the image formation (`apply_to_acquisition`, and the green exposure
and haze in `dataset`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType

import numpy as np

from hpa_cells.synthetic.cell_lines import CellLine
from hpa_cells.synthetic.microscope import Acquisition

Four = tuple[float, float, float, float]


@dataclass(frozen=True)
class Appearance:
    """Settings on top of the generator's draws; the defaults are neutral (images unchanged).

    Per-channel tuples are in the order red, green, blue, yellow.
    """

    cell_scale: float = 1.0
    """Factor on every cell line's typical cell radius (areas scale with its square)."""
    cell_count_scale: float = 1.0
    """Factor on the range of seeds per field."""
    coverage_scale: float = 1.0
    """Factor on the share of the field open to seeding (capped at 1)."""
    nucleus_scale: float = 1.0
    """Factor on the nucleus radius / cell radius ratio."""
    gain_scale: Four = (1.0, 1.0, 1.0, 1.0)
    """Factor on each channel's gain (the green one scales the protein signal and haze)."""
    offset_add: Four = (0.0, 0.0, 0.0, 0.0)
    """Grey levels added to each channel's background offset."""
    haze_scale: Four = (1.0, 1.0, 1.0, 1.0)
    """Factor on each channel's out-of-focus light."""
    noise_scale: float = 1.0
    """Factor on the read noise and on the shot-noise standard deviation."""
    psf_scale: float = 1.0
    """Factor on the point-spread function's width (optical blur)."""
    protein_haze_scale: float = 1.0
    """Factor on the non-specific green inside every cell (`dataset.HAZE_RANGE`)."""
    protein_haze_nuclear: float = 0.0
    """Extra non-specific green in nuclei, as a multiple of the cell's haze (0: the haze follows the ER a little
    and is otherwise even)."""
    stain_gamma: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Exponent on the red, blue and yellow signal canvases (relative units, about 1 for the brightest typical
    structure) before imaging: above 1 dims the diffuse fill more than the bright structures (more contrast)."""

    def __post_init__(self) -> None:
        positive = (
            "cell_scale",
            "cell_count_scale",
            "coverage_scale",
            "nucleus_scale",
            "noise_scale",
            "psf_scale",
            "protein_haze_scale",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"appearance {name} must be > 0, got {getattr(self, name)}")
        if self.protein_haze_nuclear < 0:
            raise ValueError(f"appearance protein_haze_nuclear must be >= 0, got {self.protein_haze_nuclear}")
        if len(self.stain_gamma) != 3 or any(not g > 0 for g in self.stain_gamma):
            raise ValueError(
                f"appearance stain_gamma needs 3 values > 0 (red, blue, yellow), got {self.stain_gamma!r}"
            )
        for name in ("gain_scale", "offset_add", "haze_scale"):
            values = getattr(self, name)
            if len(values) != 4:
                raise ValueError(
                    f"appearance {name} needs 4 values (red, green, blue, yellow), got {values!r}"
                )
        if any(v <= 0 for v in self.gain_scale) or any(v < 0 for v in self.haze_scale):
            raise ValueError(
                f"appearance gain_scale must be > 0 and haze_scale >= 0, got {self.gain_scale}, {self.haze_scale}"
            )

    @property
    def is_neutral(self) -> bool:
        return self == Appearance()

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        for name in ("gain_scale", "offset_add", "haze_scale", "stain_gamma"):
            values[name] = list(values[name])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Appearance:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown appearance settings {unknown}; known: {sorted(known)}")
        values = dict(values)
        for name in ("gain_scale", "offset_add", "haze_scale", "stain_gamma"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])  # type: ignore[attr-defined]
        return cls(**values)  # type: ignore[arg-type]

    def apply_to_line(self, line: CellLine) -> CellLine:
        """The cell line with this appearance's morphology (the same object when neutral)."""
        if (self.cell_scale, self.cell_count_scale, self.coverage_scale, self.nucleus_scale) == (
            1.0,
            1.0,
            1.0,
            1.0,
        ):
            return line
        low, high = line.cell_count
        return replace(
            line,
            radius=line.radius * self.cell_scale,
            cell_count=(
                max(1, round(low * self.cell_count_scale)),
                max(1, round(high * self.cell_count_scale)),
            ),
            coverage=tuple(min(1.0, c * self.coverage_scale) for c in line.coverage),  # type: ignore[arg-type]
            nucleus_ratio=tuple(r * self.nucleus_scale for r in line.nucleus_ratio),  # type: ignore[arg-type]
        )

    def apply_to_stains(self, red: np.ndarray, blue: np.ndarray, yellow: np.ndarray) -> None:
        """Raise the reference-stain canvases to `stain_gamma` in place (nothing when 1)."""
        for canvas, gamma in zip((red, blue, yellow), self.stain_gamma, strict=True):
            if gamma != 1.0:
                np.power(canvas, np.float32(gamma), out=canvas)

    def apply_to_acquisition(self, acquisition: Acquisition) -> Acquisition:
        """The imaging settings with this appearance's factors (the same object when neutral)."""
        if self.is_neutral:
            return acquisition

        def each(values: Four, change: Four, add: bool = False) -> Four:
            out = [v + c if add else v * c for v, c in zip(values, change, strict=True)]
            return (out[0], out[1], out[2], out[3])

        noise = (self.noise_scale,) * 4
        return replace(
            acquisition,
            psf_sigma=acquisition.psf_sigma * self.psf_scale,
            gain=each(acquisition.gain, self.gain_scale),
            offset=each(acquisition.offset, self.offset_add, add=True),
            read_noise=each(acquisition.read_noise, noise),  # type: ignore[arg-type]
            photons_per_level=each(acquisition.photons_per_level, tuple(1 / n**2 for n in noise)),  # type: ignore[arg-type]
            haze=each(acquisition.haze, self.haze_scale),
        )


PRESETS: MappingProxyType[str, Appearance] = MappingProxyType(
    {
        "default": Appearance(),
        # Tuned on the 58 real 2018 fields (benchmarks/synthetic_realism.py, BENCHMARKS.md): real cells are
        # about 1.6x wider and fewer per field, backgrounds are black (0), the protein channel is brighter with
        # more even non-specific stain, nuclei carry more of it, and microtubules / ER have dimmer diffuse fill
        # under similar or brighter peaks.
        "hpa2018": Appearance(
            cell_scale=1.65,
            cell_count_scale=0.65,
            coverage_scale=1.3,
            nucleus_scale=0.9,
            gain_scale=(1.5, 1.6, 0.8, 1.15),
            offset_add=(-3.0, -2.5, -3.0, -3.0),
            noise_scale=2.0,
            psf_scale=0.7,
            protein_haze_scale=3.0,
            protein_haze_nuclear=1.0,
            stain_gamma=(1.45, 1.0, 1.5),
        ),
    }
)
"""Named appearances: "default" (neutral) and "hpa2018" (real 2018 competition fields, 512 px, 8-bit)."""


def preset_appearance(name: str) -> Appearance:
    """The appearance called `name`; raises ValueError listing the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
