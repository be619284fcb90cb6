"""Find the objects a spec names in an image: colour segmentation, then a shape check.

1. Every pixel takes the nearest palette colour (or background, or "unknown" when far from all).
2. For a spec object (colour c, shape s), each 8-connected component of colour c is a candidate.
3. The candidate's box: its pixel bounding box when it touches no other object; when it does (it
   may be partly hidden), the square box that best explains it with pixels of other objects
   counted as "could be hidden" at a small cost (an amodal fit).
4. Shape check: at that box, the template of s must fit the component at least as well as every
   other shape's template (IoU, hidden pixels ignored) and reach ``MIN_FIT``.
5. Plausibility: the box is no smaller than ``MIN_SIDE_FRAC`` of the smallest object's side, and
   the component covers at least ``MIN_SHOWN`` of the template there (the world keeps 60 % of an
   occluded object visible). Without it, the amodal fit explains any speck of a colour touching
   other colours as a mostly hidden shape, and colour noise ("confetti") would count as objects.
The best-fitting candidate that passes is the detection; none passing means "absent".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .render import template
from .vocab import BACKGROUND, COLOURS, SHAPES, SIZES

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[c] for c in PALETTE_NAMES] + [BACKGROUND], dtype=np.float32)
BG, UNKNOWN = len(PALETTE_NAMES), -1
MAX_COLOUR_DIST = 110.0
MIN_FIT = 0.55
MIN_AREA_FRAC = 0.0015  # components smaller than this share of the canvas are noise
MIN_SIDE_FRAC = 0.6     # a detection's box side >= this x the smallest object's side (2 x SIZES["small"])
MIN_SHOWN = 0.5         # ... and its component covers >= this share of the template at that box
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity
_EIGHT_IN_PLANE = np.pad(_EIGHT[None], ((1, 1), (0, 0), (0, 0)))  # 8-connectivity within planes of a stack


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive, amodal square box (pixels)
    fit: float
    area: int

    def geometry(self, size: int) -> tuple[float, float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1 + 1) / 2 / size, (y0 + y1 + 1) / 2 / size, (x1 - x0 + 1) / size)


def _nearest(rgb: np.ndarray) -> np.ndarray:
    d = ((rgb[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    lab = d.argmin(-1)
    far = np.take_along_axis(d, lab[..., None], -1)[..., 0] > MAX_COLOUR_DIST ** 2
    return np.where(far, UNKNOWN, lab).astype(np.int16)


_Q = 4  # colour lookup table on a 64^3 grid (4 levels per bin): exact enough, and fast


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """``_nearest`` of every bin centre, (64, 64, 64) int16; built on first use (not at import).

    Squared distances add per channel in the order ``_nearest`` sums them, so the table is the
    same as ``_nearest`` on the full (64, 64, 64, 3) grid, without its 28 MB temporary."""
    g = (np.arange(256 // _Q) * _Q + (_Q - 1) / 2).astype(np.float32)
    per = (g[:, None] - PALETTE[None, :, :].transpose(2, 0, 1)) ** 2  # (3, 64, palette)
    d = per[0][:, None, None, :] + per[1][None, :, None, :] + per[2][None, None, :, :]
    lab = d.argmin(-1)
    far = np.take_along_axis(d, lab[..., None], -1)[..., 0] > MAX_COLOUR_DIST ** 2
    lut = np.where(far, UNKNOWN, lab).astype(np.int16)
    lut.setflags(write=False)
    return lut


def label_pixels(img: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) int array: palette index of each pixel, ``BG`` for background, ``UNKNOWN`` if far."""
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8) // _Q
    return _lut()[a[..., 0], a[..., 1], a[..., 2]]


HIDDEN_WEIGHT = 0.15  # a template pixel that falls on another object costs this much (not 0, not 1)
COMPLETE_FIT = 0.97  # a touching component that fits its pixel box this well is not occluded


def _masked_iou(t: np.ndarray, m: np.ndarray, hidden: np.ndarray) -> float:
    """IoU where template pixels hidden under other objects count only ``HIDDEN_WEIGHT``."""
    inter = (t & m).sum()
    union = (t | m).sum() - (1 - HIDDEN_WEIGHT) * (t & ~m & hidden).sum()
    return float(inter / union) if union else 0.0


@lru_cache(maxsize=4096)
def _flat_template(shape: str, s: int) -> tuple[np.ndarray, np.float32]:
    """The s x s template of ``shape`` as a flat float32 vector (read-only) and its pixel count."""
    t = template(shape, s, s).astype(np.float32)
    flat = t.ravel()
    flat.setflags(write=False)
    return flat, t.sum()


def _window_sums(planes: np.ndarray, oy: int, ox: int, ny: int, nx: int, s: int, t: np.ndarray) -> np.ndarray:
    """(P, ny, nx): for each plane of ``planes`` (P, H, W, C-contiguous) and each s x s window with
    top-left corner (oy + dy, ox + dx), the sum of the window weighted by the flat template ``t``
    (exact: 0/1 sums below 2^24)."""
    P = planes.shape[0]
    sp, sy, sx = planes.strides
    # the windows as a strided view (np.ndarray over the same buffer: what as_strided does, minus
    # its Python overhead); the reshape copies them into rows for one matrix product
    win = np.ndarray((P, ny, nx, s, s), planes.dtype, planes, oy * sy + ox * sx, (sp, sy, sx, sy, sx))
    return (win.reshape(P * ny * nx, s * s) @ t).reshape(P, ny, nx)


def _fit_box(m: np.ndarray, hidden: np.ndarray, bbox, shape: str, touching: bool, shape_hw, prune: bool = True):
    """Best square box for component mask ``m`` (canvas-sized bool) and its masked IoU, where the
    component's own pixel box is not square or it touches another object (else see ``_match``).
    ``prune=False`` searches every size (the reference the pruned search is tested against)."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0 + 1, y1 - y0 + 1
    H, W = shape_hw
    if w != h and not touching:
        t = template(shape, w, h)
        sub = m[y0:y1 + 1, x0:x1 + 1]
        return (x0, y0, x1, y1), _masked_iou(t, sub, np.zeros_like(sub))
    best, best_iou = (x0, y0, x1, y1), -1.0
    n_m = int(m.sum())
    both = np.stack([m, hidden & ~m]).astype(np.float32)  # component, and pixels it could hide under
    s0 = max(w, h)
    for s in range(s0, int(s0 * 1.8) + 2):
        # every s x s window containing the bbox: top-left in [x1-s+1, x0] x [y1-s+1, y0], on canvas
        ox0, oy0 = max(0, x1 - s + 1), max(0, y1 - s + 1)
        ox1, oy1 = min(x0, W - s), min(y0, H - s)
        if ox1 < ox0 or oy1 < oy0:
            continue
        t, t_sum = _flat_template(shape, s)
        # skip a size where no window can beat the best so far: with inter <= I = min(n_m, t_sum)
        # and pen <= t_sum - inter, IoU <= I / (HIDDEN_WEIGHT * (t_sum - I) + n_m); the slack
        # covers float32 rounding (relative errors below 1e-5), so the result is unchanged
        most = min(n_m, float(t_sum))
        if prune and most / (HIDDEN_WEIGHT * (t_sum - most) + n_m) * (1 + 1e-3) <= best_iou:
            continue
        inter, pen = _window_sums(both, oy0, ox0, oy1 - oy0 + 1, ox1 - ox0 + 1, s, t)
        union = t_sum + n_m - inter - (1 - HIDDEN_WEIGHT) * pen
        iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        k = int(iou.argmax())
        if iou.flat[k] > best_iou + 1e-9:
            dy, dx = divmod(k, iou.shape[1])
            best, best_iou = (ox0 + dx, oy0 + dy, ox0 + dx + s - 1, oy0 + dy + s - 1), float(iou.flat[k])
    return best, best_iou


@lru_cache(maxsize=1024)  # (keys are two s x s crops: ~40 MB at most for 512-pixel images)
def _square_fit(shape: str, s: int, sub: bytes, hid: bytes) -> tuple[float, bool]:
    """Masked IoU of ``shape`` at a component's own s x s pixel box, and whether ``shape`` passes
    the shape check there, from the box's component and hidden pixels (``tobytes`` of the s x s
    bool crops). Cached: an unoccluded object's crop is its template, the same in every image."""
    m, hidden = (np.frombuffer(b, bool).reshape(s, s) for b in (sub, hid))
    scores = _shape_scores(m, hidden, (0, 0, s - 1, s - 1))
    return _masked_iou(template(shape, s, s), m, hidden), not max(scores.values()) > scores[shape] + 1e-6


@lru_cache(maxsize=4096)
def _templates(w: int, h: int) -> np.ndarray:
    """(len(SHAPES), h, w) bool: every shape's template for a w x h box (read-only)."""
    t = np.stack([template(s, w, h) for s in SHAPES])
    t.setflags(write=False)
    return t


def _shape_scores(m: np.ndarray, hidden: np.ndarray, box) -> dict[str, float]:
    """``_masked_iou`` of every shape's template at ``box``, all shapes in one pass."""
    x0, y0, x1, y1 = box
    sub, hid = m[y0:y1 + 1, x0:x1 + 1], hidden[y0:y1 + 1, x0:x1 + 1]
    t = _templates(x1 - x0 + 1, y1 - y0 + 1)
    inter = (t & sub).sum((1, 2))
    union = (t | sub).sum((1, 2)) - (1 - HIDDEN_WEIGHT) * (t & ~sub & hid).sum((1, 2))
    iou = np.divide(inter, union, out=np.zeros(len(SHAPES)), where=union != 0)
    return dict(zip(SHAPES, iou.tolist()))


def _touches(m: np.ndarray, others: np.ndarray, ys: slice, xs: slice) -> bool:
    """Whether mask ``m`` (inside the given slices) has a 4-neighbour among ``others``."""
    H, W = m.shape
    y0, y1, x0, x1 = max(ys.start - 1, 0), min(ys.stop + 1, H), max(xs.start - 1, 0), min(xs.stop + 1, W)
    mm, oo = m[y0:y1, x0:x1], others[y0:y1, x0:x1]
    return bool((mm[1:] & oo[:-1]).any() or (mm[:-1] & oo[1:]).any()
                or (mm[:, 1:] & oo[:, :-1]).any() or (mm[:, :-1] & oo[:, 1:]).any())


@dataclass(frozen=True)
class Component:
    """One 8-connected component of a colour: canvas-sized mask, pixel box, area, and whether it
    touches (4-neighbours) pixels of another object."""
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    area: int
    touching: bool


def components(labels: np.ndarray, colour: str) -> tuple[list[Component], np.ndarray | None]:
    """The candidate components of ``colour`` (noise-sized ones dropped) and the mask of other
    objects' pixels (None when the colour is absent). Shape-independent: shared by every object
    of that colour."""
    return components_of(labels, [colour])[colour]


def components_of(labels: np.ndarray, colours) -> dict[str, tuple[list[Component], np.ndarray | None]]:
    """``components`` of each of ``colours``, labelled in one pass: the colours' masks are planes of
    a stack, 8-connected within a plane only, so a plane's components and their order (by first
    pixel in raster order) are those of its mask labelled alone."""
    from scipy import ndimage  # imported on first use: a process that only configures a build skips it

    H, W = labels.shape
    colours = list(dict.fromkeys(colours))
    masks = labels == np.array([PALETTE_NAMES.index(c) for c in colours], labels.dtype)[:, None, None]
    present = np.flatnonzero(masks.any((1, 2)))
    out: dict[str, tuple[list[Component], np.ndarray | None]] = {c: ([], None) for c in colours}
    if not len(present):
        return out
    masks = masks[present]
    comps, n = ndimage.label(masks, _EIGHT_IN_PLANE)
    objects = labels != BG
    found = [(colours[z], [], objects & ~masks[k]) for k, z in enumerate(present)]  # colour, comps, others
    min_area = max(3, int(MIN_AREA_FRAC * H * W))
    for k, (zs, ys, xs) in enumerate(ndimage.find_objects(comps, n), start=1):
        _, found_z, others = found[zs.start]
        full = comps[zs.start] == k
        area = int(full[ys, xs].sum())
        if area < min_area:
            continue
        found_z.append(Component(full, (xs.start, ys.start, xs.stop - 1, ys.stop - 1), area,
                                 _touches(full, others, ys, xs)))
    out.update((c, (found_z, others)) for c, found_z, others in found)
    return out


def _match(c: Component, others: np.ndarray, shape: str, shape_hw) -> tuple[tuple, float, bool]:
    """The box of ``shape`` for component ``c``, its fit, and whether it passes the shape check
    (checked only for a fit of at least ``MIN_FIT``)."""
    x0, y0, x1, y1 = c.bbox
    if x1 - x0 == y1 - y0:  # a complete object's pixel box is square and its template fits it exactly
        fit, ok = _square_fit(shape, x1 - x0 + 1, c.mask[y0:y1 + 1, x0:x1 + 1].tobytes(),
                              others[y0:y1 + 1, x0:x1 + 1].tobytes())
        if not c.touching or fit >= COMPLETE_FIT:
            return c.bbox, fit, ok
    box, fit = _fit_box(c.mask, others, c.bbox, shape, c.touching, shape_hw)
    if fit < MIN_FIT:
        return box, fit, False
    scores = _shape_scores(c.mask, others, box)
    return box, fit, not max(scores.values()) > scores[shape] + 1e-6


def plausible(c: Component, shape: str, box, canvas: int) -> bool:
    """Whether ``box`` is the size of a world object and ``c`` shows enough of ``shape``'s template there."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    if max(w, h) < MIN_SIDE_FRAC * 2 * min(SIZES.values()) * canvas:
        return False
    t = _templates(w, h)[SHAPES.index(shape)]
    H, W = c.mask.shape
    win = np.zeros((h, w), bool)   # the part of the box on the canvas
    ys, xs = slice(max(y0, 0), min(y1 + 1, H)), slice(max(x0, 0), min(x1 + 1, W))
    win[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = c.mask[ys, xs]
    return int((win & t).sum()) >= MIN_SHOWN * int(t.sum())


def best_match(comps: list[Component], others: np.ndarray | None, colour: str, shape: str,
               shape_hw: tuple[int, int]) -> Detection | None:
    """The best-fitting component that passes the shape check for ``shape`` and is
    :func:`plausible`, or None."""
    best: Detection | None = None
    for c in comps:
        box, fit, ok = _match(c, others, shape, shape_hw)
        if fit < MIN_FIT or not ok or not plausible(c, shape, box, min(shape_hw)):
            continue
        det = Detection(colour, shape, box, fit, c.area)
        if best is None or det.fit > best.fit:
            best = det
    return best


def find(labels: np.ndarray, colour: str, shape: str) -> Detection | None:
    """Detect the ``colour`` ``shape`` in a labelled image, or ``None`` if it is absent."""
    comps, others = components(labels, colour)
    return best_match(comps, others, colour, shape, labels.shape)
