"""Procedural face renderer for the synthetic dataset.

``render_face(labels, rng)`` draws one aligned 224×224 face whose landmarks sit at the AFFACT mean
positions (plus pose jitter), with every attribute shown as a visible cue inside its mask region
(the mask table in bincam.attributes). Each drawn cue is recorded as geometric primitives in the 224 frame, so its
exact pixel mask can be rebuilt later (``cue_mask``).

Primitives: ``["ellipse", [x0, y0, x1, y1], width]``, ``["polygon", [x, y, …], 0]``,
``["line", [x, y, …], width]``, ``["points", [x, y, …], 0]``,
``["rounded", [x0, y0, x1, y1, radius], 0]``; width 0 means filled. A kind with a leading ``-``
erases (e.g. the face drawn over the hair: ``["-ellipse", box, 0]``); primitives apply in order.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bincam.attributes import ATTRIBUTES, FRAME

MEAN_LANDMARKS = np.array([[93.3, 101.2], [131.7, 101.2], [112.0, 125.1], [95.2, 142.1],
                           [129.7, 142.2]])
"""AFFACT mean landmarks in the 224 frame: left eye, right eye, nose tip, mouth corners."""

HAIR_RGB = {"Black_Hair": (28, 22, 22), "Blond_Hair": (228, 196, 118), "Brown_Hair": (112, 70, 38),
            "Gray_Hair": (172, 172, 178), None: (170, 72, 38)}
SKIN_RGB = ((226, 188, 158), (202, 150, 112), (172, 120, 86), (122, 82, 56))
PALE_RGB = (247, 231, 224)
_NOISE = np.random.default_rng(12345).normal(0.0, 1.0, (512, 512, 3)).astype(np.float32)

Primitive = list


def _shade(rgb, f: float, add=(0, 0, 0)) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * f + a, 0, 255)) for c, a in zip(rgb, add))


class _Canvas:
    """An ImageDraw that records the primitives drawn for each attribute cue."""

    def __init__(self, img: Image.Image):
        self.draw = ImageDraw.Draw(img)
        self.cues: dict[str, list[Primitive]] = {}

    def _record(self, cue, prim):
        if cue:
            for name in (cue,) if isinstance(cue, str) else cue:
                self.cues.setdefault(name, []).append(prim)

    def ellipse(self, box, fill=None, outline=None, width=0, cue=None):
        box = [round(float(v), 2) for v in box]
        self.draw.ellipse(box, fill=fill, outline=outline, width=int(width))
        self._record(cue, ["ellipse", box, int(width) if fill is None else 0])

    def polygon(self, pts, fill, cue=None):
        flat = [round(float(v), 2) for p in pts for v in p]
        self.draw.polygon(flat, fill=fill)
        self._record(cue, ["polygon", flat, 0])

    def line(self, pts, fill, width, cue=None):
        flat = [round(float(v), 2) for p in pts for v in p]
        self.draw.line(flat, fill=fill, width=int(width), joint="curve")
        self._record(cue, ["line", flat, int(width)])

    def points(self, pts, fill, cue=None):
        flat = [round(float(v), 2) for p in pts for v in p]
        self.draw.point(flat, fill=fill)
        self._record(cue, ["points", flat, 0])


def cue_mask(primitives: list[Primitive], size: int = FRAME) -> np.ndarray:
    """Rebuild the boolean ``[size, size]`` pixel mask of recorded primitives."""
    s = size / FRAME
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for kind, coords, width in primitives:
        value = 0 if kind.startswith("-") else 255
        kind = kind.lstrip("-")
        c = [v * s for v in coords]
        w = max(1, int(round(width * s))) if width else 0
        if kind == "ellipse":
            draw.ellipse(c, fill=None if w else value, outline=value if w else None, width=w)
        elif kind == "rounded":
            draw.rounded_rectangle(c[:4], radius=c[4], fill=value)
        elif kind == "polygon":
            draw.polygon(c, fill=value)
        elif kind == "line":
            draw.line(c, fill=value, width=max(w, 1), joint="curve")
        elif kind == "points":
            draw.point(c, fill=value)
        else:
            raise ValueError(f"unknown primitive {kind!r}")
    return np.asarray(img) > 0


def _arc(cx, cy, rx, ry, a0, a1, n=9):
    t = np.linspace(np.radians(a0), np.radians(a1), n)
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def render_face(labels: np.ndarray, rng: np.random.Generator
                ) -> tuple[Image.Image, np.ndarray, dict[str, list[Primitive]]]:
    """Draw one face. Returns (RGB 224×224 image, landmarks ``[10]``, cue primitives by attribute)."""
    has = {a: bool(v) for a, v in zip(ATTRIBUTES, labels)}
    sc = rng.uniform(0.95, 1.05)
    dx, dy = rng.uniform(-4, 4, 2)

    def P(x, y):  # canonical face frame -> image frame (pose jitter: scale and shift)
        return 112 + sc * (x - 112) + dx, 120 + sc * (y - 120) + dy

    lm = np.array([P(x, y) for x, y in MEAN_LANDMARKS]) + rng.normal(0, 0.7, (5, 2))
    lm[2, 0] += rng.normal(0, 2.6)  # yaw: the nose leaves the eye–mouth axis
    (elx, ely), (erx, ery), (nx, ny), (mlx, mly), (mrx, mry) = lm

    bg = tuple(int(v) for v in rng.integers(30, 226, 3))
    img = Image.new("RGB", (FRAME, FRAME), bg)
    cv = _Canvas(img)
    for _ in range(rng.integers(2, 5)):  # background clutter
        x, y = rng.uniform(0, FRAME, 2)
        r = rng.uniform(8, 30)
        cv.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))

    male, chubby, oval = has["Male"], has["Chubby"], has["Oval_Face"]
    skin = PALE_RGB if has["Pale_Skin"] else SKIN_RGB[rng.integers(len(SKIN_RGB))]
    skin = _shade(skin, rng.uniform(0.96, 1.04))
    hair_name = next((h for h in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") if has[h]),
                     None)
    hair = _shade(HAIR_RGB[hair_name], rng.uniform(0.9, 1.1))
    hair_cues = [h for h in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair",
                             "Straight_Hair", "Wavy_Hair") if has[h]]
    cx, cy = P(112, 118)
    a = sc * (58 if chubby else 44 if oval else 50)
    b = sc * (72 if oval else 66)

    # shoulders and clothes
    cloth = tuple(int(v) for v in rng.integers(0, 256, 3))
    half = (88 if male else 66) * sc
    cv.polygon([(cx - half, 224), (cx - half + 22, cy + 78), (cx + half - 22, cy + 78),
                (cx + half, 224)], cloth, cue="Male" if male else None)
    cv.polygon([(cx - 16 * sc, cy + 40), (cx + 16 * sc, cy + 40), (cx + 16 * sc, cy + 84),
                (cx - 16 * sc, cy + 84)], skin)

    # hair behind the head: long for women, short for men; bald heads keep only the sides
    if male:
        back = [cx - a - 13 * sc, cy - b - 12 * sc, cx + a + 13 * sc, cy + 22 * sc]
    else:
        back = [cx - a - 20 * sc, cy - b - 12 * sc, cx + a + 20 * sc, cy + 92 * sc]
    if has["Bald"]:
        back[1] = cy - 20 * sc
    back = [round(float(v), 2) for v in back] + [round(40 * sc, 2)]
    hair_layer = Image.new("L", (FRAME, FRAME), 0)
    ImageDraw.Draw(hair_layer).rounded_rectangle(back[:4], radius=back[4], fill=255)
    _hair_fill(img, hair_layer, hair, has, rng)
    cv._record(hair_cues + ([] if male else ["Male"]), ["rounded", back, 0])

    # ears and the face
    for ex in (cx - a - 2 * sc, cx + a + 2 * sc):
        cv.ellipse([ex - 8 * sc, cy - 18 * sc, ex + 8 * sc, cy + 18 * sc], fill=_shade(skin, 0.93))
    cv.ellipse([cx - a, cy - b, cx + a, cy + b], fill=skin,
               cue=[c for c in ("Chubby", "Oval_Face", "Pale_Skin") if has[c]])
    cv._record(hair_cues + ([] if male else ["Male"]),
               ["-ellipse", [round(float(v), 2) for v in (cx - a, cy - b, cx + a, cy + b)], 0])
    if male:  # a square jaw
        jaw = [(cx - a + 3, cy + 10), (cx + a - 3, cy + 10), (cx + a - 12 * sc, cy + b - 6 * sc),
               (cx - a + 12 * sc, cy + b - 6 * sc)]
        cv.polygon(jaw, skin, cue="Male")
    if has["Bald"]:
        cv.ellipse([cx - a + 2, cy - b - 14 * sc, cx + a - 2, cy - b + 50 * sc], fill=skin,
                   cue="Bald")
        cv.ellipse([cx - 18 * sc, cy - b - 6 * sc, cx + 6 * sc, cy - b + 8 * sc],
                   fill=_shade(skin, 1.08, (12, 12, 12)), cue="Bald")
    else:  # hairline over the top of the forehead
        top = cy - b
        cv.polygon(_arc(cx, top + 12 * sc, a - 2, 20 * sc, 180, 360, 13), hair, cue=hair_cues)
        if has["Receding_Hairline"]:
            for side in (-1, 1):
                t = cx + side * 22 * sc
                cv.polygon([(t - 12 * sc, top + 2), (t + 12 * sc, top + 2), (t + side * 4, top + 24 * sc)],
                           skin, cue="Receding_Hairline")
    if has["Bangs"]:
        pts = [(cx - 40 * sc, cy - 52 * sc), (cx + 40 * sc, cy - 52 * sc)]
        pts += [(cx + 40 * sc - i * 10 * sc, cy - (30 + 5 * (i % 2)) * sc) for i in range(9)]
        cv.polygon(pts, hair, cue="Bangs")

    _eyes(cv, has, skin, hair, sc, (elx, ely), (erx, ery), rng)
    _lower_face(cv, has, skin, hair, sc, cx, cy, a, b, (nx, ny), (mlx, mly), (mrx, mry), rng)
    _accessories(cv, has, sc, cx, cy, a, b, rng)
    _age_and_looks(cv, has, skin, sc, cx, cy, a, b, rng)

    if has["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 2.8)))
        cv.cues["Blurry"] = [["polygon", [0, 0, FRAME, 0, FRAME, FRAME, 0, FRAME], 0]]
    img = _add_noise(img, rng)
    return img, lm.reshape(-1), cv.cues


def _hair_fill(img, layer, hair, has, rng):
    """Paint the hair shape with its colour and its texture (straight or wavy strands)."""
    tex = Image.new("RGB", (FRAME, FRAME), hair)
    d = ImageDraw.Draw(tex)
    dark = _shade(hair, 0.7)
    if has["Straight_Hair"]:
        for x in np.arange(rng.uniform(0, 6), FRAME, 6):
            d.line([(x, 0), (x, FRAME)], fill=dark, width=2)
    elif has["Wavy_Hair"]:
        y = np.arange(0, FRAME, 4)
        for x in np.arange(rng.uniform(0, 9), FRAME, 9):
            d.line(list(zip(x + 4 * np.sin(y / 7.0), y)), fill=dark, width=2)
    img.paste(tex, (0, 0), layer)


def _eyes(cv, has, skin, hair, sc, le, re, rng):
    brow = _shade(hair, 0.55) if hair[0] > 150 else _shade(hair, 0.9)
    h = (2.3 if has["Narrow_Eyes"] else 5.5) * sc
    for ex, ey in (le, re):
        if has["Arched_Eyebrows"]:
            cv.line([(ex - 13 * sc, ey - 11 * sc), (ex, ey - 21 * sc), (ex + 13 * sc, ey - 12 * sc)],
                    brow, 7 if has["Bushy_Eyebrows"] else 3,
                    cue=[c for c in ("Arched_Eyebrows", "Bushy_Eyebrows") if has[c]])
        else:
            cv.line([(ex - 13 * sc, ey - 14 * sc), (ex + 13 * sc, ey - 15 * sc)], brow,
                    7 if has["Bushy_Eyebrows"] else 3, cue="Bushy_Eyebrows" if has["Bushy_Eyebrows"] else None)
        if has["Bags_Under_Eyes"]:
            cv.line(_arc(ex, ey + 4 * sc, 9 * sc, 6 * sc, 20, 160), _shade(skin, 0.7), 3,
                    cue="Bags_Under_Eyes")
        cue = "Narrow_Eyes" if has["Narrow_Eyes"] else None
        cv.ellipse([ex - 10 * sc, ey - h, ex + 10 * sc, ey + h], fill=(240, 240, 236), cue=cue)
        r = min(4.2 * sc, h)
        cv.ellipse([ex - 4.2 * sc, ey - r, ex + 4.2 * sc, ey + r], fill=(50, 35, 25), cue=cue)
    if has["Eyeglasses"]:
        frame = tuple(int(v) for v in rng.integers(0, 90, 3))
        for ex, ey in (le, re):
            cv.ellipse([ex - 16 * sc, ey - 11 * sc, ex + 16 * sc, ey + 11 * sc], outline=frame,
                       width=3, cue="Eyeglasses")
        cv.line([(le[0] + 16 * sc, le[1]), (re[0] - 16 * sc, re[1])], frame, 3, cue="Eyeglasses")


def _lower_face(cv, has, skin, hair, sc, cx, cy, a, b, nose, ml, mr, rng):
    nx, ny = nose
    shade = _shade(skin, 0.78)
    if has["Heavy_Makeup"]:
        for side in (-1, 1):
            x = cx + side * 30 * sc
            cv.polygon([(x - 6 * sc, ny - 8 * sc), (x + 6 * sc, ny - 10 * sc),
                        (x + side * 4 * sc + 4, ny + 14 * sc), (x + side * 4 * sc - 4, ny + 14 * sc)],
                       (150, 70, 110), cue="Heavy_Makeup")
    if has["Rosy_Cheeks"]:
        for side in (-1, 1):
            x, y = cx + side * 30 * sc, ny + 2 * sc
            cv.ellipse([x - 9 * sc, y - 7 * sc, x + 9 * sc, y + 7 * sc], fill=(232, 96, 100),
                       cue="Rosy_Cheeks")
    if has["High_Cheekbones"]:
        for side in (-1, 1):
            x = cx + side * 28 * sc
            cv.line(_arc(x, ny - 2 * sc, 12 * sc, 5 * sc, 200, 340), _shade(skin, 1.15, (25, 25, 25)),
                    4, cue="High_Cheekbones")
    if has["5_o_Clock_Shadow"]:
        n = 260
        xs = rng.uniform(cx - a + 10, cx + a - 10, n)
        ys = rng.uniform(ny + 4 * sc, cy + 40 * sc, n)
        cv.points(list(zip(xs, ys)), (60, 55, 55), cue="5_o_Clock_Shadow")
    if not has["No_Beard"]:
        beard = _shade(hair, 0.8) if hair[0] < 150 else (80, 60, 45)
        pts = [(cx - a + 4, ny), (cx - a + 14 * sc, ny + 2 * sc), (ml[0] - 6 * sc, ml[1] + 8 * sc),
               (mr[0] + 6 * sc, mr[1] + 8 * sc), (cx + a - 14 * sc, ny + 2 * sc), (cx + a - 4, ny),
               (cx + a - 10 * sc, cy + 42 * sc), (cx + 20 * sc, cy + 48 * sc),
               (cx - 20 * sc, cy + 48 * sc), (cx - a + 10 * sc, cy + 42 * sc)]
        cv.polygon(pts, beard, cue="No_Beard")
    # nose
    if has["Big_Nose"]:
        hw, top = 15 * sc, 24 * sc
    elif has["Pointy_Nose"]:
        hw, top = 5 * sc, 26 * sc
    else:
        hw, top = 8.5 * sc, 20 * sc
    tip = ny + (7 * sc if has["Pointy_Nose"] else 3 * sc)
    nose_cue = [c for c in ("Big_Nose", "Pointy_Nose") if has[c]]
    cv.polygon([(nx, ny - top), (nx + hw, ny + 3 * sc), (nx, tip), (nx - hw, ny + 3 * sc)], shade,
               cue=nose_cue)
    for side in (-1, 1):
        r = (3.5 if has["Big_Nose"] else 2) * sc
        x = nx + side * hw * 0.55
        cv.ellipse([x - r, ny - r + 2, x + r, ny + r + 2], fill=_shade(skin, 0.45), cue=nose_cue)
    # mouth
    my = (ml[1] + mr[1]) / 2
    thick = (7 if has["Big_Lips"] else 3.5) * sc
    lip = ((205, 25, 60) if has["Wearing_Lipstick"] else _shade(skin, 0.85, (22, 0, 0)))
    lip_cue = [c for c in ("Big_Lips", "Wearing_Lipstick", "Smiling", "Mouth_Slightly_Open")
               if has[c]]
    lift = 7 * sc if has["Smiling"] else 0.0
    gap = 5 * sc if has["Mouth_Slightly_Open"] else 0.0
    xs = np.linspace(ml[0], mr[0], 11)
    u = np.clip((xs - xs.mean()) / max((xs[-1] - xs[0]) / 2, 1), -1, 1)
    mid = my + lift * (1 - u ** 2) * 0.8 - lift * 0.3
    upper = list(zip(xs, mid - gap / 2 - thick * (1 - u ** 2) ** 0.5))
    lower = list(zip(xs[::-1], (mid + gap / 2 + thick * (1 - u ** 2) ** 0.5)[::-1]))
    if gap or has["Smiling"]:
        inner = list(zip(xs, mid - gap / 2)) + list(zip(xs[::-1], (mid + gap / 2)[::-1]))
        cv.polygon(inner if gap else upper + lower, (245, 245, 240) if has["Smiling"] else (60, 20, 25),
                   cue=lip_cue)
    cv.polygon(upper + list(zip(xs[::-1], (mid - gap / 2)[::-1])), lip, cue=lip_cue)
    cv.polygon(list(zip(xs, mid + gap / 2)) + lower, lip, cue=lip_cue)
    if has["Mustache"]:
        cv.polygon([(ml[0] - 3 * sc, my - 8 * sc), (mr[0] + 3 * sc, my - 8 * sc),
                    (mr[0] + 5 * sc, my - 2 * sc), (ml[0] - 5 * sc, my - 2 * sc)],
                   (50, 38, 32), cue="Mustache")
    if has["Goatee"]:
        cv.ellipse([cx - 10 * sc, cy + 44 * sc, cx + 10 * sc, cy + 64 * sc], fill=(52, 40, 34),
                   cue="Goatee")
    if has["Double_Chin"]:
        chin = cy + b
        cv.line(_arc(cx, chin - 4 * sc, 26 * sc, 9 * sc, 15, 165), _shade(skin, 0.72), 4,
                cue="Double_Chin")


def _accessories(cv, has, sc, cx, cy, a, b, rng):
    if has["Sideburns"]:
        for x in (cx - a + 1, cx + a - 9 * sc):
            cv.polygon([(x, cy - 22 * sc), (x + 8 * sc, cy - 22 * sc), (x + 8 * sc, cy + 18 * sc),
                        (x, cy + 24 * sc)], (45, 35, 30), cue="Sideburns")
    if has["Wearing_Earrings"]:
        metal = (230, 190, 60) if rng.random() < 0.5 else (205, 210, 215)
        for ex in (cx - a - 3 * sc, cx + a + 3 * sc):
            cv.ellipse([ex - 4 * sc, cy + 18 * sc, ex + 4 * sc, cy + 30 * sc], outline=metal, width=3,
                       cue="Wearing_Earrings")
    if has["Wearing_Hat"]:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        top = cy - b
        cv.polygon([(cx - 46 * sc, top + 14 * sc), (cx - 38 * sc, top - 44 * sc),
                    (cx + 38 * sc, top - 44 * sc), (cx + 46 * sc, top + 14 * sc)], colour,
                   cue="Wearing_Hat")
        cv.ellipse([cx - 74 * sc, top + 2 * sc, cx + 74 * sc, top + 22 * sc], fill=_shade(colour, 0.8),
                   cue="Wearing_Hat")
    if has["Wearing_Necklace"]:
        bead = (236, 200, 70) if rng.random() < 0.5 else (235, 235, 240)
        for x, y in _arc(cx, cy + 66 * sc, 22 * sc, 14 * sc, 20, 160, 11):
            cv.ellipse([x - 2.6 * sc, y - 2.6 * sc, x + 2.6 * sc, y + 2.6 * sc], fill=bead,
                       cue="Wearing_Necklace")
    if has["Wearing_Necktie"]:
        tie = tuple(int(v) for v in rng.integers(0, 256, 3))
        y0 = cy + 78 * sc
        cv.polygon([(cx - 14 * sc, y0 - 4), (cx + 14 * sc, y0 - 4), (cx, y0 + 8 * sc)], (245, 245, 245),
                   cue="Wearing_Necktie")
        cv.polygon([(cx - 6 * sc, y0 + 2), (cx + 6 * sc, y0 + 2), (cx + 11 * sc, 224), (cx - 11 * sc, 224)],
                   tie, cue="Wearing_Necktie")


def _age_and_looks(cv, has, skin, sc, cx, cy, a, b, rng):
    line = _shade(skin, 0.68)
    if not has["Young"]:
        for k in range(3):  # forehead wrinkles, crow's feet, nasolabial folds
            y = cy - 44 * sc + 6 * k * sc
            cv.line([(cx - 24 * sc, y), (cx, y - 2), (cx + 24 * sc, y)], line, 2, cue="Young")
        for side in (-1, 1):
            x = cx + side * 40 * sc
            cv.line([(x, cy - 16 * sc), (x + side * 7 * sc, cy - 20 * sc)], line, 2, cue="Young")
            cv.line([(x, cy - 12 * sc), (x + side * 7 * sc, cy - 10 * sc)], line, 2, cue="Young")
            cv.line([(cx + side * 13 * sc, cy + 10 * sc), (cx + side * 20 * sc, cy + 26 * sc)], line, 2,
                    cue="Young")
    if has["Attractive"]:
        cv.ellipse([cx - 14 * sc, cy - 50 * sc, cx + 14 * sc, cy - 40 * sc],
                   fill=_shade(skin, 1.06, (14, 14, 14)), cue="Attractive")
    else:
        xs = rng.uniform(cx - a + 12, cx + a - 12, 7)
        ys = rng.uniform(cy - 30 * sc, cy + 40 * sc, 7)
        for x, y in zip(xs, ys):
            cv.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(150, 70, 60), cue="Attractive")


def _add_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian sensor noise from a fixed bank at a random offset, random strength and gain."""
    y, x = rng.integers(0, 512 - FRAME, 2)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    arr += _NOISE[y:y + FRAME, x:x + FRAME] * rng.uniform(2, 9)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
