"""The built-in procedural world: scene graphs, text, layout solver, renderer, detector and oracle."""

from .vocab import COLOURS, RELATIONS, REGIONS, SHAPES, SIZES
from .scene import Obj, Relation, Scene

__all__ = ["COLOURS", "RELATIONS", "REGIONS", "SHAPES", "SIZES", "Obj", "Relation", "Scene"]
