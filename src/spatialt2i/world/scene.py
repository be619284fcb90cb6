"""Scene graphs: objects (shape, colour, size, optional placement) and relations between them.

A ``Scene`` is both the spec (what a prompt states) and, once its objects carry ``x``/``y``, the
layout (where the solver put them). Coordinates are fractions of the canvas side, y pointing down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import SpecError
from .vocab import COLOURS, REGIONS, RELATIONS, SHAPES, SIZES


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str = "medium"
    x: float | None = None
    y: float | None = None
    depth: int = 0  # draw order: higher is drawn later (in front)

    @property
    def half(self) -> float:
        return SIZES[self.size]

    @property
    def placed(self) -> bool:
        return self.x is not None and self.y is not None

    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def at(self, x: float, y: float) -> "Obj":
        return Obj(self.shape, self.colour, self.size, float(x), float(y), self.depth)  # (replace() is slow)


@dataclass(frozen=True)
class Relation:
    kind: str
    objects: tuple[int, ...]
    region: str | None = None

    def key(self) -> tuple:
        return (self.kind, self.objects, self.region)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    relations: tuple[Relation, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def placed(self) -> bool:
        return all(o.placed for o in self.objects)

    def with_objects(self, objects: Sequence[Obj]) -> "Scene":
        return Scene(tuple(objects), self.relations)

    def with_relations(self, relations: Sequence[Relation]) -> "Scene":
        return Scene(self.objects, tuple(relations))

    def moved(self, objects: Sequence[Obj]) -> "Scene":
        """``with_objects`` for the solver's hot loop, without re-validating: ``objects`` must be this
        scene's objects with only positions on the canvas and draw orders changed."""
        return _trusted(tuple(objects), self.relations)

    def restated(self, relations: Sequence[Relation]) -> "Scene":
        """``with_relations`` without re-validating, for relations known valid for these objects
        (e.g. a valid relation flipped: same objects, a region for every "at")."""
        return _trusted(self.objects, tuple(relations))

    def to_dict(self) -> dict[str, Any]:
        objs = []
        for o in self.objects:
            d: dict[str, Any] = {"shape": o.shape, "colour": o.colour, "size": o.size}
            if o.placed:
                d.update(x=round(o.x, 5), y=round(o.y, 5), depth=o.depth)
            objs.append(d)
        rels = []
        for r in self.relations:
            d = {"kind": r.kind, "objects": list(r.objects)}
            if r.region is not None:
                d["region"] = r.region
            rels.append(d)
        return {"objects": objs, "relations": rels}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Any, where: str = "scene") -> "Scene":
        if not isinstance(d, dict) or "objects" not in d:
            raise SpecError(f"{where}: expected an object with 'objects' (and 'relations'), got {type(d).__name__}")
        objs = []
        for i, o in enumerate(d["objects"]):
            if not isinstance(o, dict):
                raise SpecError(f"{where}.objects[{i}]: expected an object, got {o!r}")
            unknown = set(o) - {"shape", "colour", "color", "size", "x", "y", "depth"}
            if unknown:
                raise SpecError(f"{where}.objects[{i}]: unknown field(s) {sorted(unknown)}")
            try:
                objs.append(Obj(shape=o["shape"], colour=o.get("colour", o.get("color")),
                                size=o.get("size", "medium"), x=o.get("x"), y=o.get("y"),
                                depth=int(o.get("depth", i))))
            except KeyError as e:
                raise SpecError(f"{where}.objects[{i}]: missing field {e}") from None
        rels = []
        for i, r in enumerate(d.get("relations", [])):
            if not isinstance(r, dict) or "kind" not in r or "objects" not in r:
                raise SpecError(f"{where}.relations[{i}]: expected {{'kind', 'objects'}}, got {r!r}")
            rels.append(Relation(r["kind"], tuple(int(j) for j in r["objects"]), r.get("region")))
        try:
            return cls(tuple(objs), tuple(rels))
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, s: str, where: str = "scene") -> "Scene":
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise SpecError(f"{where}: not valid JSON ({e})") from None
        return cls.from_dict(d, where)


def _trusted(objects: tuple[Obj, ...], relations: tuple[Relation, ...]) -> Scene:
    """A Scene built without ``validate`` (callers guarantee what it would check)."""
    out = object.__new__(Scene)
    object.__setattr__(out, "objects", objects)
    object.__setattr__(out, "relations", relations)
    return out


def validate(scene: Scene) -> None:
    """Raise ``SpecError`` naming the first problem: unknown vocabulary, bad indices, duplicates."""
    seen: dict[tuple[str, str], int] = {}
    for i, o in enumerate(scene.objects):
        if o.shape not in SHAPES:
            raise SpecError(f"object {i}: unknown shape {o.shape!r} (known: {', '.join(SHAPES)})")
        if o.colour not in COLOURS:
            raise SpecError(f"object {i}: unknown colour {o.colour!r} (known: {', '.join(COLOURS)})")
        if o.size not in SIZES:
            raise SpecError(f"object {i}: unknown size {o.size!r} (known: {', '.join(SIZES)})")
        if (o.x is None) != (o.y is None):
            raise SpecError(f"object {i}: give both x and y or neither")
        if o.placed and not (0.0 <= o.x <= 1.0 and 0.0 <= o.y <= 1.0):
            raise SpecError(f"object {i}: position ({o.x}, {o.y}) is outside the canvas [0, 1]")
        key = (o.colour, o.shape)
        if key in seen:
            raise SpecError(f"objects {seen[key]} and {i} are both a {o.colour} {o.shape}; "
                            "each colour+shape must be unique so the text can name it")
        seen[key] = i
    n = len(scene.objects)
    for i, r in enumerate(scene.relations):
        if r.kind not in RELATIONS:
            raise SpecError(f"relation {i}: unknown relation {r.kind!r} (known: {', '.join(RELATIONS)})")
        if len(r.objects) != RELATIONS[r.kind]:
            raise SpecError(f"relation {i} ({r.kind}): takes {RELATIONS[r.kind]} object(s), got {len(r.objects)}")
        for j in r.objects:
            if not 0 <= j < n:
                raise SpecError(f"relation {i} ({r.kind}): object index {j} out of range (scene has {n})")
        if len(set(r.objects)) != len(r.objects):
            raise SpecError(f"relation {i} ({r.kind}): an object cannot relate to itself")
        if r.kind == "at":
            if r.region not in REGIONS:
                raise SpecError(f"relation {i} (at): unknown region {r.region!r} (known: {', '.join(REGIONS)})")
        elif r.region is not None:
            raise SpecError(f"relation {i} ({r.kind}): only 'at' takes a region")
