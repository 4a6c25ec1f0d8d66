"""The 28 localization classes of the 2018 Kaggle HPA scheme, and the 2021 scheme mapped onto them; a class
from user text (`class_id_of`) and the fixed colour and short name each class is drawn with (`CLASS_COLOURS`,
`SHORT_NAMES`, used by the maps and the report).

Class ids are the 2018 ids 0-27 everywhere inside the project; other schemes are mapped at the edge
with the tables here (see ../shared/data/README.md for the source of the 2021 table).
"""

from __future__ import annotations

from typing import Literal

NUM_CLASSES = 28

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",  # 0
    "Nuclear membrane",  # 1
    "Nucleoli",  # 2
    "Nucleoli fibrillar center",  # 3
    "Nuclear speckles",  # 4
    "Nuclear bodies",  # 5
    "Endoplasmic reticulum",  # 6
    "Golgi apparatus",  # 7
    "Peroxisomes",  # 8
    "Endosomes",  # 9
    "Lysosomes",  # 10
    "Intermediate filaments",  # 11
    "Actin filaments",  # 12
    "Focal adhesion sites",  # 13
    "Microtubules",  # 14
    "Microtubule ends",  # 15
    "Cytokinetic bridge",  # 16
    "Mitotic spindle",  # 17
    "Microtubule organizing center",  # 18
    "Centrosome",  # 19
    "Lipid droplets",  # 20
    "Plasma membrane",  # 21
    "Cell junctions",  # 22
    "Mitochondria",  # 23
    "Aggresome",  # 24
    "Cytosol",  # 25
    "Cytoplasmic bodies",  # 26
    "Rods & rings",  # 27
)
assert len(CLASS_NAMES) == NUM_CLASSES

NUM_CLASSES_2021 = 19

CLASS_NAMES_2021: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
assert len(CLASS_NAMES_2021) == NUM_CLASSES_2021

NEGATIVE_2021 = 18

# Every 2018 class that a 2021 class covers ("all" mapping). Negative covers none.
CLASSES_2018_OF_2021: dict[int, tuple[int, ...]] = {
    0: (0,),
    1: (1,),
    2: (2,),
    3: (3,),
    4: (4,),
    5: (5,),
    6: (6,),
    7: (7,),
    8: (11,),
    9: (12, 13),  # Actin filaments incl. focal adhesion sites
    10: (14,),
    11: (17,),
    12: (18, 19),  # Centrosome incl. MTOC
    13: (21, 22),  # Plasma membrane incl. cell junctions
    14: (23,),
    15: (24,),
    16: (25,),
    17: (8, 9, 10, 20, 26),  # Vesicles: peroxisomes, endosomes, lysosomes, lipid droplets, cytoplasmic bodies
    18: (),
}

# One representative 2018 class per 2021 class ("primary" mapping): the class a 2021 name is built on
# ("Actin filaments (incl. focal adhesion sites)" -> Actin filaments); for the vesicle class, the most
# frequent of its five 2018 classes in the 2018 training labels (Cytoplasmic bodies, 328 images).
PRIMARY_2018_OF_2021: dict[int, tuple[int, ...]] = {
    k: (v[:1] if k != 17 else (26,)) for k, v in CLASSES_2018_OF_2021.items()
}

# 2018 -> 2021 is many-to-one; 15 Microtubule ends, 16 Cytokinetic bridge and 27 Rods & rings have no
# 2021 counterpart and map to None.
CLASS_2021_OF_2018: dict[int, int | None] = {c: None for c in range(NUM_CLASSES)}
for _c21, _c18s in CLASSES_2018_OF_2021.items():
    for _c18 in _c18s:
        CLASS_2021_OF_2018[_c18] = _c21

AmbiguousMapping = Literal["all", "primary"]


def map_2021_to_2018(class_2021: int, ambiguous: AmbiguousMapping = "all") -> tuple[int, ...]:
    """The 2018 class ids that one 2021 class id stands for.

    `ambiguous="all"` (default) maps a 2021 class that merges several 2018 classes to all of them
    (2021 "Vesicles" -> 8, 9, 10, 20, 26): the true 2018 label is one of those, so nothing true is lost.
    `ambiguous="primary"` maps it to one representative class (see PRIMARY_2018_OF_2021).
    """
    if class_2021 not in CLASSES_2018_OF_2021:
        raise ValueError(f"unknown 2021 class id {class_2021}; expected 0-{NUM_CLASSES_2021 - 1}")
    if ambiguous == "all":
        return CLASSES_2018_OF_2021[class_2021]
    if ambiguous == "primary":
        return PRIMARY_2018_OF_2021[class_2021]
    raise ValueError(f"ambiguous must be 'all' or 'primary', got {ambiguous!r}")


def class_name(class_id: int) -> str:
    """The 2018 name of a class id, with a clear error for ids outside 0-27."""
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"unknown class id {class_id}; expected 0-{NUM_CLASSES - 1}")
    return CLASS_NAMES[class_id]


def class_id_of(text: str) -> int:
    """A class given as its id ("25") or its name, case-insensitive ("cytosol"); ValueError lists the choices."""
    stripped = text.strip()
    if stripped.isdigit() and 0 <= int(stripped) < NUM_CLASSES:
        return int(stripped)
    lowered = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
    if stripped.lower() in lowered:
        return lowered[stripped.lower()]
    raise ValueError(f"unknown class {text!r}: give an id 0-{NUM_CLASSES - 1} or one of {', '.join(CLASS_NAMES)}")


CLASS_COLOURS: tuple[str, ...] = (
    "#ff1eb4",  # 0 Nucleoplasm
    "#f0a5f0",  # 1 Nuclear membrane
    "#0069e1",  # 2 Nucleoli
    "#d2f096",  # 3 Nucleoli fibrillar center
    "#00c3ff",  # 4 Nuclear speckles
    "#d24b5a",  # 5 Nuclear bodies
    "#69783c",  # 6 Endoplasmic reticulum
    "#3c8700",  # 7 Golgi apparatus
    "#ffb400",  # 8 Peroxisomes
    "#b4c3ff",  # 9 Endosomes
    "#c34b1e",  # 10 Lysosomes
    "#e100ff",  # 11 Intermediate filaments
    "#69f0f0",  # 12 Actin filaments
    "#6969a5",  # 13 Focal adhesion sites
    "#009678",  # 14 Microtubules
    "#a5694b",  # 15 Microtubule ends
    "#b4b40f",  # 16 Cytokinetic bridge
    "#a5f00f",  # 17 Mitotic spindle
    "#a54bc3",  # 18 Microtubule organizing center
    "#ffb496",  # 19 Centrosome
    "#ffd278",  # 20 Lipid droplets
    "#b47800",  # 21 Plasma membrane
    "#78ff78",  # 22 Cell junctions
    "#00ffc3",  # 23 Mitochondria
    "#b44b87",  # 24 Aggresome
    "#ff7800",  # 25 Cytosol
    "#784bff",  # 26 Cytoplasmic bodies
    "#ff0078",  # 27 Rods & rings
)
"""Fixed colour of each class (by 2018 id) in every overview and legend. Chosen by greedy farthest-point
sampling in CIELAB (L 45-92, chroma > 30), kept away from grey (QC) and from the four channel colours; the
most distinct colours go to the classes most frequent in the 2018 training labels."""

SHORT_NAMES: tuple[str, ...] = (
    "Nucleopl.", "Nuc.membr.", "Nucleoli", "Nucl.FC", "Speckles", "Nuc.bodies", "ER", "Golgi",
    "Peroxis.", "Endosomes", "Lysosomes", "Int.fil.", "Actin", "Focal adh.", "Microtub.", "MT ends",
    "Cytok.br.", "Spindle", "MTOC", "Centrosome", "Lipid dr.", "Plasma m.", "Junctions", "Mitoch.",
    "Aggresome", "Cytosol", "Cyt.bodies", "Rods&rings",
)
"""At most 10 characters per class, for the labels drawn on cells."""
