"""Drawing of one synthetic smear image: background, red cells, platelets, a lymphocyte of a given kind."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from lib.core.errors import DataError

IMAGE_SIZE = 224

# BGR colours measured roughly on real smears (stained plasma, red cells, lymphocyte).
_PLASMA = np.array([201.0, 228.0, 252.0], np.float32)
_RBC = np.array([165.0, 150.0, 180.0], np.float32)
_RBC_PALLOR = np.array([188.0, 184.0, 210.0], np.float32)
_RBC_EDGE = np.array([148.0, 128.0, 162.0], np.float32)
_CYTO = np.array([206.0, 182.0, 200.0], np.float32)
_CYTO_EDGE = np.array([170.0, 130.0, 165.0], np.float32)
_NUCLEUS = np.array([136.0, 44.0, 92.0], np.float32)
_PLATELET = np.array([150.0, 90.0, 140.0], np.float32)


@functools.lru_cache(maxsize=8)
def _trig(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cos/sin of n polygon angles and of harmonics 2..6 of them (cached)."""
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 7)[:, None]
    return np.cos(theta), np.sin(theta), np.cos(k * theta), np.sin(k * theta)


def _blobs(centres: np.ndarray, radii: np.ndarray, amps: np.ndarray,
           rng: np.random.Generator, n: int = 48) -> np.ndarray:
    """(k, n, 2) fixed-point (shift 4) polygons: radii perturbed by harmonics 2, 3, ..."""
    cos_t, sin_t, cos_k, sin_k = _trig(n)
    amps = np.atleast_2d(np.asarray(amps, float))
    m = amps.shape[1]
    phi = rng.uniform(0, 2 * np.pi, amps.shape)
    wave = (amps * np.cos(phi)) @ cos_k[:m] - (amps * np.sin(phi)) @ sin_k[:m]
    r = np.asarray(radii, float).reshape(-1, 1) * (1.0 + wave)
    c = np.asarray(centres, float).reshape(-1, 1, 2)
    pts = c + r[..., None] * np.stack([cos_t, sin_t], 1)[None]
    return np.round(pts * 16).astype(np.int32)


def _blob(center: np.ndarray, radius: float, amps: np.ndarray,
          rng: np.random.Generator, n: int = 48) -> np.ndarray:
    """One closed polygon (fixed point, shift 4), see _blobs."""
    return _blobs(np.asarray(center), np.array([radius]), amps, rng, n)[0]


def _colour(base: np.ndarray, tint: np.ndarray, rng: np.random.Generator,
            jitter: float) -> tuple[float, ...]:
    """BGR colour tuple for cv2 drawing: base + patient tint + random jitter."""
    c = base + tint + rng.normal(0.0, jitter, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def _fp(p: np.ndarray) -> tuple[int, int]:
    """Fixed-point (shift 4) integer point for cv2."""
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def _background(rng: np.random.Generator, tint: np.ndarray) -> np.ndarray:
    """Pale pinkish plasma with a smooth mottled texture (uint8 BGR)."""
    small = (_PLASMA + tint)[None, None, :] + rng.normal(0.0, 5.0, (6, 6, 1))
    small = np.clip(small, 0, 255).astype(np.uint8)
    return cv2.resize(small, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)


def _place_discs(rng: np.random.Generator, centre: np.ndarray, keep_out: float,
                 scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Red-cell centres (k, 2) and radii (k,): may overlap a little, some cut by the border."""
    n = int(rng.integers(16, 28))
    cand = rng.uniform(-18, IMAGE_SIZE + 18, (n * 4, 2))
    radii = rng.uniform(17.5, 21.5, n * 4) * scale
    far = np.hypot(*(cand - centre).T) >= keep_out + 0.5 * radii
    cand, radii = cand[far], radii[far]
    diff = cand[:, None, :] - cand[None, :, :]
    dist2 = diff[..., 0] ** 2 + diff[..., 1] ** 2
    clash = dist2 < (1.55 * radii[None, :]) ** 2  # clash[i, j]: candidate i too close to disc j
    blocked, keep = np.zeros(len(cand), bool), []
    for i in range(len(cand)):
        if len(keep) >= n:
            break
        if not blocked[i]:
            keep.append(i)
            blocked |= clash[:, i]
    return cand[keep], radii[keep]


def _red_cells(img: np.ndarray, rng: np.random.Generator, tint: np.ndarray,
               discs: tuple[np.ndarray, np.ndarray]) -> None:
    """Draw pale mauve red cells with a darker rim and a central pallor (in place)."""
    centres, radii = discs
    k = len(radii)
    jitter = rng.normal(0.0, 4.0, (k, 3))
    body = np.clip(_RBC + tint + jitter, 0, 255)
    edge = np.clip(0.5 * body + 0.5 * (_RBC_EDGE + tint), 0, 255).tolist()
    pallor = np.clip(0.6 * body + 0.4 * (_RBC_PALLOR + tint + jitter), 0, 255).tolist()
    polys = _blobs(centres, radii, rng.normal(0, 0.03, (k, 2)), rng, 24)
    pal = np.round(np.c_[centres * 16, 0.5 * radii * 16]).astype(int).tolist()
    for i, b in enumerate(body.tolist()):
        cv2.fillPoly(img, [polys[i]], b, cv2.LINE_AA, 4)
        cv2.polylines(img, [polys[i]], True, edge[i], 1, cv2.LINE_AA, 4)
        cv2.circle(img, (pal[i][0], pal[i][1]), pal[i][2], pallor[i], -1, cv2.LINE_AA, 4)


def _platelets(img: np.ndarray, rng: np.random.Generator, tint: np.ndarray) -> None:
    """A few small purple granular dots (platelets) in some images (in place)."""
    for _ in range(int(rng.poisson(0.8))):
        c = rng.uniform(5, IMAGE_SIZE - 5, 2)
        colour = _colour(_PLATELET, tint, rng, 8.0)
        for _ in range(int(rng.integers(3, 7))):
            p = c + rng.normal(0, 2.0, 2)
            cv2.circle(img, _fp(p), int(rng.uniform(0.8, 2.0) * 16), colour, -1, cv2.LINE_AA, 4)


def _cell_shape(kind: str, rng: np.random.Generator, scale: float) -> dict:
    """Nucleus / cytoplasm geometry and chromatin texture for one cell kind."""
    if kind == "atypical":  # large, lobulated or cleaved, coarse chromatin
        r_n, rim = rng.uniform(30.0, 39.0), rng.uniform(3.0, 9.0)
        amps = np.abs(rng.normal(0, [0.08, 0.06, 0.03]))
        grain, amp, notch, specks = 2.6, 30.0, rng.random() < 0.55, int(rng.integers(6, 16))
    elif kind == "reactive":  # larger, abundant pale cytoplasm, fine chromatin
        r_n, rim = rng.uniform(25.0, 32.0), rng.uniform(12.0, 22.0)
        amps, grain, amp, notch, specks = rng.normal(0, 0.03, 3), 1.5, 18.0, False, 0
    else:  # small mature lymphocyte, thin rim
        r_n, rim = rng.uniform(21.0, 28.0), rng.uniform(2.0, 6.0)
        amps, grain, amp, notch, specks = rng.normal(0, 0.025, 3), 1.3, 16.0, False, 0
    return {"r_n": r_n * scale, "rim": rim * scale, "amps": amps, "grain": grain,
            "amp": amp, "notch": notch, "specks": specks}


def _cytoplasm(img: np.ndarray, rng: np.random.Generator, tint: np.ndarray,
               centre: np.ndarray, radius: float) -> None:
    """Pale blue-grey cytoplasm with a darker outline (in place)."""
    poly = _blob(centre, radius, rng.normal(0, 0.04, 3), rng)
    cv2.fillPoly(img, [poly], _colour(_CYTO, tint, rng, 5.0), cv2.LINE_AA, 4)
    cv2.polylines(img, [poly], True, _colour(_CYTO_EDGE, tint, rng, 4.0), 2, cv2.LINE_AA, 4)


def _nucleus_alpha(rng: np.random.Generator, shape: dict, local: np.ndarray,
                   size: int) -> np.ndarray:
    """Anti-aliased nucleus mask (size, size, 1) in a crop; notched when cleaved."""
    m = np.zeros((size, size), np.uint8)
    r_n = shape["r_n"]
    cv2.fillPoly(m, [_blob(local, r_n, shape["amps"], rng)], 255, cv2.LINE_AA, 4)
    if shape["notch"]:
        ang = rng.uniform(0, 2 * np.pi)
        at = local + 0.95 * r_n * np.array([np.cos(ang), np.sin(ang)])
        cv2.circle(m, _fp(at), int(rng.uniform(0.25, 0.4) * r_n * 16), 0, -1, cv2.LINE_AA, 4)
    return (m.astype(np.float32) / 255.0)[..., None]


def _chromatin(rng: np.random.Generator, shape: dict, size: int,
               colour: np.ndarray) -> np.ndarray:
    """Textured nucleus colour (size, size, 3): blurred noise plus dark clumps."""
    noise = rng.standard_normal((size, size), np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), shape["grain"])
    tex *= shape["amp"] / (tex.std() + 1e-6)
    for _ in range(shape["specks"]):
        p = rng.uniform(0.25, 0.75, 2) * size
        cv2.circle(tex, _fp(p), int(rng.uniform(1.5, 3.5) * 16), 45.0, -1, cv2.LINE_AA, 4)
    return colour[None, None, :] - tex[..., None]


def _nucleus(img: np.ndarray, rng: np.random.Generator, tint: np.ndarray,
             centre: np.ndarray, shape: dict) -> None:
    """Composite a dark purple textured nucleus around centre (in place, crop only)."""
    half = int(shape["r_n"] * 1.3) + 3
    x0, y0, size = int(centre[0]) - half, int(centre[1]) - half, 2 * half
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + size, IMAGE_SIZE), min(y0 + size, IMAGE_SIZE)
    inner = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
    alpha = _nucleus_alpha(rng, shape, centre - np.array([x0, y0], float), size)[inner]
    colour = (_NUCLEUS + tint + rng.normal(0, 5.0, 3)).astype(np.float32)
    tex = _chromatin(rng, shape, size, colour)[inner]
    crop = img[ya:yb, xa:xb].astype(np.float32)
    img[ya:yb, xa:xb] = np.clip(crop * (1 - alpha) + tex * alpha, 0, 255).astype(np.uint8)


def _finish(img: np.ndarray, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """Slight optical blur plus sensor noise (a random crop of a noise bank)."""
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.0))
    oy, ox = rng.integers(0, noise.shape[1] - IMAGE_SIZE + 1, 2)
    pos, neg = noise[:, oy:oy + IMAGE_SIZE, ox:ox + IMAGE_SIZE]
    return cv2.subtract(cv2.add(img, pos), neg)


def noise_bank(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Sensor-noise bank (2, size, size, 3) uint8: positive / negative parts, cropped per image."""
    n = np.round(rng.standard_normal((size, size, 3), np.float32) * 2.5)
    return np.stack([np.clip(n, 0, 255), np.clip(-n, 0, 255)]).astype(np.uint8)


def render_cell(rng: np.random.Generator, kind: str, scale: float = 1.0,
                stain: tuple[float, float, float] = (0.0, 0.0, 0.0),
                noise: np.ndarray | None = None) -> np.ndarray:
    """One 224x224 BGR uint8 smear image of a 'typical', 'reactive' or 'atypical' lymphocyte."""
    if kind not in ("typical", "reactive", "atypical"):
        raise DataError(f"demo: unknown cell kind {kind!r}")
    tint = np.asarray(stain, np.float64)
    centre = IMAGE_SIZE / 2 + rng.normal(0, 6.0, 2)
    shape = _cell_shape(kind, rng, scale)
    img = _background(rng, tint)
    _red_cells(img, rng, tint, _place_discs(rng, centre, shape["r_n"] + shape["rim"], scale))
    _platelets(img, rng, tint)
    _cytoplasm(img, rng, tint, centre, shape["r_n"] + shape["rim"])
    off = centre + rng.normal(0, 0.25, 2) * shape["rim"]
    _nucleus(img, rng, tint, off, shape)
    return _finish(img, rng, noise_bank(rng, IMAGE_SIZE) if noise is None else noise)

