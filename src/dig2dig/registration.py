"""Registration: every source aligned to the first (the reference) before fusion.

The sources of a fusion come from different sensors, so their intensities are not related by a
simple mapping (an infrared and a visible frame, MRI and CT).  What they share is *structure*:
where edges are, not how bright or which polarity.  Each image is therefore compared through a
structure image -- its gradient magnitude normalised by the local average gradient
magnitude, ``g / (g + local mean of g)`` -- so a faint edge in one modality counts as much as a
strong one in the other, and flat or noisy regions count little.  OpenCV's enhanced correlation
coefficient maximisation (``cv2.findTransformECC``: Gauss-Newton on the correlation of the two
structure images, invariant to their brightness and contrast) estimates the transform, coarse to
fine over an image pyramid, for each of the motion models:

* ``rigid``: rotation and shift (plus the fixed scale between the sources' sizes, when they differ);
* ``affine``: also scale and shear;
* ``homography``: also a perspective tilt.

Sources of another size start from their centres aligned and the scale that makes the two fields
of view equal (``reference size / source size`` per axis; isotropic for ``rigid``); the moving
source is resampled to the reference's scale before the search, so one pixel means the same in
both.  The result is checked: a transform beyond :data:`BOUNDS`, a structural similarity that did
not improve or stays low, too little overlap, or a reverse registration that does not bring the
corners back is a :class:`~dig2dig.errors.RegistrationError` naming the source and the fix.  These
checks catch most failed alignments, not all: ``benchmarks/results/register.md`` measures both.
The aligned source is one resampling (bicubic) of the original; reference pixels it does not
cover take the reference's own values, so the fusion there keeps the reference, and the region
every source covers is reported.

Matrices map *reference* pixel coordinates (x right, y down, pixel centres at integers) to the
source's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import RegistrationError

MODES = ("off", "rigid", "affine", "homography")


@dataclass(frozen=True)
class Bounds:
    """What a plausible registration may change relative to its initialisation."""

    rotation_deg: float = 20.0  # |rotation|
    scale: tuple[float, float] = (0.75, 1.33)  # each axis' scale
    shear: float = 0.15  # |shear| (affine, homography)
    shift: float = 0.2  # |shift of the reference's centre| as a fraction of its diagonal
    tilt: float = 0.1  # perspective displacement of a corner as a fraction of the diagonal (homography)
    overlap: float = 0.5  # fraction of the reference the source must still cover


BOUNDS = Bounds()
MIN_SIMILARITY = 0.1  # below this after alignment, the sources share too little structure to trust it
ROUND_TRIP_PX = 1.0  # forward and reverse registrations must agree this well at the reference's corners
MIN_GAIN = 0.01  # the similarity must rise by this much unless the transform stays within a pixel
FINEST_PIXELS = 4_000_000  # the finest pyramid level holds at most this many pixels (cost ∝ pixels)
COARSEST_SIDE = 48  # the coarsest level's shorter side is at least this
MAX_ITERATIONS = 100  # per pyramid level
EPS_PX = 0.005  # a level has converged when no corner moves more than this (in that level's pixels)


@dataclass
class Registration:
    """One source's registration, as reported (JSON-able through :meth:`to_dict`)."""

    source: str
    reference: str
    mode: str
    matrix: list[list[float]]  # 3×3, reference pixel -> source pixel
    initial: list[list[float]]  # the starting matrix (centres aligned, fields of view equal)
    similarity_before: float  # correlation of the structure images at the start
    similarity_after: float
    iterations: list[int]  # per pyramid level, coarse to fine
    levels: list[list[int]]  # (height, width) of each level, coarse to fine
    corner_shift_px: float  # largest move of a reference corner from the initial matrix
    covered: float  # fraction of the reference the aligned source covers
    seconds: float
    round_trip_px: float = 0.0  # reference corners mapped to the source and back by the reverse registration
    measure: str = "correlation of local-contrast-normalised gradient magnitude (ECC)"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Aligned:
    """The sources on the reference's grid, with what was done to each."""

    images: list[np.ndarray]
    records: list[Registration] = field(default_factory=list)
    valid: np.ndarray | None = None  # (H, W) bool: every source covers this pixel

    def summary(self) -> dict:
        """The report's ``registration`` entry: each source's record and the valid region."""
        out: dict = {"mode": self.records[0].mode if self.records else "off"}
        out["sources"] = [r.to_dict() for r in self.records]
        if self.valid is not None:
            ys, xs = np.nonzero(self.valid)
            out["valid_fraction"] = round(float(self.valid.mean()), 6)
            out["valid_box"] = (
                [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
            )  # x0, y0, x1, y1 of the pixels every source covers
        return out

    def notes(self) -> list[str]:
        """One line per source and, when some pixels lack a source, one for the covered region."""
        out = [
            f"{r.source} registered to {r.reference} ({r.mode}): structural similarity "
            f"{r.similarity_before:.3f} -> {r.similarity_after:.3f}, covers {100 * r.covered:.1f} % of it, "
            f"{r.seconds:.2f} s"
            for r in self.records
        ]
        summary = self.summary()
        if summary.get("valid_fraction", 1.0) < 1.0:
            x0, y0, x1, y1 = summary["valid_box"]
            out.append(
                f"every source covers {100 * summary['valid_fraction']:.1f} % of the output (x {x0}-{x1}, "
                f"y {y0}-{y1}); elsewhere the reference's pixels stand in for the sources that do not"
            )
        return out


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"register={mode!r} is not one of {', '.join(MODES)}")
    return mode


def align(images: list[np.ndarray], names: list[str], mode: str) -> Aligned:
    """Every source aligned to ``images[0]`` (float [0, 1], (H, W) or (H, W, 3)) with ``mode``."""
    from .color import luminance

    check_mode(mode)
    if mode == "off":
        return Aligned(list(images))
    ref = images[0]
    h, w = ref.shape[:2]
    ref_y = luminance(ref).astype(np.float32)
    out, records = [ref], []
    valid = np.ones((h, w), bool)
    for img, name in zip(images[1:], names[1:]):
        rec = estimate(ref_y, luminance(img).astype(np.float32), mode, name, names[0])
        warped, covered = warp(img, np.array(rec.matrix), (h, w))
        fill = ~covered
        if fill.any():  # pixels the source does not cover: the reference's, in the source's channels
            donor = ref if ref.ndim == warped.ndim else (ref_y if warped.ndim == 2 else ref_y[..., None])
            warped = np.where(fill if warped.ndim == 2 else fill[..., None], donor, warped).astype(np.float32)
        out.append(warped)
        records.append(rec)
        valid &= covered
    return Aligned(out, records, valid)


def warp(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` resampled on the reference grid of ``shape`` through ``matrix`` (reference -> image
    pixels), bicubic, clipped to [0, 1]; and the mask of reference pixels it covers."""
    import cv2

    h, w = shape
    m = np.asarray(matrix, np.float64)
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    out = cv2.warpPerspective(image, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out, 0.0, 1.0).astype(np.float32), coverage(image.shape, m, shape)


def structure(y: np.ndarray) -> np.ndarray:
    """The image compared across modalities: gradient magnitude over its local mean, in [0, 1)."""
    import cv2

    y = cv2.GaussianBlur(y, (0, 0), 1.0)
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    g = np.sqrt(gx * gx + gy * gy)
    local = cv2.GaussianBlur(g, (0, 0), 8.0) + float(np.median(g)) + 1e-4
    return (g / (g + local)).astype(np.float32)


def initial_matrix(ref_shape: tuple[int, int], src_shape: tuple[int, int], mode: str) -> np.ndarray:
    """Centres aligned, fields of view equal: reference pixel -> source pixel."""
    (hr, wr), (hs, ws) = ref_shape, src_shape
    sx, sy = ws / wr, hs / hr
    if mode == "rigid":
        sx = sy = float(np.sqrt(sx * sy))
    return np.array(
        [[sx, 0.0, (ws - 1) / 2 - sx * (wr - 1) / 2], [0.0, sy, (hs - 1) / 2 - sy * (hr - 1) / 2], [0, 0, 1.0]]
    )


def estimate(ref: np.ndarray, src: np.ndarray, mode: str, name: str = "source", ref_name: str = "reference"):
    """The :class:`Registration` of luminance ``src`` to luminance ``ref`` (float32 [0, 1]), checked.

    Besides :func:`check_plausible`, the registration is run the other way round (the reference
    onto the source): a similarity with one clear optimum brings both to the same transform, so a
    round trip that misses the reference's corners by more than :data:`ROUND_TRIP_PX` is refused
    as ambiguous."""
    t0 = time.perf_counter()
    rec, relative = _estimate(ref, src, mode, name, ref_name)
    check_plausible(rec, relative, ref.shape)
    try:
        back, _ = _estimate(src, ref, mode, ref_name, name)
        corners = _corners(*ref.shape)
        trip = np.array(back.matrix) @ np.array(rec.matrix)
        rec.round_trip_px = round(float(np.max(np.linalg.norm(_apply(trip, corners) - corners[:2], axis=0))), 3)
    except RegistrationError:
        rec.round_trip_px = float("inf")
    rec.seconds = round(time.perf_counter() - t0, 4)
    if not rec.round_trip_px <= ROUND_TRIP_PX:
        raise _refuse(
            f"{name} could not be registered to {ref_name} ({mode}): registering one onto the other and back "
            f"misses by {rec.round_trip_px:.1f} px (at most {ROUND_TRIP_PX:g}), so the alignment is ambiguous"
        )
    return rec


def _estimate(ref: np.ndarray, src: np.ndarray, mode: str, name: str, ref_name: str):
    """(the unchecked :class:`Registration`, the transform relative to its initialisation)."""
    import cv2

    t0 = time.perf_counter()
    init = initial_matrix(ref.shape, src.shape, mode)
    # the source resampled to the reference's scale, so the search starts at the identity
    s = np.diag([init[0, 0], init[1, 1], 1.0])
    if not np.allclose(s, np.eye(3)):
        scaled_shape = (max(8, round(src.shape[0] / s[1, 1])), max(8, round(src.shape[1] / s[0, 0])))
        shrink = scaled_shape[0] * scaled_shape[1] < src.size
        src_s = cv2.resize(src, scaled_shape[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC).astype(
            np.float32
        )
        # scaled pixel -> source pixel (pixel centres kept)
        to_src = np.array(
            [
                [src.shape[1] / scaled_shape[1], 0, (src.shape[1] / scaled_shape[1] - 1) / 2],
                [0, src.shape[0] / scaled_shape[0], (src.shape[0] / scaled_shape[0] - 1) / 2],
                [0, 0, 1.0],
            ]
        )
    else:
        src_s, to_src = src, np.eye(3)
    # centres aligned on the scaled source
    start = np.eye(3)
    start[0, 2] = (src_s.shape[1] - ref.shape[1]) / 2
    start[1, 2] = (src_s.shape[0] - ref.shape[0]) / 2
    w_s, iters, levels, before, after = _pyramid_ecc(ref, src_s, start, mode)
    matrix = to_src @ w_s
    matrix /= matrix[2, 2]
    init_full = to_src @ start
    corners = _corners(*ref.shape)
    moved = float(np.max(np.linalg.norm(_apply(matrix, corners) - _apply(init_full, corners), axis=0)))
    covered = coverage(src.shape, matrix, ref.shape)
    rec = Registration(
        source=name,
        reference=ref_name,
        mode=mode,
        matrix=matrix.round(8).tolist(),
        initial=init_full.round(8).tolist(),
        similarity_before=round(before, 6),
        similarity_after=round(after, 6),
        iterations=iters,
        levels=levels,
        corner_shift_px=round(moved, 3),
        covered=round(float(covered.mean()), 6),
        seconds=round(time.perf_counter() - t0, 4),
    )
    return rec, np.linalg.inv(to_src) @ matrix


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = m @ pts
    return p[:2] / p[2]


def _corners(h: int, w: int) -> np.ndarray:
    """The four corner pixels of an h×w image, homogeneous, as columns."""
    return np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float).T


def coverage(src_shape: tuple[int, ...], matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) mask of reference pixels that a source of ``src_shape`` covers through ``matrix``."""
    import cv2

    h, w = shape
    ones = np.ones(src_shape[:2], np.uint8)
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(ones, np.asarray(matrix, np.float64), (w, h), flags=flags, borderValue=0).astype(bool)


def _pyramid_ecc(ref, src, start, mode):
    """ECC coarse to fine from ``start`` (reference -> source pixels, same scale); (matrix, iterations
    per level, level shapes, similarity before, similarity after), the similarities at the finest level."""
    import cv2

    motion = {"rigid": cv2.MOTION_EUCLIDEAN, "affine": cv2.MOTION_AFFINE, "homography": cv2.MOTION_HOMOGRAPHY}[mode]
    finest = 0
    while ref.size / 4**finest > FINEST_PIXELS:
        finest += 1
    coarsest = finest
    while min(ref.shape) / 2 ** (coarsest + 1) >= COARSEST_SIDE:
        coarsest += 1
    w = start.copy()
    iters, levels = [], []
    before = after = float("nan")
    for lv in range(coarsest, finest - 1, -1):
        f = 2**lv
        r, s = structure(_down(ref, f)), structure(_down(src, f))
        # level pixel x -> full pixel f*x + (f-1)/2 (centres of the averaged blocks)
        d = np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1.0]])
        wl = np.linalg.inv(d) @ w @ d
        if lv == coarsest:  # a global search of rotation and shift first: ECC alone has a narrow reach
            wl = _coarse_search(r, s, wl)
        if lv == finest:  # at the start, at the finest level
            before = _correlation(r, s, np.linalg.inv(d) @ start @ d)
        n, cur = 0, _correlation(r, s, wl)
        corners = _corners(*r.shape)
        while n < MAX_ITERATIONS:
            try:  # one Gauss-Newton step of ECC
                cand = _ecc_step(r, s, wl, mode, motion)
            except cv2.error:  # OpenCV gives up where the correlation would turn negative: keep what we have
                break
            n += 1
            # backtracking: a step that lowers the correlation is halved (up to four times), else the level ends
            c = _correlation(r, s, cand)
            for _ in range(4):
                if c >= cur:
                    break
                cand = _blend(wl, cand, mode)
                c = _correlation(r, s, cand)
            if c < cur:
                break
            step = float(np.max(np.linalg.norm(_apply(cand, corners) - _apply(wl, corners), axis=0)))
            wl, cur = cand, c
            if step < EPS_PX:
                break
        iters.append(n)
        levels.append(list(r.shape))
        w = d @ wl @ np.linalg.inv(d)
        w /= w[2, 2]
        if lv == finest:
            after = _correlation(r, s, wl)
    return w, iters, levels, before, after


SEARCH_ANGLES = tuple(range(-12, 13, 3))  # degrees tried by the coarse search
SEARCH_WINDOW = 0.7  # the central share of the reference matched against the source
SEARCH_PAD = 0.15  # the source padded by this share of its size on each side (shifts beyond the window's play)


def _coarse_search(r: np.ndarray, s: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The best of rotations :data:`SEARCH_ANGLES` about the reference's centre, each with the shift
    that maximises the normalised correlation of the structure images (template matching of the
    reference's central window in the padded source); ``start`` if none beats it."""
    import cv2

    h, w = r.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    th, tw = max(8, round(SEARCH_WINDOW * h)), max(8, round(SEARCH_WINDOW * w))
    y0, x0 = (h - th) // 2, (w - tw) // 2
    py, px = round(SEARCH_PAD * s.shape[0]), round(SEARCH_PAD * s.shape[1])
    padded = cv2.copyMakeBorder(s, py, py, px, px, cv2.BORDER_CONSTANT, value=0.0)
    best, best_w = _correlation(r, s, start), start
    for ang in SEARCH_ANGLES:
        a = np.vstack([cv2.getRotationMatrix2D((cx, cy), float(ang), 1.0), [0, 0, 1]])  # reference -> rotated
        rot = cv2.warpAffine(r, a[:2], (w, h), flags=cv2.INTER_LINEAR)
        scores = cv2.matchTemplate(padded, rot[y0 : y0 + th, x0 : x0 + tw], cv2.TM_CCOEFF_NORMED)
        _, _, _, (u, v) = cv2.minMaxLoc(scores)
        # s(y) ≈ rot(y + δ), δ = window origin - match origin + pad; the warp reference -> source is a - δ
        cand = a.copy()
        cand[0, 2] -= x0 - u + px
        cand[1, 2] -= y0 - v + py
        c = _correlation(r, s, cand)
        if c > best:
            best, best_w = c, cand
    return best_w


def _ecc_step(r, s, wl, mode, motion):
    import cv2

    crit = (cv2.TERM_CRITERIA_COUNT, 1, 0.0)
    ecc = cv2.findTransformECC  # one step, no mask, no further smoothing (the structure images are smoothed)
    if mode == "homography":
        _, w32 = ecc(r, s, (wl / wl[2, 2]).astype(np.float32), motion, crit, None, 1)  # type: ignore[call-overload]
        return np.asarray(w32, np.float64)
    _, w32 = ecc(r, s, wl[:2].astype(np.float32), motion, crit, None, 1)  # type: ignore[call-overload]
    return np.vstack([np.asarray(w32, np.float64), [0, 0, 1]])


def _blend(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """Half way from ``a`` to ``b`` (rigid: by angle and shift, so it stays a rotation)."""
    if mode != "rigid":
        return (a / a[2, 2] + b / b[2, 2]) / 2
    ta, tb = np.arctan2(a[1, 0], a[0, 0]), np.arctan2(b[1, 0], b[0, 0])
    t = (ta + tb) / 2
    out = np.eye(3)
    out[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    out[:2, 2] = (a[:2, 2] + b[:2, 2]) / 2
    return out


def _down(img: np.ndarray, f: int) -> np.ndarray:
    """Block average by ``f`` (the image cropped to a multiple of ``f`` so the scale is exact)."""
    if f == 1:
        return img
    import cv2

    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return cv2.resize(img[:h, :w], (w // f, h // f), interpolation=cv2.INTER_AREA)


def _correlation(r: np.ndarray, s: np.ndarray, m: np.ndarray) -> float:
    """Correlation of structure image ``r`` with ``s`` warped by ``m``, over the pixels ``s`` covers."""
    import cv2

    h, w = r.shape
    warped = cv2.warpPerspective(s, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    cover = cv2.warpPerspective(
        np.ones_like(s, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    ).astype(bool)
    if cover.sum() < 16:
        return 0.0
    a, b = r[cover].astype(np.float64), warped[cover].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


_FIX = {
    "python": "check that both show the same scene, try a simpler model (register='rigid'), or align them "
    "yourself and fuse with register='off'",
    "cli": "check that both show the same scene, try a simpler model (--register rigid), or align them "
    "yourself and fuse with --register off",
    "web": "check that both show the same scene, try a simpler model (Register: rigid), or align them "
    "yourself and fuse with Register: off",
}


def _refuse(head: str) -> RegistrationError:
    """The error with its fix spelled for each surface."""
    e = RegistrationError(f"{head}; {_FIX['python']}")
    e.spelled = {k: f"{head}; {v}" for k, v in _FIX.items() if k != "python"}
    return e


def check_plausible(rec: Registration, m: np.ndarray, shape: tuple[int, int]) -> None:
    """Refuse a transform beyond :data:`BOUNDS` or one that did not improve the similarity.

    ``m``: the estimated transform relative to its initialisation (reference pixel -> scaled source
    pixel, centres aligned at the identity)."""
    h, w = shape
    diag = float(np.hypot(h, w))
    c = np.array([[(w - 1) / 2], [(h - 1) / 2], [1.0]])
    # the local linear map at the centre (for a homography: its Jacobian there), a = R(θ) @ [[sx, k], [0, sy]]
    at = _apply(m, c)[:, 0]
    a = np.stack([_apply(m, c + [[1.0], [0], [0]])[:, 0] - at, _apply(m, c + [[0], [1.0], [0]])[:, 0] - at], axis=1)
    theta = float(np.degrees(np.arctan2(a[1, 0], a[0, 0])))
    sx = float(np.hypot(a[0, 0], a[1, 0]))
    sy = float(np.linalg.det(a) / sx) if sx > 0 else 0.0
    shear = float((a[0, 0] * a[0, 1] + a[1, 0] * a[1, 1]) / (sx * sx)) if sx > 0 else 0.0
    centre_shift = float(np.linalg.norm(at - c[:2, 0]))
    # the perspective part: how far the corners are from the best affine fit through them
    corners = _corners(h, w)
    mapped = _apply(m, corners)
    fit, *_ = np.linalg.lstsq(corners.T, mapped.T, rcond=None)
    tilt = float(np.max(np.linalg.norm(corners.T @ fit - mapped.T, axis=1)))
    b = BOUNDS
    why = []
    if abs(theta) > b.rotation_deg:
        why.append(f"a rotation of {theta:.1f}° (at most {b.rotation_deg:g}°)")
    lo, hi = b.scale
    if not (lo <= sx <= hi and lo <= sy <= hi):
        why.append(f"scales of {sx:.2f} × {sy:.2f} beyond what the sizes imply (allowed {lo:g}–{hi:g})")
    if abs(shear) > b.shear:
        why.append(f"a shear of {shear:.2f} (at most {b.shear:g})")
    if centre_shift > b.shift * diag:
        why.append(f"a shift of {centre_shift:.0f} px (at most {b.shift * diag:.0f}, {b.shift:g} of the diagonal)")
    if tilt > b.tilt * diag:
        why.append(f"a perspective tilt moving a corner {tilt:.0f} px (at most {b.tilt * diag:.0f})")
    if rec.covered < b.overlap:
        why.append(f"only {100 * rec.covered:.0f} % of the reference covered (at least {100 * b.overlap:g} %)")
    if rec.corner_shift_px > 1.0 and not rec.similarity_after >= rec.similarity_before + MIN_GAIN:
        why.append(
            f"no gain in structural similarity ({rec.similarity_before:.3f} -> {rec.similarity_after:.3f}): they "
            "may be aligned already, or share too little structure"
        )
    if rec.similarity_after < MIN_SIMILARITY:
        why.append(
            f"too little shared structure (similarity {rec.similarity_after:.3f} after alignment, at least "
            f"{MIN_SIMILARITY:g})"
        )
    if why:
        raise _refuse(
            f"{rec.source} could not be registered to {rec.reference} ({rec.mode}): the estimate is "
            f"implausible -- {'; '.join(why)}"
        )
