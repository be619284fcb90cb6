"""The world's closed vocabulary: shapes, colours, sizes, canvas regions and relation kinds.

Colours are chosen far apart in RGB (and from white, the background) so that nearest-colour
segmentation stays exact under mild noise and blur.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 15),
    "yellow": (235, 205, 15),
    "green": (35, 160, 55),
    "cyan": (20, 195, 215),
    "blue": (35, 65, 225),
    "purple": (135, 45, 185),
    "pink": (245, 110, 195),
    "black": (25, 25, 25),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Half side of an object's square box, as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.085, "medium": 0.105, "large": 0.135}

# Canvas placements: the canvas is cut into thirds; each region is one cell (column, row).
REGIONS: dict[str, tuple[int, int]] = {
    "center": (1, 1),
    "top-left corner": (0, 0),
    "top-right corner": (2, 0),
    "bottom-left corner": (0, 2),
    "bottom-right corner": (2, 2),
    "top edge": (1, 0),
    "bottom edge": (1, 2),
    "left edge": (0, 1),
    "right edge": (2, 1),
}
OPPOSITE_REGION: dict[str, str] = {
    "center": "top edge",
    "top-left corner": "bottom-right corner",
    "bottom-right corner": "top-left corner",
    "top-right corner": "bottom-left corner",
    "bottom-left corner": "top-right corner",
    "top edge": "bottom edge",
    "bottom edge": "top edge",
    "left edge": "right edge",
    "right edge": "left edge",
}

# Relation kinds and how many objects each takes. "at" also takes a region.
RELATIONS: dict[str, int] = {
    "left_of": 2,
    "right_of": 2,
    "above": 2,
    "below": 2,
    "above_left": 2,
    "above_right": 2,
    "below_left": 2,
    "below_right": 2,
    "in_front_of": 2,
    "behind": 2,
    "bigger": 2,
    "smaller": 2,
    "between": 3,
    "at": 1,
}

# The opposite direction of each binary relation (a "flip" perturbation); "between" has none.
FLIP: dict[str, str] = {
    "left_of": "right_of",
    "right_of": "left_of",
    "above": "below",
    "below": "above",
    "above_left": "below_right",
    "below_right": "above_left",
    "above_right": "below_left",
    "below_left": "above_right",
    "in_front_of": "behind",
    "behind": "in_front_of",
    "bigger": "smaller",
    "smaller": "bigger",
}

SPATIAL_GROUPS: dict[str, str] = {
    "left_of": "horizontal", "right_of": "horizontal", "above": "vertical", "below": "vertical",
    "above_left": "diagonal", "above_right": "diagonal", "below_left": "diagonal",
    "below_right": "diagonal", "in_front_of": "depth", "behind": "depth", "bigger": "size",
    "smaller": "size", "between": "between", "at": "placement",
}
