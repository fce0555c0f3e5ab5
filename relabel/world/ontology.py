"""The seed ontology of the embedded world: its object categories, colours, backgrounds, fonts.

The engine may read this ontology (it is written to ``ontology.json``); the ground truth is
written elsewhere. Two categories are rare on purpose (well under 2% of all instances), so
that the engine's handling of the long tail can be measured: a data engine that relabels
with its own model tends to erase rare classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

# named colours objects, plates and captions use; captions say the name, pixels use the RGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (245, 130, 32),
    "yellow": (250, 210, 40),
    "green": (60, 160, 60),
    "dark green": (30, 100, 45),
    "blue": (40, 90, 210),
    "light blue": (120, 180, 235),
    "purple": (130, 60, 170),
    "pink": (240, 130, 180),
    "brown": (130, 80, 40),
    "black": (35, 35, 40),
    "white": (245, 245, 240),
    "grey": (140, 140, 145),
}

BACKGROUND_KINDS = ("grass", "indoor", "water", "sky")
# how often each background is drawn
BACKGROUND_WEIGHTS = {"grass": 0.35, "indoor": 0.25, "water": 0.2, "sky": 0.2}


@dataclass(frozen=True)
class Category:
    """One object category: how it looks, where it appears, how often, what it is mistaken for.

    ``aspect`` is width / height of its pictogram, ``scale`` its size relative to other
    categories of the same size class, ``placement`` where in a scene it stands (``ground``:
    bottom below the horizon, ``air``: anywhere above it, ``water``: in the water, ``any``),
    ``contexts`` its relative frequency per background (absent: never there) and
    ``confused_with`` the category a careless human annotator writes instead.
    """

    id: int
    name: str
    plural: str
    supercategory: str
    colours: tuple[str, ...]
    attributes: tuple[str, ...]
    aspect: float
    scale: float
    placement: str
    contexts: dict[str, float]
    confused_with: str
    rare: bool = False


# the rare categories' weights are small in every context so that they stay under ~1.5% of
# all instances whatever the background mix
_RARE = 0.09

# a table, one category per entry: kept as written rather than one argument per line
# fmt: off
CATEGORIES: tuple[Category, ...] = (
    Category(1, "ball", "balls", "toy", colours=("red", "blue", "yellow", "orange", "purple"),
             attributes=("round", "striped"), aspect=1.0, scale=0.75, placement="ground",
             contexts={"grass": 1.5, "indoor": 1.2, "water": 0.5, "sky": 0.3},
             confused_with="star"),
    Category(2, "tree", "trees", "plant", colours=("green", "dark green", "orange"),
             attributes=("leafy", "round crown", "pine"), aspect=0.75, scale=1.3,
             placement="ground", contexts={"grass": 2.0, "sky": 1.0}, confused_with="flower"),
    Category(3, "flower", "flowers", "plant", colours=("pink", "red", "yellow", "purple", "white"),
             attributes=("six petals", "on a stem"), aspect=0.6, scale=0.8, placement="ground",
             contexts={"grass": 2.0, "indoor": 1.2}, confused_with="tree"),
    Category(4, "house", "houses", "building", colours=("red", "white", "yellow", "light blue"),
             attributes=("pointed roof", "with a door and windows"), aspect=1.0, scale=1.35,
             placement="ground", contexts={"grass": 1.4, "sky": 0.8}, confused_with="car"),
    Category(5, "car", "cars", "vehicle",
             colours=("red", "blue", "white", "black", "yellow", "grey"),
             attributes=("four windows", "two wheels"), aspect=1.8, scale=1.1, placement="ground",
             contexts={"grass": 1.4, "sky": 0.4}, confused_with="boat"),
    Category(6, "boat", "boats", "vehicle", colours=("red", "white", "blue", "yellow"),
             attributes=("sail", "mast"), aspect=1.1, scale=1.1, placement="water",
             contexts={"water": 3.0}, confused_with="car"),
    Category(7, "cat", "cats", "animal", colours=("grey", "orange", "black", "white"),
             attributes=("pointed ears", "long tail"), aspect=1.3, scale=0.9, placement="ground",
             contexts={"grass": 1.0, "indoor": 1.6}, confused_with="dog"),
    Category(8, "dog", "dogs", "animal", colours=("brown", "white", "black", "orange"),
             attributes=("floppy ears", "wagging tail"), aspect=1.3, scale=1.0, placement="ground",
             contexts={"grass": 1.5, "indoor": 1.0}, confused_with="cat"),
    Category(9, "fish", "fish", "animal", colours=("orange", "blue", "yellow", "red"),
             attributes=("fins", "tail"), aspect=1.6, scale=0.8, placement="water",
             contexts={"water": 3.0}, confused_with="bird"),
    Category(10, "bird", "birds", "animal", colours=("blue", "red", "yellow", "black", "white"),
             attributes=("beak", "wings"), aspect=1.2, scale=0.7, placement="air",
             contexts={"sky": 3.0, "grass": 1.0, "water": 1.5}, confused_with="fish"),
    Category(11, "cup", "cups", "kitchenware", colours=("white", "red", "blue", "yellow", "green"),
             attributes=("handle",), aspect=1.0, scale=0.7, placement="ground",
             contexts={"indoor": 2.5}, confused_with="bottle"),
    Category(12, "bottle", "bottles", "kitchenware",
             colours=("green", "brown", "blue", "light blue"), attributes=("label", "cap"),
             aspect=0.45, scale=0.85, placement="ground",
             contexts={"indoor": 2.0, "water": 0.5, "grass": 0.3}, confused_with="cup"),
    Category(13, "star", "stars", "shape", colours=("yellow", "orange", "white", "pink"),
             attributes=("five points",), aspect=1.0, scale=0.7, placement="air",
             contexts={"sky": 1.5, "indoor": 1.0, "water": 0.3}, confused_with="kite"),
    Category(14, "umbrella", "umbrellas", "accessory", colours=("red", "blue", "purple", "black"),
             attributes=("open canopy", "curved handle"), aspect=0.9, scale=1.0,
             placement="ground",
             contexts={"grass": _RARE, "indoor": _RARE, "water": _RARE, "sky": _RARE},
             confused_with="tree", rare=True),
    Category(15, "kite", "kites", "toy", colours=("red", "yellow", "blue", "orange"),
             attributes=("diamond", "tail with bows"), aspect=0.7, scale=0.9, placement="air",
             contexts={"grass": _RARE, "water": _RARE, "sky": _RARE}, confused_with="star",
             rare=True),
)
# fmt: on

CATEGORY_BY_NAME: dict[str, Category] = {category.name: category for category in CATEGORIES}

SIZE_CLASSES = ("small", "medium", "large")
# object height as a fraction of the image's shorter side, per size class (before `scale`)
SIZE_RANGES = {"small": (0.13, 0.2), "medium": (0.22, 0.32), "large": (0.36, 0.5)}
SIZE_WEIGHTS = {"small": 0.35, "medium": 0.4, "large": 0.25}


@dataclass(frozen=True)
class Font:
    """A font the world writes signs in: matplotlib's bundled TTF file and how a caption
    describes its style."""

    name: str
    file: str
    style: str

    @property
    def path(self) -> Path:
        """The TTF file inside matplotlib's data folder (never a system font)."""
        return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / self.file


FONTS: tuple[Font, ...] = (
    Font("DejaVu Sans", "DejaVuSans.ttf", "sans-serif"),
    Font("DejaVu Sans Bold", "DejaVuSans-Bold.ttf", "bold sans-serif"),
    Font("DejaVu Serif", "DejaVuSerif.ttf", "serif"),
    Font("DejaVu Serif Bold", "DejaVuSerif-Bold.ttf", "bold serif"),
    Font("DejaVu Sans Mono", "DejaVuSansMono.ttf", "monospace"),
    Font("STIX General", "STIXGeneral.ttf", "serif"),
    Font("STIX General Bold", "STIXGeneralBol.ttf", "bold serif"),
)
FONT_BY_NAME: dict[str, Font] = {font.name: font for font in FONTS}

# what signs say, per background; short words and short lines, some lower case
SIGN_TEXTS: dict[str, tuple[str, ...]] = {
    "grass": (
        "OPEN",
        "PARK",
        "EXIT",
        "STOP",
        "GARDEN",
        "WELCOME",
        "Main St",
        "No. 12",
        "KEEP OUT",
        "Picnic Area",
        "Fresh Eggs",
        "Zoo 2 km",
        "BUS STOP",
        "Ice Cream",
    ),
    "indoor": (
        "MENU",
        "TEA",
        "COFFEE",
        "HOME",
        "SALE 50%",
        "fresh milk",
        "Kitchen",
        "Room 204",
        "Bakery",
        "Quiet Please",
        "EXIT",
        "Open Daily",
        "Books",
    ),
    "water": (
        "BEACH",
        "NO FISHING",
        "Boat Hire",
        "LAKE VIEW",
        "Harbour",
        "Pier 7",
        "SWIM",
        "Ferry",
        "DANGER",
        "Fish Market",
        "Marina",
    ),
    "sky": (
        "HOTEL",
        "CAFE",
        "ROUTE 66",
        "AIRPORT",
        "Sunset Inn",
        "OPEN",
        "WELCOME",
        "Town Hall",
        "North",
        "Station",
    ),
}

PLATE_STYLES: dict[str, dict[str, Any]] = {
    # style: plate colours to choose from and the text colour on them
    "sign": {"plates": ("white", "yellow"), "ink": "black"},
    "banner": {"plates": ("red", "blue", "green", "purple"), "ink": "white"},
    "label": {"plates": ("white", "light blue", "pink"), "ink": "blue"},
}


def ontology_document(version: str) -> dict[str, Any]:
    """The ontology as the JSON document written to ``world_dir/ontology.json``."""
    return {
        "world_version": version,
        "categories": [
            {
                "id": category.id,
                "name": category.name,
                "plural": category.plural,
                "supercategory": category.supercategory,
                "rare": category.rare,
                "colours": list(category.colours),
                "attributes": list(category.attributes),
                "backgrounds": sorted(category.contexts),
            }
            for category in CATEGORIES
        ],
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "backgrounds": list(BACKGROUND_KINDS),
        "size_classes": list(SIZE_CLASSES),
        "fonts": [{"name": font.name, "style": font.style} for font in FONTS],
    }
