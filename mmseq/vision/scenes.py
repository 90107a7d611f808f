"""Built-in street scenes in three visual domains, with exact 19-class labels, written in the Cityscapes layout.

``render_scene(seed, index, domain)`` draws one scene; ``make_street_scenes(out_dir, domain, n)`` writes ``n`` of
them where the Cityscapes reader expects them (refs/mfuser.md section 13)::

    out_dir/README.md
    out_dir/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png           RGB
    out_dir/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelTrainIds.png      train ids, 255 ignore
    out_dir/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png           Cityscapes ids, 0 ignore
    out_dir/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_color.png              the palette colours

A scene is a small 3D street seen by a car-mounted pinhole camera (height, pitch and yaw, i.e. the horizon and the
vanishing point, drawn per scene): a road of 1-4 lanes with lane markings, parking strips and sometimes a
crossing side street with a zebra crossing, curbs and sidewalks on both sides, lots of buildings (facades with
windows and shop fronts), parks, walls and fences along the street, far buildings and trees closing the view,
street trees, lamps, traffic lights and signs, parked and moving cars, trucks, buses, now and then a tram, riders
on bicycles and motorcycles, pedestrians, bins (ignore) and sometimes the ego car's hood (ignore). The street may
curve. Every surface is a 3D polygon projected into the image and painted far to near into an instance map, so
occlusion and scale by depth come out right; the label is the class of each instance.

The layout (geometry and labels) depends only on ``(seed, index)`` and the image size; the domain only changes how
the instances are painted, so a scene has the identical label map in every domain:

* ``synthetic``: flat shading, one saturated colour per class with a small per-object jitter, no texture or light
  (the source domain, like a game engine with its effects off).
* ``realistic``: other colours (asphalt greys, brick and plaster, car paints, clothes), procedural textures in
  world coordinates (asphalt grain, paving tiles, bricks, foliage), sun and sky light with cast shadows and
  shadows under cars, haze with depth, lens blur, vignetting and a per-scene grade.
* ``adverse``: the realistic rendering of the same scene under fog, night, rain or sensor noise, one per scene
  (see :func:`adverse_effect`).

Output is a pure function of the arguments: the same call gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmseq.errors import UserError

from .labels import CLASSES, IGNORE, NUM_CLASSES, TRAIN_TO_CITYSCAPES, colorize

__all__ = ["ADVERSE_EFFECTS", "DOMAINS", "adverse_effect", "make_street_scenes", "render_scene"]

DOMAINS = ("synthetic", "realistic", "adverse")
ADVERSE_EFFECTS = ("fog", "night", "rain", "noise")
MIN_SIZE = 64
FRAME = 19  # Cityscapes names its annotated frames ..._000019_...
TRAIN_CITIES = 3  # train scenes go round-robin to <domain>0..2, val scenes to <domain>3

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS,
 TRAIN, MOTORCYCLE, BICYCLE) = range(NUM_CLASSES)

# Materials: what an instance is made of. Labels never look at them; the realistic painter picks colours and
# textures by material, so e.g. lane paint (class road) and windows (class building) look like themselves.
(M_SKY, M_ASPHALT, M_PAINT, M_PAVING, M_CURB, M_GRASS, M_FOLIAGE, M_BARK, M_BRICK, M_PLASTER, M_CONCRETE,
 M_WINDOW, M_SHOP, M_FENCE, M_MESH, M_METAL, M_LAMP, M_BODY, M_GLASS, M_TIRE, M_TAIL, M_HEAD, M_SKIN, M_TOP,
 M_BOTTOM, M_DARK, M_SIGN, M_SIGN2, M_TL_BOX, M_TL_OFF, M_TL_RED, M_TL_AMBER, M_TL_GREEN, M_MISC, M_EGO,
 M_BUSBODY, M_PAINT_Y) = range(37)
N_MAT = 37
GROUND_MATS = (M_ASPHALT, M_PAINT, M_PAINT_Y, M_PAVING, M_CURB, M_GRASS)
EMITTERS = (M_LAMP, M_TAIL, M_HEAD, M_TL_RED, M_TL_AMBER, M_TL_GREEN)

# Synthetic domain: one saturated colour per train id (deliberately not the label palette), grey for ignore.
SYNTHETIC_COLORS: tuple[tuple[int, int, int], ...] = (
    (120, 60, 200), (255, 90, 210), (235, 130, 40), (200, 200, 50), (230, 170, 110), (60, 70, 255),
    (255, 190, 0), (255, 255, 150), (30, 210, 40), (160, 255, 90), (70, 190, 255), (255, 20, 70), (255, 80, 0),
    (20, 30, 240), (0, 200, 210), (0, 140, 130), (150, 0, 220), (220, 0, 255), (170, 20, 80),
)
SYNTHETIC_IGNORE = (128, 128, 128)

# Realistic domain: candidate sRGB colours per material; each object draws one, then jitters it.
_REAL_COLORS: dict[int, list[tuple[int, int, int]]] = {
    M_SKY: [(135, 170, 215)],
    M_ASPHALT: [(88, 88, 92), (75, 74, 78), (100, 98, 96), (66, 68, 72)],
    M_PAINT: [(225, 225, 218), (228, 226, 215), (215, 215, 210)],
    M_PAINT_Y: [(232, 190, 60), (225, 175, 50)],
    M_PAVING: [(165, 160, 152), (150, 148, 145), (178, 165, 150), (140, 130, 125), (120, 118, 118)],
    M_CURB: [(170, 168, 160), (150, 150, 148)],
    M_GRASS: [(95, 125, 55), (110, 130, 60), (80, 110, 50), (125, 130, 70)],
    M_FOLIAGE: [(55, 85, 35), (70, 95, 40), (45, 70, 35), (85, 100, 45), (60, 80, 50)],
    M_BARK: [(80, 65, 55), (95, 85, 75)],
    M_BRICK: [(150, 80, 60), (135, 70, 55), (165, 100, 75), (120, 75, 65)],
    M_PLASTER: [(215, 205, 185), (200, 195, 185), (225, 215, 195), (190, 170, 150), (205, 180, 140),
                (180, 185, 190), (225, 225, 220), (170, 160, 150)],
    M_CONCRETE: [(160, 160, 158), (140, 140, 140), (175, 170, 162), (125, 125, 130)],
    M_WINDOW: [(45, 55, 65), (60, 70, 85), (35, 40, 48), (80, 90, 100)],
    M_SHOP: [(40, 48, 55), (55, 60, 70), (70, 60, 50)],
    M_FENCE: [(60, 80, 65), (110, 90, 70), (90, 90, 95), (140, 130, 120)],
    M_MESH: [(90, 105, 95), (110, 115, 115)],
    M_METAL: [(110, 112, 115), (90, 95, 92), (130, 130, 125), (70, 75, 80)],
    M_LAMP: [(200, 200, 190)],
    M_BODY: [(220, 220, 222), (30, 32, 36), (150, 152, 158), (95, 98, 104), (40, 60, 120), (150, 30, 30),
             (35, 60, 45), (190, 180, 160), (110, 20, 25), (60, 80, 110)],
    M_BUSBODY: [(230, 190, 40), (200, 40, 35), (225, 225, 220), (40, 90, 160), (60, 130, 80)],
    M_GLASS: [(30, 36, 42), (40, 48, 58)],
    M_TIRE: [(28, 28, 30)],
    M_TAIL: [(170, 20, 25)],
    M_HEAD: [(225, 225, 215)],
    M_SKIN: [(225, 185, 160), (190, 140, 110), (140, 95, 70), (95, 65, 50), (235, 200, 180)],
    M_TOP: [(40, 45, 60), (150, 40, 40), (200, 200, 195), (60, 90, 60), (30, 30, 32), (120, 110, 90),
            (70, 100, 150), (180, 150, 60)],
    M_BOTTOM: [(40, 45, 60), (30, 30, 32), (80, 80, 85), (120, 100, 80), (50, 60, 90)],
    M_DARK: [(25, 25, 27), (45, 40, 35)],
    M_SIGN: [(190, 25, 30), (25, 70, 160), (230, 180, 20), (30, 120, 60)],
    M_SIGN2: [(235, 235, 230)],
    M_TL_BOX: [(30, 32, 30), (50, 52, 40)],
    M_TL_OFF: [(40, 40, 38)],
    M_TL_RED: [(255, 40, 30)],
    M_TL_AMBER: [(255, 170, 20)],
    M_TL_GREEN: [(40, 255, 120)],
    M_MISC: [(60, 90, 60), (100, 100, 100), (130, 90, 40)],
    M_EGO: [(20, 22, 25), (60, 62, 68), (90, 20, 25)],
}
# Per-object brightness jitter (std of a multiplicative factor) per material; emitters and sky stay put.
_JITTER = np.full(N_MAT, 0.08, dtype=np.float32)
_JITTER[[M_SKY, M_LAMP, M_TAIL, M_HEAD, M_TL_RED, M_TL_AMBER, M_TL_GREEN, M_SIGN2]] = 0.0
_JITTER[[M_FOLIAGE, M_GRASS, M_WINDOW]] = 0.15

ZNEAR = 0.5  # m: geometry in front of this plane is clipped away


def _palette_table() -> tuple[np.ndarray, np.ndarray]:
    """[N_MAT, K, 3] linear-light colours (padded) and [N_MAT] counts."""
    k = max(len(v) for v in _REAL_COLORS.values())
    table = np.zeros((N_MAT, k, 3), dtype=np.float32)
    counts = np.ones(N_MAT, dtype=np.int64)
    for m, cols in _REAL_COLORS.items():
        table[m, : len(cols)] = (np.asarray(cols, dtype=np.float32) / 255.0) ** 2.2
        counts[m] = len(cols)
    return table, counts


_PAL, _PAL_N = _palette_table()


# --------------------------------------------------------------------------------------------------- camera


@dataclass
class _Camera:
    """Pinhole camera at street X = -c0, height h, looking along +Z; the street centre bends by k * Z^2."""

    H: int
    W: int
    f: float  # focal length, px
    cx: float  # column of the vanishing point
    yh: float  # row of the horizon
    h: float  # camera height, m
    c0: float  # street centre's lateral offset in camera coordinates, m
    k: float  # street curvature, 1/m

    def to_cam(self, P: np.ndarray) -> np.ndarray:
        """Street coordinates [N, 3] (X right, Y up, Z forward) -> camera coordinates (camera at the origin)."""
        C = np.array(P, dtype=np.float64)
        C[:, 0] += self.c0 + self.k * C[:, 2] ** 2
        C[:, 1] -= self.h
        return C

    def project(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Street coordinates [N, 3] (Z > 0) -> pixel coordinates x [N], y [N]."""
        C = self.to_cam(P)
        return self.cx + self.f * C[:, 0] / C[:, 2], self.yh - self.f * C[:, 1] / C[:, 2]


def _clip_near(P: np.ndarray) -> np.ndarray:
    """Clip a polygon [N, 3] to Z >= ZNEAR (one Sutherland-Hodgman pass)."""
    inside = P[:, 2] >= ZNEAR
    if inside.all():
        return P
    if not inside.any():
        return P[:0]
    out = []
    n = len(P)
    for i in range(n):
        a, b = P[i], P[(i + 1) % n]
        if inside[i]:
            out.append(a)
        if inside[i] != inside[(i + 1) % n]:
            t = (ZNEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.asarray(out)


def _newell(C: np.ndarray) -> np.ndarray:
    """Unit normal of a polygon [N, 3] (Newell's method; any winding)."""
    b = np.concatenate((C[1:], C[:1]))
    n = ((C - b)[:, [1, 2, 0]] * (C + b)[:, [2, 0, 1]]).sum(axis=0)
    norm = math.sqrt(float(n @ n))
    return n / norm if norm > 1e-12 else np.array([0.0, 0.0, -1.0])


# --------------------------------------------------------------------------------------------------- raster

# A drawing op: ("poly", P [N, 3], cls, mat) or ("line", P [N, 3], cls, mat, width_m); P in street coordinates.
Op = tuple


@dataclass
class _Scene:
    """A laid-out scene: the instance map and, per instance, class, material, object, normal, inverse depth."""

    cam: _Camera
    inst: np.ndarray  # [H, W] int32 instance id, 0 = sky
    cls: np.ndarray  # [n] uint8 train id (255 ignore)
    mat: np.ndarray  # [n] uint8 material
    obj: np.ndarray  # [n] int32 object id (parts of one car share it)
    nrm: np.ndarray  # [n, 3] float32 unit normal in camera coordinates, facing the camera
    dep: np.ndarray  # [n, 5] float64: 1/Z = a + b * x + c * y over the instance's pixels; Z's range (min, max)
    casters: list = field(default_factory=list)  # (footprint [N, 2] street X, Z; height m) for sun shadows
    blobs: list = field(default_factory=list)  # footprints [N, 2] darkened under cars (ambient occlusion)
    lamps: list = field(default_factory=list)  # street-lamp heads (X, Y, Z) for the night
    effect: str = "fog"

    @property
    def label(self) -> np.ndarray:
        return self.cls[self.inst]


class _Raster:
    """Paints ops into an instance-id image with PIL; each poly / line becomes one instance."""

    def __init__(self, cam: _Camera):
        self.cam = cam
        self.img = Image.new("I", (cam.W, cam.H), 0)
        self.draw = ImageDraw.Draw(self.img)
        self.cls, self.mat, self.obj = [SKY], [M_SKY], [0]
        self.nrm: list = [np.array([0.0, 0.0, -1.0])]
        self.dep: list = [(0.0, 0.0, 0.0, 1e4, 1e4)]
        self.n_obj = 1

    def _visible(self, x: np.ndarray, y: np.ndarray, pad: float = 0.0) -> bool:
        return not (x.max() < -pad or x.min() > self.cam.W + pad or y.max() < -pad or y.min() > self.cam.H + pad)

    def _add(self, cls: int, mat: int, obj: int, nrm: np.ndarray, dep: tuple) -> int:
        self.cls.append(cls)
        self.mat.append(mat)
        self.obj.append(obj)
        self.nrm.append(nrm)
        self.dep.append(dep)
        return len(self.cls) - 1

    def poly(self, P: np.ndarray, cls: int, mat: int, obj: int) -> None:
        P = _clip_near(P)
        if len(P) < 3:
            return
        cam = self.cam
        C = cam.to_cam(P)
        iz = 1.0 / C[:, 2]
        x = cam.cx + cam.f * C[:, 0] * iz
        y = cam.yh - cam.f * C[:, 1] * iz
        if not self._visible(x, y):
            return
        n = _newell(C)
        c = C.mean(axis=0)
        dd = float(n @ c)
        if dd > 0:  # face the camera: it is the side we see
            n, dd = -n, -dd
        if -dd < 1e-3 * math.sqrt(float(c @ c)):  # seen edge-on: a sliver, one depth will do
            dep = (float(iz.mean()), 0.0, 0.0)
        else:  # the plane n.P = dd gives 1/Z exactly as an affine function of the pixel (x, y)
            f = cam.f
            dep = ((n[2] - n[0] * cam.cx / f + n[1] * cam.yh / f) / dd, n[0] / (f * dd), -n[1] / (f * dd))
        i = self._add(cls, mat, obj, n, (*dep, float(C[:, 2].min()), float(C[:, 2].max())))
        self.draw.polygon(np.stack([x, y], axis=1).ravel().tolist(), fill=i)

    def line(self, P: np.ndarray, cls: int, mat: int, obj: int, width: float) -> None:
        if P[:, 2].min() < ZNEAR:
            return
        x, y = self.cam.project(P)
        z = float(P[:, 2].mean())
        px = width * self.cam.f / z
        if not self._visible(x, y, px):
            return
        C = self.cam.to_cam(P).mean(axis=0)
        n = np.array([-C[0], 0.0, -C[2]])
        n /= max(float(np.linalg.norm(n)), 1e-9)
        i = self._add(cls, mat, obj, n, (1.0 / z, 0.0, 0.0, z, z))
        w = max(1, int(round(px)))
        self.draw.line(np.stack([x, y], axis=1).ravel().tolist(), fill=i, width=w, joint="curve" if w > 2 else None)

    def run(self, ops: Sequence[Op]) -> None:
        obj = self.n_obj
        self.n_obj += 1
        for op in ops:
            if op[0] == "poly":
                self.poly(op[1], op[2], op[3], obj)
            else:
                self.line(op[1], op[2], op[3], obj, op[4])

    def finish(self, **extra: Any) -> _Scene:
        return _Scene(
            cam=self.cam, inst=np.asarray(self.img, dtype=np.int32).copy(),
            cls=np.asarray(self.cls, dtype=np.uint8), mat=np.asarray(self.mat, dtype=np.uint8),
            obj=np.asarray(self.obj, dtype=np.int32), nrm=np.asarray(self.nrm, dtype=np.float32),
            dep=np.asarray(self.dep, dtype=np.float64), **extra,
        )


# --------------------------------------------------------------------------------------------------- shapes


def _zs(z0: float, z1: float, curved: bool, step: float = 4.0) -> np.ndarray:
    """Sample points along Z so that long edges follow a curved street (2 points on a straight one)."""
    if not curved:
        return np.array([z0, z1])
    n = max(2, int(math.ceil((z1 - z0) / step)) + 1)
    return np.linspace(z0, z1, n)


def _ground(x0: float, x1: float, y: float, z0: float, z1: float, curved: bool) -> np.ndarray:
    """Horizontal strip X in [x0, x1] at height y, Z in [z0, z1]."""
    z = _zs(z0, z1, curved)
    near = np.stack([np.full_like(z, x0), np.full_like(z, y), z], axis=1)
    far = np.stack([np.full_like(z, x1), np.full_like(z, y), z], axis=1)[::-1]
    return np.concatenate([near, far])


def _side(x: float, y0: float, y1: float, z0: float, z1: float, curved: bool) -> np.ndarray:
    """Vertical plane X = x, Y in [y0, y1], Z in [z0, z1] (a facade, a wall's street face)."""
    z = _zs(z0, z1, curved)
    lo = np.stack([np.full_like(z, x), np.full_like(z, y0), z], axis=1)
    hi = np.stack([np.full_like(z, x), np.full_like(z, y1), z], axis=1)[::-1]
    return np.concatenate([lo, hi])


def _front(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """Vertical plane Z = z facing the camera."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)


def _blob(cx: float, cy: float, z: float, rx: float, ry: float, amp: np.ndarray | None = None,
          phase: np.ndarray | None = None, n: int = 18) -> np.ndarray:
    """A facing-the-camera disc at depth z, its radius wobbled by harmonics 3, 5, 7 (tree crowns, heads)."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    r = np.ones_like(t)
    if amp is not None and phase is not None:
        for a, p, h in zip(amp, phase, (3, 5, 7)):
            r = r + a * np.sin(h * t + p)
    return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t), np.full_like(t, z)], axis=1)


_BOX_NAMES = ("rear", "right", "front", "left", "top", "bottom")
_BOX_FACES = np.array([[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7], [4, 5, 6, 7], [0, 3, 2, 1]])


class _Frame:
    """Local frame of an object at footprint centre (X0, Z0), heading th (0 = driving away along +Z).

    Local coordinates are (u right, v up, w forward)."""

    def __init__(self, cam: _Camera, X0: float, Z0: float, th: float, y0: float = 0.0):
        self.cam, self.X0, self.Z0, self.y0 = cam, X0, Z0, y0
        self.f = (math.sin(th), math.cos(th))
        self.r = (math.cos(th), -math.sin(th))

    def __call__(self, L: np.ndarray | list) -> np.ndarray:
        L = np.asarray(L, dtype=np.float64)
        X = self.X0 + L[:, 0] * self.r[0] + L[:, 2] * self.f[0]
        Z = self.Z0 + L[:, 0] * self.r[1] + L[:, 2] * self.f[1]
        return np.stack([X, L[:, 1] + self.y0, Z], axis=1)

    def box(self, u0: float, u1: float, v0: float, v1: float, w0: float, w1: float,
            top: tuple[float, float, float, float] | None = None) -> dict[str, np.ndarray]:
        """The camera-facing faces of a box (its top optionally inset: (u0, u1, w0, w1)) by name:
        rear (w0), front (w1), left (u0), right (u1), top, bottom (seen on things above the camera)."""
        tu0, tu1, tw0, tw1 = top if top is not None else (u0, u1, w0, w1)
        V = self([[u0, v0, w0], [u1, v0, w0], [u1, v0, w1], [u0, v0, w1],
                  [tu0, v1, tw0], [tu1, v1, tw0], [tu1, v1, tw1], [tu0, v1, tw1]])
        C = self.cam.to_cam(V)
        F = C[_BOX_FACES]  # [5, 4, 3]
        n = np.cross(F[:, 2] - F[:, 0], F[:, 3] - F[:, 1])
        c = F.mean(axis=1)
        n *= np.sign(((c - C.mean(axis=0)) * n).sum(axis=1))[:, None]  # outward
        seen = (n * c).sum(axis=1) < 0  # outward normal points at the camera
        return {name: V[_BOX_FACES[j]] for j, name in enumerate(_BOX_NAMES) if seen[j]}

    def facing(self, axis: str) -> bool:
        """Whether the local +u ("u") or +w ("w") direction points towards the camera."""
        C = self.cam.to_cam(self([[0.0, 1.0, 0.0]]))[0]
        d = self.r if axis == "u" else self.f
        return d[0] * C[0] + d[1] * C[2] < 0


# --------------------------------------------------------------------------------------------------- objects


def _vehicle(cam: _Camera, kind: str, X: float, Z: float, th: float, d: dict[str, Any]) -> list[Op]:
    """A car, truck, bus or tram with footprint centre (X, Z) and heading th; d holds its drawn sizes."""
    cls = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}[kind]
    body_mat = M_BUSBODY if kind in ("bus", "train") else M_BODY
    fr = _Frame(cam, X, Z, th)
    L, Wd, H = d["L"], d["W"], d["H"]
    u0, u1, w0, w1 = -Wd / 2, Wd / 2, -L / 2, L / 2
    r = d["r"]
    axles = [w0 + 0.2 * L, w1 - 0.2 * L] if kind == "car" else [w0 + 0.18 * L, w1 - 0.15 * L]
    if kind == "truck":
        axles.append(w0 + 0.32 * L)
    ops: list[Op] = []
    # Tyre treads first: the body drawn next hides what of them is behind it.
    for wc in axles:
        for uc in (u0 + 0.13, u1 - 0.13):
            for F in fr.box(uc - 0.12, uc + 0.12, 0.0, 2 * r, wc - r * 0.9, wc + r * 0.9).values():
                ops.append(("poly", F, cls, M_TIRE))
    parts: list[tuple[float, list[Op]]] = []  # (distance, ops) drawn far to near
    details: list[Op] = []

    def add_part(faces: dict[str, np.ndarray], mat: int) -> dict[str, np.ndarray]:
        pops = [("poly", F, cls, mat) for F in faces.values()]
        if faces:
            c = cam.to_cam(np.concatenate(list(faces.values()))).mean(axis=0)
            parts.append((float(np.hypot(c[0], c[2])), pops))
        return faces

    def panel(face: str, faces: dict, a0: float, a1: float, v0: float, v1: float, mat: int, out: float = 0.02):
        """A rectangle on a visible box face: a = u on rear/front faces, w on left/right faces."""
        if face not in faces:
            return
        if face in ("rear", "front"):
            w = (w0 - out) if face == "rear" else (w1 + out)
            pts = [[a0, v0, w], [a1, v0, w], [a1, v1, w], [a0, v1, w]]
        else:
            u = (u0 - out) if face == "left" else (u1 + out)
            pts = [[u, v0, a0], [u, v0, a1], [u, v1, a1], [u, v1, a0]]
        details.append(("poly", fr(pts), cls, mat))

    if kind == "car":
        hb = d["hb"]
        body = add_part(fr.box(u0, u1, 0.28, hb, w0, w1, (u0 + 0.04, u1 - 0.04, w0 + 0.06, w1 - 0.12)), body_mat)
        cb = (w0 + 0.14 * L, w0 + 0.68 * L)
        ct = (w0 + 0.28 * L, w0 + 0.55 * L)
        cabin = fr.box(u0 + 0.06, u1 - 0.06, hb, H, cb[0], cb[1], (u0 + 0.2, u1 - 0.2, ct[0], ct[1]))
        add_part(cabin, body_mat)
        for name, F in cabin.items():  # glass: each cabin face shrunk towards its centre
            if name not in ("top", "bottom"):
                c = F.mean(axis=0)
                details.append(("poly", c + 0.78 * (F - c), cls, M_GLASS))
        for s in (-1, 1):
            a, b = sorted((s * (Wd / 2 - 0.06), s * (Wd / 2 - 0.34)))
            panel("rear", body, a, b, hb - 0.24, hb - 0.08, M_TAIL)
            panel("front", body, a, b, hb - 0.22, hb - 0.1, M_HEAD)
    elif kind == "truck":
        lc = d["lc"]
        cab = add_part(fr.box(u0, u1, 0.5, d["hc"], w1 - lc, w1, (u0, u1, w1 - lc, w1 - 0.3)), body_mat)
        cargo = add_part(fr.box(u0 + 0.02, u1 - 0.02, 0.9, H, w0, w1 - lc - 0.25), d["cargo_mat"])
        add_part(fr.box(u0 + 0.3, u1 - 0.3, 0.45, 0.9, w0 + 0.3, w1 - lc), M_DARK)
        panel("front", cab, u0 + 0.15, u1 - 0.15, d["hc"] - 1.0, d["hc"] - 0.2, M_GLASS)
        for s in ("left", "right"):
            panel(s, cab, w1 - lc + 0.2, w1 - 0.5, d["hc"] - 1.0, d["hc"] - 0.25, M_GLASS)
        for s in (-1, 1):
            a, b = sorted((s * (Wd / 2 - 0.1), s * (Wd / 2 - 0.35)))
            panel("rear", cargo, a, b, 1.0, 1.2, M_TAIL)
            panel("front", cab, a, b, 0.7, 0.9, M_HEAD)
    else:  # bus, train
        body = add_part(fr.box(u0, u1, 0.32, H, w0, w1, (u0 + 0.03, u1 - 0.03, w0 + 0.05, w1 - 0.05)), body_mat)
        panel("front", body, u0 + 0.15, u1 - 0.15, 1.05, H - 0.25, M_GLASS)
        panel("rear", body, u0 + 0.25, u1 - 0.25, 1.7, H - 0.4, M_GLASS)
        step = d["win"]
        a = w0 + 0.6
        while a + step * 0.8 < w1 - 1.8:
            for s in ("left", "right"):
                panel(s, body, a, a + step * 0.82, 1.15, H - 0.45, M_GLASS)
            a += step
        for s in (-1, 1):
            lo, hi = sorted((s * (Wd / 2 - 0.12), s * (Wd / 2 - 0.4)))
            panel("rear", body, lo, hi, 0.55, 0.8, M_TAIL)
            panel("front", body, lo, hi, 0.55, 0.75, M_HEAD)
        if kind == "train":  # pantograph
            details.append(("line", fr([[0, H, 0], [0, H + 0.9, 0.5], [0, H + 0.9, -0.5]]), cls, M_METAL, 0.05))
    parts.sort(key=lambda p: -p[0])
    for _, pops in parts:
        ops.extend(pops)
    ops.extend(details)
    # Wheel discs on the outer side planes, where that side faces the camera.
    t = np.linspace(0, 2 * math.pi, 14, endpoint=False)
    for side, u in (("u", u1 + 0.01), ("-u", u0 - 0.01)):
        toward = fr.facing("u")
        if (side == "u") != toward:
            continue
        for wc in axles:
            for rr, mat in ((r, M_TIRE), (0.55 * r, M_METAL)):
                ops.append(("poly", fr(np.stack([np.full_like(t, u), r + rr * np.sin(t), wc + rr * np.cos(t)], 1)),
                            cls, mat))
    return ops


def _circle_local(c: tuple[float, float], r: float, n: int = 14) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n + 1)
    return np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], axis=1)


def _in_plane(fr: _Frame, pts: np.ndarray, plane: str, at: float = 0.0) -> np.ndarray:
    """2D points (a, v) in the local side plane (a = w, u = at) or back plane (a = u, w = at) -> street coords."""
    pts = np.asarray(pts, dtype=np.float64)
    a, v = pts[:, 0], pts[:, 1]
    c = np.full_like(a, at)
    L = np.stack([c, v, a], 1) if plane == "side" else np.stack([a, v, c], 1)
    return fr(L)


def _figure(fr: _Frame, plane: str, kind: str, scale: float, phase: float) -> list[Op]:
    """A person (walking, kind "walk") or a rider (kind "bike" / "moto") as limbs, torso and head in one plane.

    ``plane`` "side" draws the profile in the object's side plane, "back" the front/back view across it."""
    cls = PERSON if kind == "walk" else RIDER
    s = scale
    ops: list[Op] = []

    def limb(pts, width, mat):
        ops.append(("line", _in_plane(fr, np.asarray(pts) * s, plane), cls, mat, width * s))

    def poly(pts, mat):
        ops.append(("poly", _in_plane(fr, np.asarray(pts) * s, plane), cls, mat))

    head_r = 0.14 if kind == "moto" else 0.1
    if kind == "walk" and plane == "side":
        sw = 0.22 * phase
        limb([[0.0, 0.92], [0.1 * phase, 0.5], [sw, 0.04]], 0.15, M_BOTTOM)
        limb([[0.0, 0.92], [-0.06 * phase, 0.5], [-sw, 0.05]], 0.15, M_BOTTOM)
        poly([[-0.11, 0.88], [0.1, 0.88], [0.09, 1.46], [-0.1, 1.46]], M_TOP)
        limb([[0.0, 1.42], [0.12 * phase, 1.0]], 0.09, M_TOP)
        head = (0.02, 1.6)
    elif kind == "walk":
        limb([[-0.09, 0.92], [-0.11 - 0.03 * phase, 0.04]], 0.15, M_BOTTOM)
        limb([[0.09, 0.92], [0.11 + 0.03 * phase, 0.04]], 0.15, M_BOTTOM)
        poly([[-0.17, 0.86], [0.17, 0.86], [0.21, 1.45], [-0.21, 1.45]], M_TOP)
        limb([[-0.22, 1.42], [-0.27, 0.86]], 0.09, M_TOP)
        limb([[0.22, 1.42], [0.27, 0.86]], 0.09, M_TOP)
        head = (0.0, 1.6)
    elif plane == "side":
        hip, knee, foot = ((-0.12, 0.95), (0.18, 0.78), (0.05, 0.33)) if kind == "bike" else \
            ((-0.2, 0.95), (0.22, 0.88), (0.12, 0.45))
        sh = (0.2, 1.45) if kind == "bike" else (0.0, 1.5)
        hand = (0.42, 1.02) if kind == "bike" else (0.45, 1.08)
        limb([hip, knee, foot], 0.15, M_BOTTOM)
        dx, dy = sh[0] - hip[0], sh[1] - hip[1]
        nn = math.hypot(dx, dy)
        px, py = -dy / nn * 0.12, dx / nn * 0.12
        poly([[hip[0] - px, hip[1] - py], [hip[0] + px, hip[1] + py], [sh[0] + px, sh[1] + py],
              [sh[0] - px, sh[1] - py]], M_TOP)
        limb([sh, hand], 0.09, M_TOP)
        head = (sh[0] + 0.08, sh[1] + 0.17)
    else:
        limb([[-0.12, 0.95], [-0.17, 0.4]], 0.14, M_BOTTOM)
        limb([[0.12, 0.95], [0.17, 0.4]], 0.14, M_BOTTOM)
        poly([[-0.17, 0.9], [0.17, 0.9], [0.2, 1.42], [-0.2, 1.42]], M_TOP)
        limb([[-0.2, 1.4], [-0.28, 1.05]], 0.09, M_TOP)
        limb([[0.2, 1.4], [0.28, 1.05]], 0.09, M_TOP)
        head = (0.0, 1.57)
    hp = _circle_local(head, head_r, 12)[:-1]
    hp[:, 1] = head[1] + (hp[:, 1] - head[1]) * 1.2
    poly(hp, M_DARK if kind == "moto" else M_SKIN)
    return ops


def _two_wheeler(cam: _Camera, kind: str, X: float, Z: float, th: float, rider: bool, y0: float = 0.0,
                 phase: float = 1.0) -> list[Op]:
    """A bicycle or motorcycle (side plane u = 0, heading th) with an optional rider."""
    fr = _Frame(cam, X, Z, th, y0)
    ops: list[Op] = []
    if kind == "bike":
        cls = BICYCLE
        for wc in (-0.52, 0.52):
            ops.append(("line", _in_plane(fr, _circle_local((wc, 0.34), 0.33), "side"), cls, M_TIRE, 0.05))
        bb, seat, head, rh, fh = (0.0, 0.3), (-0.14, 0.85), (0.4, 0.92), (-0.52, 0.34), (0.52, 0.34)
        for a, b in ((rh, bb), (bb, seat), (seat, rh), (bb, head), (seat, head), (head, fh)):
            ops.append(("line", _in_plane(fr, [a, b], "side"), cls, M_BODY, 0.04))
        ops.append(("line", fr([[-0.25, 1.0, 0.42], [0.25, 1.0, 0.42]]), cls, M_DARK, 0.035))
        ops.append(("line", _in_plane(fr, [(-0.24, 0.88), (-0.06, 0.88)], "side"), cls, M_DARK, 0.06))
    else:
        cls = MOTORCYCLE
        r = 0.31
        for wc in (-0.68, 0.68):
            for F in fr.box(-0.07, 0.07, 0.0, 2 * r, wc - r, wc + r).values():
                ops.append(("poly", F, cls, M_TIRE))
        faces = fr.box(-0.2, 0.2, 0.35, 0.85, -0.55, 0.5, (-0.14, 0.14, -0.45, 0.35))
        ops.extend(("poly", F, cls, M_BODY) for F in faces.values())
        for F in fr.box(-0.15, 0.15, 0.85, 1.0, -0.6, 0.25).values():
            ops.append(("poly", F, cls, M_DARK))
        side_u = 0.075 if fr.facing("u") else -0.075
        for wc in (-0.68, 0.68):
            ops.append(("poly", _in_plane(fr, _circle_local((wc, r), r)[:-1], "side", side_u), cls, M_TIRE))
            ops.append(("poly", _in_plane(fr, _circle_local((wc, r), 0.5 * r)[:-1], "side", side_u), cls, M_METAL))
        ops.append(("line", fr([[-0.35, 1.08, 0.45], [0.35, 1.08, 0.45]]), cls, M_METAL, 0.04))
        if "rear" in faces:
            ops.append(("poly", fr([[-0.08, 0.7, -0.57], [0.08, 0.7, -0.57], [0.08, 0.8, -0.57],
                                    [-0.08, 0.8, -0.57]]), cls, M_TAIL))
        if "front" in faces:
            ops.append(("poly", fr([[-0.1, 0.85, 0.52], [0.1, 0.85, 0.52], [0.1, 1.0, 0.52],
                                    [-0.1, 1.0, 0.52]]), cls, M_HEAD))
    if rider:
        ops.extend(_figure(fr, "back" if _back_view(cam, fr) else "side", kind, 1.0, phase))
    return ops


def _back_view(cam: _Camera, fr: _Frame) -> bool:
    """True when the object's forward axis points mostly along the line of sight (we see its back or front)."""
    C = cam.to_cam(fr([[0.0, 1.0, 0.0]]))[0]
    d = np.array([C[0], C[2]]) / max(math.hypot(C[0], C[2]), 1e-9)
    return abs(fr.f[0] * d[0] + fr.f[1] * d[1]) > 0.6


def _pedestrian(cam: _Camera, X: float, Z: float, th: float, height: float, phase: float, y0: float) -> list[Op]:
    fr = _Frame(cam, X, Z, th, y0)
    return _figure(fr, "back" if _back_view(cam, fr) else "side", "walk", height / 1.75, phase)


def _tree(X: float, Z: float, y0: float, p: dict[str, Any]) -> list[Op]:
    """Trunk and a crown of wobbly blobs facing the camera (all vegetation, as Cityscapes labels trees)."""
    ops: list[Op] = [("line", np.array([[X, y0, Z], [X, y0 + p["trunk"] + 0.3, Z]]), VEG, M_BARK, p["tw"])]
    R = p["R"]
    cy = y0 + p["trunk"] + R * 0.75
    for dx, dy, dz, sc, amp, ph in p["blobs"]:
        ops.append(("poly", _blob(X + dx * R, cy + dy * R, Z + dz * R, R * sc, R * sc * 0.9, amp, ph), VEG,
                    M_FOLIAGE))
    return ops


def _tree_params(rng: np.random.Generator, scale: float = 1.0) -> dict[str, Any]:
    nb = int(rng.integers(2, 5))
    return {
        "trunk": float(rng.uniform(1.6, 3.2)) * scale, "tw": float(rng.uniform(0.18, 0.35)) * scale,
        "R": float(rng.uniform(1.4, 3.2)) * scale,
        "blobs": [(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.3, 0.4)), float(rng.uniform(-0.3, 0.0)),
                   float(rng.uniform(0.55, 0.9)), rng.uniform(0.03, 0.1, 3), rng.uniform(0, 2 * math.pi, 3))
                  for _ in range(nb)],
    }


def _traffic_light(cam: _Camera, X: float, y: float, Z: float, th: float, lit: int) -> list[Op]:
    """A 3-lamp traffic light box hanging from (X, y, Z); lit = 0 red, 1 amber, 2 green."""
    fr = _Frame(cam, X, Z, th)
    faces = fr.box(-0.17, 0.17, y - 0.95, y, -0.15, 0.15)
    ops: list[Op] = [("poly", F, LIGHT, M_TL_BOX) for F in faces.values()]
    if "rear" in faces:  # the lamps face local -w (towards the traffic it regulates)
        for j, mat in enumerate((M_TL_RED, M_TL_AMBER, M_TL_GREEN)):
            c = _circle_local((0.0, y - 0.17 - 0.3 * j), 0.1, 10)[:-1]
            pts = np.stack([c[:, 0], c[:, 1], np.full(len(c), -0.17)], 1)
            ops.append(("poly", fr(pts), LIGHT, mat if j == lit else M_TL_OFF))
    return ops


def _sign(X: float, y: float, Z: float, shape: int, size: float) -> list[Op]:
    """A traffic sign face (circle, triangle, square, diamond) with a light inner field, facing the camera."""
    if shape == 0:
        outer = _blob(X, y, Z, size / 2, size / 2, n=16)
    else:
        n = (3, 4, 4)[shape - 1]
        rot = (math.pi / 2, math.pi / 4, 0.0)[shape - 1]
        t = rot + np.arange(n) * 2 * math.pi / n
        rr = size / 2 * (1.2 if shape == 1 else (1.3 if shape == 2 else 1.0))
        outer = np.stack([X + rr * np.cos(t), y + rr * np.sin(t), np.full(n, Z)], axis=1)
    c = outer.mean(axis=0)
    inner = c + 0.72 * (outer - c)
    inner[:, 2] = Z - 0.01
    return [("poly", outer, SIGN, M_SIGN), ("poly", inner, SIGN, M_SIGN2)]


# --------------------------------------------------------------------------------------------------- layout


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _layout(seed: int, index: int, H: int, W: int) -> _Scene:
    """Lay out and rasterize scene (seed, index). Every random draw happens here and is independent of (H, W)
    except through scaling, so the label map depends only on (seed, index, size)."""
    rng = np.random.default_rng([seed, index, 0x5CE7E])
    cam = _Camera(H=H, W=W, f=W * _u(rng, 0.85, 1.15), cx=W * (0.5 + _u(rng, -0.06, 0.06)),
                  yh=H * _u(rng, 0.36, 0.5), h=_u(rng, 1.25, 1.8), c0=0.0,
                  k=0.0 if rng.random() < 0.4 else _u(rng, -0.0025, 0.0025))
    curved = cam.k != 0.0
    effect = ADVERSE_EFFECTS[int(rng.integers(len(ADVERSE_EFFECTS)))]

    # --- street cross-section: lanes (left ones oncoming unless one-way), parking strips, curbs, sidewalks
    lane_w = _u(rng, 2.9, 3.5)
    n_lanes = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.45, 0.25, 0.2]))
    one_way = n_lanes == 1 or rng.random() < 0.25
    n_opp = 0 if one_way else n_lanes // 2
    park = [rng.random() < 0.45, rng.random() < 0.45]  # left, right
    road_w = n_lanes * lane_w + 2.3 * (park[0] + park[1])
    xl, xr = -road_w / 2, road_w / 2
    lanes = [xl + 2.3 * park[0] + (i + 0.5) * lane_w for i in range(n_lanes)]
    own = int(rng.integers(n_opp, n_lanes))
    cam.c0 = -(lanes[own] + _u(rng, -0.4, 0.4))
    hc = _u(rng, 0.1, 0.18)  # curb height
    walk = [_u(rng, 1.8, 5.0), _u(rng, 1.8, 5.0)]
    lawn = [_u(rng, 0.8, 2.0) if rng.random() < 0.3 else 0.0 for _ in range(2)]
    z_far = _u(rng, 90, 200)
    inter = rng.random() < 0.6
    z_int = _u(rng, 14, min(60, z_far - 30))
    w_cross = _u(rng, 7, 12)
    cross = (z_int, z_int + w_cross) if inter else (1e9, 1e9)
    zg = max(ZNEAR, 0.6 * cam.f * (cam.h - 0.3) / max(H - cam.yh, 1.0))  # nearest ground the camera can see

    ground: list[Op] = []
    objects: list[tuple[float, list[Op]]] = []  # (sort key = distance, ops); drawn in decreasing key order
    casters: list[tuple[np.ndarray, float]] = []
    blobs: list[np.ndarray] = []
    lamps: list[tuple[float, float, float]] = []

    def edge(s: int) -> float:
        return xr if s > 0 else xl

    def inner(s: int) -> float:  # the sidewalk's outer edge: where lots begin
        return edge(s) + s * (walk[(s + 1) // 2] + lawn[(s + 1) // 2])

    def segments(z0: float, z1: float) -> list[tuple[float, float]]:
        """[z0, z1] minus the side street."""
        if not inter:
            return [(z0, z1)]
        return [(a, b) for a, b in ((z0, min(z1, cross[0])), (max(z0, cross[1]), z1)) if b > a]

    # --- the ground: far terrain, then lots, sidewalks, lawns, road, markings, curbs
    ground.append(("poly", _ground(-300, 300, 0.0, zg, z_far + 400, curved), TERRAIN, M_GRASS))

    # --- lots along both sides
    for s in (-1, 1):
        x_in = inner(s)
        z = _u(rng, -6, 0)
        while z < z_far:
            L = _u(rng, 8, 30)
            z0, z1 = z, min(z + L, z_far)
            z = z1
            if inter and z1 > cross[0] - 1 and z0 < cross[1] + 1:  # keep the side street clear
                if z0 < cross[0] - 1:
                    z1 = cross[0] - 1
                else:
                    z = cross[1] + 1
                    continue
            kind = str(rng.choice(["building", "park", "wall", "fence", "gap"], p=[0.55, 0.17, 0.1, 0.1, 0.08]))
            yard = M_GRASS if rng.random() < 0.6 else M_PAVING
            ground.append(("poly", _ground(x_in, x_in + s * 80, hc, max(z0, zg), z1, curved),
                           TERRAIN if yard == M_GRASS or kind != "building" else SIDEWALK,
                           M_GRASS if kind != "building" else yard))
            front = str(rng.choice(["none", "hedge", "wall", "fence"], p=[0.55, 0.2, 0.12, 0.13]))
            if kind == "building":
                sb = 0.0 if rng.random() < 0.6 else _u(rng, 1.0, 5.0)
                hb = _u(rng, 6, 30) if rng.random() < 0.85 else _u(rng, 30, 50)
                depth = _u(rng, 10, 20)
                gap = _u(rng, 1, 4) if rng.random() < 0.2 else 0.0
                mat = int(rng.choice([M_BRICK, M_PLASTER, M_CONCRETE], p=[0.3, 0.5, 0.2]))
                win = {"floor": _u(rng, 2.8, 3.6), "w": _u(rng, 0.9, 1.6), "h": _u(rng, 1.2, 1.8),
                       "col": _u(rng, 2.2, 4.0), "shop": rng.random() < 0.5, "missing": rng.random(64) < 0.06}
                xf = x_in + s * sb
                objects.append((z1 - gap, _building(cam, s, xf, depth, hb, z0, z1 - gap, mat, win, curved)))
                casters.append((np.array([[xf, z0], [xf + s * depth, z0], [xf + s * depth, z1 - gap],
                                          [xf, z1 - gap]]), hb))
                if sb < 1.0:
                    front = "none"
            elif kind in ("park", "wall", "fence", "gap"):
                n_trees = int(rng.integers(1, 6)) if kind != "gap" else int(rng.integers(0, 2))
                for _ in range(n_trees):
                    tz, tx = _u(rng, z0, z1), x_in + s * _u(rng, 2, 25)
                    p = _tree_params(rng, _u(rng, 1.0, 1.8))
                    objects.append((tz, _tree(tx, tz, hc, p)))
                if rng.random() < 0.5:
                    xb = x_in + s * _u(rng, 15, 35)
                    hb = _u(rng, 8, 25)
                    win = {"floor": _u(rng, 2.8, 3.6), "w": _u(rng, 0.9, 1.6), "h": _u(rng, 1.2, 1.8),
                           "col": _u(rng, 2.2, 4.0), "shop": False, "missing": rng.random(64) < 0.06}
                    mat = int(rng.choice([M_BRICK, M_PLASTER, M_CONCRETE]))
                    objects.append((z1 + 1, _building(cam, s, xb, 12, hb, z0, z1, mat, win, curved)))
                front = {"wall": "wall", "fence": "fence"}.get(kind, front)
            fh = _u(rng, 0.8, 2.6)
            fence_kind = int(rng.integers(2))
            fmat = int(rng.choice([M_CONCRETE, M_BRICK, M_PLASTER]))
            if front != "none":
                xa, xb2 = x_in + s * 0.15, x_in + s * (0.55 if front == "hedge" else 0.35)
                if front == "hedge":
                    objects.append((z1, _slab(cam, s, xa, xb2, hc, hc + min(fh, 1.6), z0 + 0.3, z1 - 0.3, VEG,
                                              M_FOLIAGE, curved)))
                elif front == "wall":
                    objects.append((z1, _slab(cam, s, xa, xb2, hc, hc + fh, z0, z1, WALL, fmat, curved)))
                else:
                    objects.append((z1, _fence(cam, xa, hc, hc + min(fh, 2.0), z0, z1, fence_kind, curved)))

    # --- far view across the street end: buildings and tree lines
    x = -160.0
    while x < 160:
        wb = _u(rng, 8, 35)
        kind = rng.random()
        hb = _u(rng, 4, 35)
        zz = z_far + _u(rng, 0, 20)
        if kind < 0.6:
            objects.append((1e6 + zz, [("poly", _front(x, x + wb, 0, hb, zz), BUILDING,
                                        int(rng.choice([M_PLASTER, M_CONCRETE, M_BRICK])))]))
        elif kind < 0.9:
            blobs_far = [("poly", _blob(x + wb * t, _u(rng, 4, 9), zz, _u(rng, 3, 7), _u(rng, 3, 6),
                                        rng.uniform(0.03, 0.1, 3), rng.uniform(0, 6.28, 3)), VEG, M_FOLIAGE)
                         for t in np.linspace(0.1, 0.9, 3)]
            objects.append((1e6 + zz, blobs_far))
        x += wb

    # --- sidewalks, lawns, curbs, road surface
    for s in (-1, 1):
        i = (s + 1) // 2
        e = edge(s)
        for a, b in segments(zg, z_far + 2):
            if lawn[i]:
                ground.append(("poly", _ground(e + s * walk[i], e + s * (walk[i] + lawn[i]), hc, a, b, curved),
                               TERRAIN, M_GRASS))
            ground.append(("poly", _ground(e, e + s * walk[i], hc, a, b, curved), SIDEWALK, M_PAVING))
    ground.append(("poly", _ground(xl, xr, 0.0, zg, z_far + 2, curved), ROAD, M_ASPHALT))
    if inter:
        ground.append(("poly", _ground(-250, 250, 0.0, cross[0], cross[1], curved), ROAD, M_ASPHALT))
    # lane markings: dashed between same-direction lanes, solid (double) between the directions
    for i in range(1, n_lanes):
        xm = xl + 2.3 * park[0] + i * lane_w
        dash, period = _u(rng, 2.5, 4), _u(rng, 8, 12)
        centre_mat = M_PAINT_Y if rng.random() < 0.4 else M_PAINT
        if i == n_opp:
            for a, b in segments(zg, min(z_far, 90)):
                for off in (-0.12, 0.12):
                    ground.append(("poly", _ground(xm + off - 0.06, xm + off + 0.06, 0.0, a, b, curved), ROAD,
                                   centre_mat))
        else:
            zz = _u(rng, 0, period)
            while zz < min(z_far, 90):
                if zz + dash < cross[0] or zz > cross[1]:
                    ground.append(("poly", _ground(xm - 0.07, xm + 0.07, 0.0, zz, zz + dash, False), ROAD, M_PAINT))
                zz += period
    if rng.random() < 0.6:  # edge lines
        for xe in (xl + 2.3 * park[0] + 0.25, xr - 2.3 * park[1] - 0.25):
            for a, b in segments(zg, min(z_far, 90)):
                ground.append(("poly", _ground(xe - 0.06, xe + 0.06, 0.0, a, b, curved), ROAD, M_PAINT))
    if inter:  # zebra crossing just before the side street
        for xz in np.arange(xl + 0.5, xr - 0.5, 1.0):
            ground.append(("poly", _ground(xz, xz + 0.5, 0.0, cross[0] - 3.5, cross[0] - 0.5, False), ROAD,
                           M_PAINT))
    for s in (-1, 1):
        for a, b in segments(zg, z_far + 2):
            ground.append(("poly", _side(edge(s), 0.0, hc, a, b, curved), SIDEWALK, M_CURB))

    # --- street furniture
    for s in (-1, 1):
        i = (s + 1) // 2
        if rng.random() < (0.85 if lawn[i] else 0.45):  # street trees
            zt = _u(rng, 2, 10)
            sp = _u(rng, 7, 15)
            xt = edge(s) + s * (walk[i] + lawn[i] / 2 if lawn[i] else _u(rng, 0.7, 1.1))
            while zt < min(z_far, 120):
                p = _tree_params(rng)
                if not (cross[0] - 2 < zt < cross[1] + 2):
                    objects.append((zt, _tree(xt, zt, hc, p)))
                    ring = np.linspace(0, 2 * math.pi, 8, endpoint=False)
                    crown = np.stack([xt + p["R"] * np.cos(ring), zt + p["R"] * np.sin(ring)], 1)
                    casters.append((crown, p["trunk"] + 1.5 * p["R"]))
                zt += sp * _u(rng, 0.8, 1.2)
        if rng.random() < 0.6:  # street lamps
            zl = _u(rng, 4, 20)
            sp = _u(rng, 18, 35)
            hl, arm = _u(rng, 6, 9), _u(rng, 1.0, 2.5)
            xp = edge(s) + s * 0.45
            while zl < min(z_far, 150):
                if not (cross[0] - 1 < zl < cross[1] + 1):
                    head = np.array([xp - s * arm, hl + 0.2, zl])
                    lamp_ops: list[Op] = [
                        ("line", np.array([[xp, hc, zl], [xp, hl, zl]]), POLE, M_METAL, 0.16),
                        ("line", np.array([[xp, hl - 0.3, zl], [xp - s * arm * 0.5, hl + 0.15, zl], head]), POLE,
                         M_METAL, 0.09),
                    ]
                    fr = _Frame(cam, float(head[0]), zl, 0.0)
                    lamp_ops += [("poly", F, POLE, M_LAMP) for F in
                                 fr.box(-0.18, 0.18, head[1] - 0.15, head[1] + 0.05, -0.35, 0.35).values()]
                    objects.append((zl, lamp_ops))
                    lamps.append((float(head[0]), float(head[1]) - 0.2, zl))
                    casters.append((np.array([[xp - 0.1, zl - 0.1], [xp + 0.1, zl - 0.1], [xp + 0.1, zl + 0.1],
                                              [xp - 0.1, zl + 0.1]]), hl))
                zl += sp
    if inter:  # traffic lights at the crossing, on poles and sometimes on a mast arm over the road
        lit = int(rng.integers(3))
        zt = cross[0] - 0.3
        for s in (-1, 1):
            if rng.random() < 0.85:
                xp = edge(s) + s * 0.5
                hp = _u(rng, 3.2, 4.5)
                ops: list[Op] = [("line", np.array([[xp, hc, zt], [xp, hp + 0.2, zt]]), POLE, M_METAL, 0.14)]
                ops += _traffic_light(cam, xp, hp + 0.1, zt, math.pi, lit)
                mast = rng.random() < 0.5
                xm = xp - s * _u(rng, 3, 7)
                if mast:
                    ops.append(("line", np.array([[xp, hp + 1.3, zt], [xm, hp + 1.4, zt]]), POLE, M_METAL, 0.1))
                    ops += _traffic_light(cam, xm, hp + 1.3, zt, math.pi, lit)
                if rng.random() < 0.5:
                    ops += _sign(xp, hp - 1.3, zt - 0.1, int(rng.integers(4)), _u(rng, 0.5, 0.8))
                if rng.random() < 0.5:  # the cross street's light, seen from the side
                    ops += _traffic_light(cam, xp + s * 0.1, hp - 0.2, zt + 0.35, math.pi / 2, lit)
                objects.append((zt, ops))
    for _ in range(int(rng.integers(1, 5))):  # sign poles
        s = int(rng.choice([-1, 1]))
        zs_ = _u(rng, 5, 70)
        xp = edge(s) + s * _u(rng, 0.3, 0.8)
        hp = _u(rng, 2.2, 3.2)
        shape, size = int(rng.integers(4)), _u(rng, 0.5, 0.8)
        two = rng.random() < 0.3
        shape2 = int(rng.integers(4))
        ops = [("line", np.array([[xp, hc, zs_], [xp, hc + hp + size / 2, zs_]]), POLE, M_METAL, 0.07)]
        ops += _sign(xp, hc + hp, zs_ - 0.05, shape, size)
        if two:
            ops += _sign(xp, hc + hp - size * 1.1, zs_ - 0.05, shape2, size * 0.9)
        objects.append((zs_, ops))
    for _ in range(int(rng.integers(0, 3))):  # plain poles (utility poles, bollards)
        s = int(rng.choice([-1, 1]))
        zp, hp = _u(rng, 6, 80), _u(rng, 1.0, 10.0)
        xp = edge(s) + s * _u(rng, 0.3, 1.0)
        objects.append((zp, [("line", np.array([[xp, hc, zp], [xp, hc + hp, zp]]), POLE, M_METAL,
                                _u(rng, 0.1, 0.25))]))
    for _ in range(int(rng.integers(0, 3))):  # bins: "static" objects, ignored by the labels
        s = int(rng.choice([-1, 1]))
        zb = _u(rng, 5, 50)
        xb = edge(s) + s * _u(rng, 0.5, walk[(s + 1) // 2] - 0.3)
        fr = _Frame(cam, xb, zb, 0.0, hc)
        objects.append((zb, [("poly", F, IGNORE, M_MISC) for F in fr.box(-0.3, 0.3, 0, 1.0, -0.3, 0.3).values()]))

    # --- people on the sidewalks and on the crossing
    for _ in range(int(rng.integers(0, 8))):
        s = int(rng.choice([-1, 1]))
        i = (s + 1) // 2
        zp = _u(rng, 4, 60)
        xp = edge(s) + s * _u(rng, 0.4, max(walk[i] - 0.3, 0.5))
        th = float(rng.choice([0.0, math.pi])) + _u(rng, -0.3, 0.3) if rng.random() < 0.7 else \
            float(rng.choice([-1, 1])) * math.pi / 2
        hp, ph = _u(rng, 1.5, 1.95), _u(rng, -1, 1)
        if not (cross[0] - 0.5 < zp < cross[1] + 0.5):
            objects.append((zp, _pedestrian(cam, xp, zp, th, hp, ph, hc)))
    if inter:
        for _ in range(int(rng.integers(0, 4))):
            xp, zp = _u(rng, xl, xr), cross[0] - _u(rng, 0.8, 3.2)
            th, hp, ph = float(rng.choice([-1, 1])) * math.pi / 2, _u(rng, 1.5, 1.95), _u(rng, -1, 1)
            objects.append((zp, _pedestrian(cam, xp, zp, th, hp, ph, 0.0)))

    # --- vehicles: lanes, parking strips, the side street, a tram now and then
    def vehicle_dims(kind: str) -> dict[str, Any]:
        if kind == "car":
            return {"L": _u(rng, 3.8, 4.9), "W": _u(rng, 1.7, 1.95), "H": _u(rng, 1.4, 1.65), "hb": _u(rng, 0.85, 1.0),
                    "r": _u(rng, 0.3, 0.36)}
        if kind == "truck":
            return {"L": _u(rng, 6.5, 10), "W": _u(rng, 2.2, 2.5), "H": _u(rng, 3.0, 3.9), "hc": _u(rng, 2.5, 3.0),
                    "lc": _u(rng, 1.8, 2.4), "r": _u(rng, 0.45, 0.52),
                    "cargo_mat": int(rng.choice([M_BODY, M_BUSBODY, M_CONCRETE]))}
        if kind == "bus":
            return {"L": _u(rng, 10.5, 13), "W": 2.5, "H": _u(rng, 2.9, 3.3), "r": 0.5, "win": _u(rng, 1.3, 2.0)}
        return {"L": _u(rng, 22, 38), "W": 2.55, "H": _u(rng, 3.3, 3.6), "r": 0.4, "win": _u(rng, 1.6, 2.4)}

    def add_vehicle(kind: str, X: float, Z: float, th: float) -> None:
        d = vehicle_dims(kind)
        fr = _Frame(cam, X, Z, th)
        foot = fr([[-d["W"] / 2, 0, -d["L"] / 2], [d["W"] / 2, 0, -d["L"] / 2], [d["W"] / 2, 0, d["L"] / 2],
                   [-d["W"] / 2, 0, d["L"] / 2]])[:, [0, 2]]
        near = float(foot[:, 1].min())
        objects.append((near, _vehicle(cam, kind, X, Z, th, d)))
        casters.append((foot, d["H"]))
        blobs.append(foot)

    tram_lane = int(rng.integers(n_lanes)) if rng.random() < 0.2 else -1
    for i, xc in enumerate(lanes):
        th = math.pi if i < n_opp else 0.0
        zc = _u(rng, 8 if i == own else 5, 20)
        if i == tram_lane:
            d_len = 30.0
            zt = _u(rng, 12, 45)
            add_vehicle("train", xc, zt + d_len / 2, th)
            zc = zt + d_len + 5
        while zc < min(z_far - 15, 110):
            kind = str(rng.choice(["car", "truck", "bus", "moto", "none"], p=[0.55, 0.12, 0.08, 0.05, 0.2]))
            d_len = {"car": 4.5, "truck": 9.0, "bus": 12.0, "moto": 2.0, "none": 6.0}[kind]
            jitter = _u(rng, -0.3, 0.3)
            gap = _u(rng, 4, 25)
            if not (cross[0] - d_len - 3 < zc < cross[1] + 1):
                if kind == "moto":
                    objects.append((zc, _two_wheeler(cam, "moto", xc + jitter, zc + 1, th + jitter * 0.3, True)))
                elif kind != "none":
                    add_vehicle(kind, xc + jitter, zc + d_len / 2, th + _u(rng, -0.04, 0.04))
            zc += d_len + gap
    for s in (-1, 1):  # parked cars
        if park[(s + 1) // 2]:
            zp = _u(rng, 3, 10)
            while zp < min(z_far - 10, 90):
                full = rng.random() < 0.7
                kind = "truck" if rng.random() < 0.08 else "car"
                if full and not (cross[0] - 8 < zp < cross[1] + 2):
                    add_vehicle(kind, edge(s) - s * 1.15, zp + 2.5, float(rng.choice([0.0, math.pi])))
                zp += _u(rng, 5.5, 7.5) + (5 if kind == "truck" else 0)
    if inter and rng.random() < 0.6:  # cars on the side street, seen from the side
        for _ in range(int(rng.integers(1, 3))):
            xs = float(rng.choice([-1, 1])) * _u(rng, road_w / 2 + 4, 40)
            lane = rng.random() < 0.5
            zc = cross[0] + (0.3 if lane else 0.7) * w_cross
            add_vehicle(str(rng.choice(["car", "car", "bus", "truck"])), xs, zc,
                        math.pi / 2 if lane else -math.pi / 2)
    # riders on the road edge or crossing; parked bicycles and motorcycles on the sidewalk
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.65 else 0):
        kind = "bike" if rng.random() < 0.6 else "moto"
        if inter and rng.random() < 0.3:
            xr_, zr, th = _u(rng, xl + 1, xr - 1), cross[0] - _u(rng, 1, 3), float(rng.choice([-1, 1])) * math.pi / 2
        else:
            s = 1 if rng.random() < 0.75 else -1
            xr_ = edge(s) - s * (2.3 * park[(s + 1) // 2] + _u(rng, 0.6, 1.2))
            zr, th = _u(rng, 6, 45), (0.0 if s > 0 else math.pi) + _u(rng, -0.35, 0.35)
        ph = _u(rng, -1, 1)
        objects.append((zr - 0.5, _two_wheeler(cam, kind, xr_, zr, th, True, 0.0, ph)))
    if rng.random() < 0.35:
        s = int(rng.choice([-1, 1]))
        kind = "bike" if rng.random() < 0.65 else "moto"
        zb = _u(rng, 6, 40)
        for _ in range(int(rng.integers(1, 4))):
            xb = edge(s) + s * _u(rng, 0.6, max(walk[(s + 1) // 2] - 0.8, 0.7))
            objects.append((zb, _two_wheeler(cam, kind, xb, zb, s * math.pi / 2 + _u(rng, -0.5, 0.5), False, hc)))
            zb += _u(rng, 0.7, 1.5)
    ego = _u(rng, 0.05, 0.13) if rng.random() < 0.3 else 0.0
    ego_curve = _u(rng, 0.02, 0.06)

    # --- rasterize: ground, then everything else far to near
    ras = _Raster(cam)
    for op in ground:
        ras.run([op])
    for _, ops in sorted(objects, key=lambda o: -o[0]):
        ras.run(ops)
    if ego:  # the ego car's hood along the bottom edge: ignore, like Cityscapes' "ego vehicle"
        xs = np.linspace(-0.05, 1.05, 24) * W
        top = H * (1 - ego) + ego_curve * H * ((xs / W - 0.5) * 2) ** 2
        pts = [(float(a), float(b)) for a, b in zip(xs, top)] + [(W * 1.05, H + 2.0), (-W * 0.05, H + 2.0)]
        i = ras._add(IGNORE, M_EGO, ras.n_obj, np.array([0.0, 0.6, -0.8]), (1.0, 0.0, 0.0, 0.5, 2.0))
        ras.draw.polygon(pts, fill=i)
    return ras.finish(casters=casters, blobs=blobs, lamps=lamps, effect=effect)


def _slab(cam: _Camera, s: int, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, cls: int,
          mat: int, curved: bool) -> list[Op]:
    """A wall or hedge along the street: street face at x0, top, and the near end face when in view."""
    ops: list[Op] = []
    if z0 > ZNEAR:
        ops.append(("poly", np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]]), cls, mat))
    if y1 < cam.h:
        ops.append(("poly", _ground(x0, x1, y1, max(z0, ZNEAR), z1, curved), cls, mat))
    ops.append(("poly", _side(x0, y0, y1, max(z0, ZNEAR), z1, curved), cls, mat))
    return ops


def _fence(cam: _Camera, x: float, y0: float, y1: float, z0: float, z1: float, kind: int, curved: bool) -> list[Op]:
    """A fence along the street: posts and rails with pickets (kind 0) or a mesh panel (kind 1), see-through
    where the pickets are far enough apart to show gaps."""
    z0 = max(z0, ZNEAR + 0.1)
    ops: list[Op] = []
    if kind == 1:
        ops.append(("poly", _side(x, y0 + 0.05, y1 - 0.05, z0, z1, curved), FENCE, M_MESH))
    else:
        C = cam.to_cam(np.array([[x, y0, z0]]))[0]
        zz = z0
        sp = 0.16
        while zz < z1:  # pickets where they are at least ~3 px apart, a solid band where they would blur
            seg_end = min(z1, zz + 3.0)
            gap_px = cam.f * abs(C[0]) * sp / max(zz, 1.0) ** 2
            if gap_px >= 3:
                for zp in np.arange(zz, seg_end, sp):
                    ops.append(("line", np.array([[x, y0, zp], [x, y1 - 0.05, zp]]), FENCE, M_FENCE, 0.05))
            else:
                ops.append(("poly", _side(x, y0 + 0.05, y1 - 0.1, zz, seg_end, curved), FENCE, M_FENCE))
            zz = seg_end
    for yr in (y0 + 0.25, y1 - 0.1):
        z = _zs(z0, z1, curved)
        ops.append(("line", np.stack([np.full_like(z, x), np.full_like(z, yr), z], 1), FENCE, M_FENCE, 0.07))
    for zp in np.arange(z0, z1, 2.5):
        ops.append(("line", np.array([[x, y0, zp], [x, y1, zp]]), FENCE, M_FENCE, 0.09))
    return ops


def _building(cam: _Camera, s: int, xf: float, depth: float, hb: float, z0: float, z1: float, mat: int,
              win: dict[str, Any], curved: bool) -> list[Op]:
    """A building: facade at X = xf facing the street, the near end wall when in view, windows on both."""
    ops: list[Op] = []
    z0c = max(z0, ZNEAR)
    x_back = xf + s * depth
    ops.append(("poly", _side(xf, 0.0, hb, z0c, z1, curved), BUILDING, mat))
    if z0 > ZNEAR:
        ops.append(("poly", _front(xf, x_back, 0.0, hb, z0), BUILDING, mat))
    floor, ww, wh, col = win["floor"], win["w"], win["h"], win["col"]
    missing = win["missing"]
    xw = xf - s * 0.03
    n_floor = int((hb - 1.0) // floor)
    k = 0
    # facade windows column by column (they never overlap, so their order does not matter)
    zc = z0 + col / 2
    while zc + ww / 2 < z1 - 0.5:
        if zc - ww / 2 > ZNEAR:
            C = cam.to_cam(np.array([[xw, 1.0, zc]]))[0]
            px = cam.f * abs(C[0]) * ww / zc**2  # foreshortened width on screen
            if px >= 1.0 and cam.f * wh / zc >= 1.5:
                for j in range(n_floor):
                    k += 1
                    if missing[k % len(missing)]:
                        continue
                    if j == 0 and win["shop"]:
                        y_a, y_b, za, zb = 0.3, 2.7, zc - col * 0.42, zc + col * 0.42
                        m = M_SHOP
                    else:
                        y_a = j * floor + (floor - wh) * 0.6 + (0.3 if j == 0 else 0.0)
                        y_b, za, zb, m = y_a + wh, zc - ww / 2, zc + ww / 2, M_WINDOW
                    ops.append(("poly", np.array([[xw, y_a, za], [xw, y_a, zb], [xw, y_b, zb], [xw, y_b, za]]),
                                BUILDING, m))
        zc += col
    if z0 > ZNEAR + 1:  # windows on the near end wall
        xc = xf + s * col / 2
        while abs(xc - xf) + ww / 2 < depth - 0.5:
            if cam.f * ww / z0 >= 1.5:
                for j in range(n_floor):
                    y_a = j * floor + (floor - wh) * 0.6 + (0.3 if j == 0 else 0.0)
                    ops.append(("poly", _front(xc - ww / 2, xc + ww / 2, y_a, y_a + wh, z0 - 0.03), BUILDING,
                                M_WINDOW))
            xc += s * col
    return ops


# --------------------------------------------------------------------------------------------------- painting


def _value_noise(rng: np.random.Generator, H: int, W: int, cell: float) -> np.ndarray:
    """Smooth noise [H, W] float32 (about unit variance) with features ``cell`` pixels across."""
    cell = max(cell, 1.0)
    gh, gw = int(H / cell) + 3, int(W / cell) + 3
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(g).resize((int(gw * cell), int(gh * cell)), Image.Resampling.BICUBIC)
    out = np.asarray(big, dtype=np.float32)[:H, :W]
    return out / max(float(out.std()), 1e-6)


def _box_blur(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    if r < 1:
        return a
    a = np.moveaxis(a, axis, 0)
    pad = np.concatenate([np.repeat(a[:1], r + 1, 0), a, np.repeat(a[-1:], r, 0)])
    c = np.cumsum(pad, axis=0, dtype=np.float32)
    out = (c[2 * r + 1:] - c[: -2 * r - 1]) / (2 * r + 1)
    return np.moveaxis(out, 0, axis)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Approximate Gaussian blur of an [H, W] or [H, W, C] array (three box passes per axis)."""
    r = int(round(sigma * 0.8))
    if r < 1:
        return a
    for axis in (0, 1):
        for _ in range(3):
            a = _box_blur(a, r, axis)
    return a


def _hash2(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A repeatable pseudo-random value in [0, 1) per integer cell (i, j)."""
    v = np.sin(i * 12.9898 + j * 78.233) * 43758.5453
    return v - np.floor(v)


def _paint_synthetic(sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    """One flat colour per class, jittered per object."""
    table = np.zeros((256, 3), dtype=np.float32)
    table[:NUM_CLASSES] = SYNTHETIC_COLORS
    table[IGNORE] = SYNTHETIC_IGNORE
    jit = rng.uniform(-14, 14, size=(int(sc.obj.max()) + 1, 3)).astype(np.float32)
    jit[0] = 0
    col = np.clip(table[sc.cls] + jit[sc.obj], 0, 255).astype(np.uint8)
    return col[sc.inst]


@dataclass
class _Layers:
    """Linear-light layers of the realistic rendering, kept apart so the adverse effects can relight them."""

    albedo: np.ndarray  # [H, W, 3] surface colour with texture
    ambient: np.ndarray  # [H, W] sky light reaching the surface (occlusion included)
    direct: np.ndarray  # [H, W] sun light reaching the surface (shadows included)
    sky: np.ndarray  # [H, W, 3] sky radiance
    is_sky: np.ndarray  # [H, W] bool
    z: np.ndarray  # [H, W] depth in m (1e4 for the sky)
    X: np.ndarray
    Y: np.ndarray
    mat: np.ndarray  # [H, W] material per pixel
    emit: np.ndarray  # [H, W, 3] light sources' radiance (lamps, vehicle lights, traffic lights)
    grade: dict[str, Any]


def _realistic_layers(sc: _Scene, rng: np.random.Generator) -> _Layers:
    cam = sc.cam
    H, W = cam.H, cam.W
    inst = sc.inst
    mat = sc.mat[inst]
    is_sky = inst == 0
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    d = sc.dep.astype(np.float32)
    iz = d[inst, 0] + d[inst, 1] * xx + d[inst, 2] * yy
    # the affine 1/Z can overshoot on faces seen nearly edge-on: keep Z within the instance's own range
    z = np.clip(1.0 / np.clip(iz, 1e-4, 1.0 / ZNEAR), d[inst, 3], d[inst, 4])
    Y = cam.h - (yy - cam.yh) * z / cam.f
    X = (xx - cam.cx) * z / cam.f - cam.c0 - cam.k * z**2
    U = X + z  # a coordinate along vertical surfaces, whichever way they face

    # colours: one palette entry per (object, material), a per-object brightness jitter, a little per instance
    n_obj = int(sc.obj.max()) + 1
    pick = rng.integers(0, 1 << 20, size=(n_obj, N_MAT))
    jit = rng.standard_normal((n_obj, 1)).astype(np.float32)
    tint = rng.standard_normal((len(sc.cls), 3)).astype(np.float32) * 0.03
    m_i = sc.mat.astype(np.int64)
    col_i = _PAL[m_i, pick[sc.obj, m_i] % _PAL_N[m_i]]
    col_i = col_i * np.clip(1 + _JITTER[m_i, None] * (jit[sc.obj] + 0.5 * tint[:, :1] / 0.03), 0.3, 2.0)
    col_i = col_i * (1 + tint)
    win_t = rng.uniform(0, 1, len(sc.cls)).astype(np.float32)  # windows: how much sky each one reflects
    albedo = col_i[inst]

    fine = rng.standard_normal((H, W)).astype(np.float32)
    mid = _value_noise(rng, H, W, W / 80)
    low = _value_noise(rng, H, W, W / 12)
    leaf = _value_noise(rng, H, W, max(W / 200, 1.5))
    px_m = z / cam.f  # metres per pixel across
    tex = np.ones((H, W), dtype=np.float32)

    def put(m: int, v: np.ndarray) -> None:
        sel = mat == m
        tex[sel] = v[sel]

    ground_px = np.clip(z * z / (cam.f * cam.h), 1e-3, None)  # metres per pixel along the ground
    put(M_ASPHALT, 1 + 0.10 * fine + 0.10 * mid + 0.12 * low)
    worn = (1 + 0.06 * fine) * np.clip(0.9 + 0.15 * mid, 0.6, 1.05)
    put(M_PAINT, worn)
    put(M_PAINT_Y, worn)
    ts = float(rng.uniform(0.3, 0.6))
    gu, gv = X / ts, z / ts
    line_u = np.minimum(gu - np.floor(gu), np.ceil(gu) - gu)
    line_v = np.minimum(gv - np.floor(gv), np.ceil(gv) - gv)
    fade_u = np.clip(ts / (px_m * 3) - 0.5, 0, 1)
    fade_v = np.clip(ts / (ground_px * 3) - 0.5, 0, 1)
    tiles = 1 - 0.25 * fade_u * (line_u < 0.06) - 0.25 * fade_v * (line_v < 0.06)
    tiles = tiles * (1 + 0.08 * (_hash2(np.floor(gu), np.floor(gv)) - 0.5) * np.minimum(fade_u, fade_v))
    put(M_PAVING, tiles * (1 + 0.05 * fine + 0.06 * low))
    put(M_CURB, 1 + 0.05 * fine)
    put(M_GRASS, 1 + 0.18 * fine + 0.2 * mid + 0.1 * low)
    put(M_FOLIAGE, np.clip(0.75 + 0.35 * leaf + 0.15 * fine + 0.15 * mid, 0.25, 1.6))
    put(M_BARK, 1 + 0.2 * fine)
    bw, bh = 0.25, 0.075
    row = np.floor(Y / bh)
    bu = U / bw + 0.5 * (row % 2)
    fade_b = np.clip(bh / (px_m * 2) - 0.5, 0, 1)
    mortar = (Y / bh - row < 0.15) | (bu - np.floor(bu) < 0.06)
    bricks = 1 + fade_b * (0.16 * (_hash2(np.floor(bu), row) - 0.5) - 0.22 * mortar)
    put(M_BRICK, bricks * (1 + 0.06 * fine + 0.08 * low))
    put(M_PLASTER, (1 + 0.03 * fine + 0.05 * mid + 0.07 * low) * np.where(Y < 0.8, 0.85, 1.0))
    panel = 1 - 0.12 * (np.clip(1.5 / (px_m * 3) - 0.5, 0, 1) * ((U % 1.5) < 0.04))
    put(M_CONCRETE, panel * (1 + 0.05 * fine + 0.07 * low))
    put(M_MESH, 1 + 0.3 * ((np.floor(U / 0.06) + np.floor(Y / 0.06)) % 2) * np.clip(0.06 / px_m - 0.5, 0, 1))
    for m in (M_METAL, M_BODY, M_BUSBODY, M_TOP, M_BOTTOM, M_SKIN, M_MISC, M_SIGN, M_TL_BOX, M_FENCE):
        put(m, 1 + 0.03 * fine)
    albedo = albedo * tex[..., None]

    # sky: a gradient towards the horizon, clouds, overcast now and then
    overcast = rng.random() < 0.3
    zen = np.array([0.19, 0.3, 0.58] if not overcast else [0.42, 0.44, 0.48], dtype=np.float32)
    hor = np.array([0.55, 0.62, 0.72] if not overcast else [0.62, 0.63, 0.65], dtype=np.float32)
    t = np.clip((cam.yh - yy) / (0.7 * H), 0, 1)[..., None]
    sky = hor + (zen - hor) * t**0.7
    cloud = np.clip(_value_noise(rng, H, W, W / 6) * 0.6 + 0.6 * _value_noise(rng, H, W, W / 25) * 0.5
                    - float(rng.uniform(-0.2, 0.9)), 0, 1)[..., None]
    sky = sky * (1 - cloud * 0.8) + np.float32(0.8 if not overcast else 0.6) * cloud * 0.8
    sky = sky.astype(np.float32)

    # lighting: sun (Lambert with shadows) + sky light
    elev = math.radians(float(rng.uniform(22, 65)))
    az = float(rng.uniform(-math.pi, math.pi))
    sun = np.array([math.cos(elev) * math.sin(az), math.sin(elev), math.cos(elev) * math.cos(az)])
    sun_int = 0.25 if overcast else float(rng.uniform(0.9, 1.3))
    amb_int = 0.75 if overcast else float(rng.uniform(0.35, 0.5))
    nrm = sc.nrm.astype(np.float64)
    lam = np.clip(nrm @ sun, 0, 1).astype(np.float32)
    wrap = ((nrm @ sun + 1) / 2).astype(np.float32)
    lam = np.where(np.isin(sc.mat, (M_FOLIAGE, M_SKIN, M_TOP, M_BOTTOM)), 0.3 + 0.6 * wrap, lam)
    direct = lam[inst]
    # shadows from buildings, vehicles, trees, lamp posts onto the ground
    shadow = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(shadow)
    off = -np.array([sun[0], sun[2]]) / max(sun[1], 0.2)
    for foot, hgt in sc.casters:
        pts = np.concatenate([foot, foot + off * hgt])
        hull = _hull(pts)
        P = _clip_near(np.stack([hull[:, 0], np.zeros(len(hull)), hull[:, 1]], 1))
        if len(P) >= 3:
            x, y = cam.project(P)
            draw.polygon(np.stack([x, y], 1).ravel().tolist(), fill=255)
    occl = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(occl)
    for foot in sc.blobs:
        c = foot.mean(axis=0)
        P = _clip_near(np.stack([c[0] + 1.15 * (foot[:, 0] - c[0]), np.zeros(len(foot)),
                                 c[1] + 1.1 * (foot[:, 1] - c[1])], 1))
        if len(P) >= 3:
            x, y = cam.project(P)
            draw.polygon(np.stack([x, y], 1).ravel().tolist(), fill=255)
    soft = max(W / 400, 0.6)
    sh = _blur(np.asarray(shadow, dtype=np.float32) / 255, soft)
    ao = _blur(np.asarray(occl, dtype=np.float32) / 255, soft * 1.5)
    on_ground = np.isin(mat, GROUND_MATS)
    direct = direct * np.where(on_ground, 1 - sh, 1.0) * sun_int
    vert_ao = np.where(on_ground | is_sky, 1.0, 1 - 0.25 * np.exp(-np.clip(Y, 0, None) / 1.2))
    ambient = amb_int * np.where(on_ground, 1 - 0.75 * ao, vert_ao).astype(np.float32)
    # glass reflects the sky: add a share of it to the albedo as if lit
    refl = np.isin(mat, (M_WINDOW, M_GLASS, M_SHOP, M_EGO))
    albedo = np.where(refl[..., None], albedo * 0.6 + (win_t[inst][..., None] * 0.5 + 0.15) * hor, albedo)

    emit = np.zeros((H, W, 3), dtype=np.float32)
    for m in EMITTERS:
        sel = mat == m
        emit[sel] = _PAL[m, 0] * 1.5
    grade = {"exposure": float(rng.uniform(0.85, 1.2)), "wb": rng.uniform(0.93, 1.07, 3).astype(np.float32),
             "sat": float(rng.uniform(0.8, 1.1)), "haze": float(rng.uniform(300, 1500)),
             "vignette": float(rng.uniform(0.15, 0.35)), "blur": float(rng.uniform(0.5, 0.9)) * W / 512,
             "noise": float(rng.uniform(0.5, 1.5)), "hor": hor, "win_t": win_t}
    return _Layers(albedo=albedo.astype(np.float32), ambient=ambient, direct=direct.astype(np.float32), sky=sky,
                   is_sky=is_sky, z=z.astype(np.float32), X=X, Y=Y, mat=mat, emit=emit, grade=grade)


def _hull(p: np.ndarray) -> np.ndarray:
    """Convex hull [M, 2] of points [N, 2] (monotone chain)."""
    pts = sorted(set(map(tuple, np.round(p, 4).tolist())))
    if len(pts) < 3:
        return np.asarray(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for q in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    upper: list = []
    for q in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.asarray(lower[:-1] + upper[:-1])


def _compose_day(ly: _Layers) -> np.ndarray:
    """Linear radiance [H, W, 3] of the plain (clear or overcast) day."""
    img = ly.albedo * (ly.ambient + ly.direct)[..., None] + ly.emit * 0.3
    img = np.where(ly.is_sky[..., None], ly.sky, img)
    t = np.exp(-ly.z / ly.grade["haze"])[..., None]  # aerial perspective: far things fade into the horizon
    return img * t + ly.grade["hor"] * (1 - t)


def _finish(img: np.ndarray, grade: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Linear radiance -> graded, blurred, vignetted sRGB uint8."""
    H, W = img.shape[:2]
    x = img * grade["exposure"] * grade["wb"]
    x = x * 1.25 / (1 + 0.25 * x)  # soft shoulder keeps highlights from clipping hard
    lum = x @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    x = lum[..., None] + (x - lum[..., None]) * grade["sat"]
    x = np.clip(x, 0, 1) ** (1 / 2.2)
    x = _blur(x, grade["blur"]) if grade["blur"] >= 0.7 else (x + _blur_small(x)) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xx - W / 2) / (W / 2)) ** 2 * 0.6 + ((yy - H / 2) / (H / 2)) ** 2 * 0.4
    x = x * (1 - grade["vignette"] * r2)[..., None]
    x = x * 255 + rng.standard_normal((H, W, 1)).astype(np.float32) * grade["noise"]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _blur_small(x: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur."""
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4


def _fog(ly: _Layers, rng: np.random.Generator) -> np.ndarray:
    vis = float(rng.uniform(25, 120))  # metres at which contrast drops to 5 %
    t = np.exp(-3 * ly.z / vis)[..., None]
    fog = np.float32(rng.uniform(0.55, 0.8)) * np.array([0.97, 0.99, 1.03], dtype=np.float32)
    lit = ly.albedo * (0.9 * ly.ambient / max(float(ly.ambient.max()), 1e-3) + 0.1 * ly.direct)[..., None]
    img = lit * 0.9 + _blur(ly.emit, 2.0) * 0.8 + ly.emit * 0.4
    img = img * t + fog * (1 - t)
    return np.where(ly.is_sky[..., None], fog, img)


def _night(ly: _Layers, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    cam = sc.cam
    H, W = ly.z.shape
    moon = np.array([0.015, 0.02, 0.035], dtype=np.float32)
    light = np.repeat((ly.ambient / max(float(ly.ambient.max()), 1e-3))[..., None], 3, axis=2) * moon
    lamp_col = np.array([1.0, 0.75, 0.45], dtype=np.float32) * float(rng.uniform(1.5, 3.0))
    for lx, ly_, lz in sc.lamps:
        d2 = (ly.X - lx) ** 2 + (ly.Y - ly_) ** 2 + (ly.z - lz) ** 2
        light = light + lamp_col * (1.0 / (1 + d2 / 6.0) ** 1.5)[..., None]
    # lit windows: a random share of them glow warm
    lit_share = float(rng.uniform(0.15, 0.45))
    win_on = (rng.random(len(sc.cls)) < lit_share) & (sc.mat == M_WINDOW)
    glow_win = win_on[sc.inst]
    img = ly.albedo * light
    warm = np.array([1.0, 0.78, 0.45], dtype=np.float32) * rng.uniform(0.3, 0.7, len(sc.cls)).astype(np.float32)[
        :, None]
    img = np.where(glow_win[..., None], warm[sc.inst], img)
    emit = ly.emit * 2.0
    for m, c in ((M_HEAD, (1.0, 0.95, 0.85)), (M_LAMP, (1.0, 0.8, 0.5))):
        emit[ly.mat == m] = np.array(c, dtype=np.float32) * 3.0
    img = img + emit + _blur(emit, W / 90) * 1.2 + _blur(emit, W / 30) * 0.8
    y = np.arange(H, dtype=np.float32)[:, None, None]
    sky = np.array([0.004, 0.006, 0.015], dtype=np.float32) + np.array([0.05, 0.03, 0.015], dtype=np.float32) * \
        np.exp(-np.clip(cam.yh - y, 0, None) / (0.15 * H))
    return np.where(ly.is_sky[..., None], sky, img)


def _rain(ly: _Layers, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    H, W = ly.z.shape
    wet = np.isin(ly.mat, (M_ASPHALT, M_PAINT, M_PAINT_Y, M_PAVING, M_CURB))
    albedo = np.where(wet[..., None], ly.albedo * 0.55, ly.albedo)
    lit = albedo * (0.55 * ly.ambient / max(float(ly.ambient.max()), 1e-3) + 0.1 * ly.direct)[..., None]
    img = lit + ly.emit * 0.8
    sky = np.array([0.3, 0.31, 0.33], dtype=np.float32) * (0.8 + 0.2 * ly.sky.mean(axis=2, keepdims=True) / 0.5)
    img = np.where(ly.is_sky[..., None], sky, img)
    # wet ground: what stands above smears down into it (a cheap stand-in for reflections)
    a = 0.9
    refl = np.empty_like(img)
    acc = img[0].copy()
    for r in range(H):
        acc = a * acc + (1 - a) * img[r]
        refl[r] = acc
    img = np.where(wet[..., None], img + 0.45 * refl, img)
    vis = float(rng.uniform(120, 400))
    t = np.exp(-3 * ly.z / vis)[..., None]
    img = img * t + sky.mean() * (1 - t)
    # streaks: short slanted bright lines, lightly blurred
    streak = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(streak)
    n = int(W * H / float(rng.uniform(120, 300)))
    ang = float(rng.uniform(-0.35, 0.35))
    x0 = rng.uniform(-20, W + 20, n)
    y0 = rng.uniform(-20, H, n)
    ln = rng.uniform(0.03, 0.09, n) * H
    val = rng.integers(60, 200, n)
    for xa, ya, la, v in zip(x0, y0, ln, val):
        draw.line([(xa, ya), (xa + la * math.sin(ang), ya + la * math.cos(ang))], fill=int(v), width=1)
    s = _blur(np.asarray(streak, dtype=np.float32) / 255, 0.7 if W < 400 else 1.0)
    return img + 0.25 * s[..., None]


def _sensor(img8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy low-light camera: shot and read noise, colour blotches, row banding, hot pixels, JPEG blocks."""
    H, W = img8.shape[:2]
    x = img8.astype(np.float32)
    sigma = float(rng.uniform(6, 16))
    x = x + rng.standard_normal(x.shape).astype(np.float32) * (sigma * 0.5 + np.sqrt(x) * sigma / 16)
    x = x + np.stack([_value_noise(rng, H, W, W / 60) for _ in range(3)], 2) * float(rng.uniform(4, 10))
    x = x + rng.standard_normal((H, 1, 1)).astype(np.float32) * float(rng.uniform(1, 4))
    hot = rng.random((H, W)) < 0.001
    x[hot] = 255
    out = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(15, 40)))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB")).copy()


def _paint(sc: _Scene, seed: int, index: int, domain: str) -> np.ndarray:
    if domain == "synthetic":
        return _paint_synthetic(sc, np.random.default_rng([seed, index, 1]))
    # the same stream as "realistic", so an adverse scene is the realistic one plus its effect
    rng = np.random.default_rng([seed, index, 2])
    ly = _realistic_layers(sc, rng)
    fin = np.random.default_rng([seed, index, 3])
    if domain == "realistic":
        return _finish(_compose_day(ly), ly.grade, fin)
    fx = np.random.default_rng([seed, index, 4])
    grade = dict(ly.grade)
    if sc.effect == "fog":
        return _finish(_fog(ly, fx), grade, fin)
    if sc.effect == "night":
        grade["exposure"] *= 1.4
        grade["noise"] = 3.0
        return _finish(_night(ly, sc, fx), grade, fin)
    if sc.effect == "rain":
        grade["sat"] *= 0.7
        grade["blur"] = max(grade["blur"], 0.9 * sc.cam.W / 512)
        return _finish(_rain(ly, sc, fx), grade, fin)
    grade["exposure"] *= float(fx.uniform(0.4, 0.6))
    return _sensor(_finish(_compose_day(ly), grade, fin), fx)


# --------------------------------------------------------------------------------------------------- API


def _check_size(size: Any) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"size must be (height, width), got {size!r}") from None
    if H < MIN_SIZE or W < MIN_SIZE:
        raise UserError(f"size must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {H}x{W}")
    return H, W


def _check_domain(domain: Any) -> str:
    if domain not in DOMAINS:
        raise UserError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    return str(domain)


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise UserError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def adverse_effect(seed: int, index: int) -> str:
    """Which of :data:`ADVERSE_EFFECTS` the adverse domain applies to scene (seed, index)."""
    rng = np.random.default_rng([_check_int("seed", seed, 0), _check_int("index", index, 0), 0x5CE7E])
    # replay the layout's first draws (camera f, cx, horizon, height, curvature), then the effect
    rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06), rng.uniform(0.36, 0.5), rng.uniform(1.25, 1.8)
    if not rng.random() < 0.4:
        rng.uniform(-0.0025, 0.0025)
    return ADVERSE_EFFECTS[int(rng.integers(len(ADVERSE_EFFECTS)))]


def render_scene(seed: int, index: int, domain: str, size: tuple[int, int] = (256, 512)) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Draw street scene ``index`` of ``seed`` in ``domain``.

    Returns:
        image [H, W, 3] uint8 RGB and label [H, W] uint8 train ids (0..18, 255 = ignore), ``(H, W) = size``.
        The label depends only on (seed, index, size); the domain changes the image alone.
    """
    domain = _check_domain(domain)
    H, W = _check_size(size)
    seed, index = _check_int("seed", seed, 0), _check_int("index", index, 0)
    sc = _layout(seed, index, H, W)
    return _paint(sc, seed, index, domain), sc.label


def _write_png(path: Path, arr: np.ndarray) -> None:
    """Write a PNG atomically: a temporary name in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_street_scenes(out_dir: str | os.PathLike, domain: str = "synthetic", n: int = 200, seed: int = 0,
                       size: tuple[int, int] = (256, 512), val_fraction: float = 0.2,
                       progress: bool = True) -> dict[str, Any]:
    """Write ``n`` street scenes of ``domain`` under ``out_dir`` in the Cityscapes layout (module docstring).

    Scene ``i`` is ``render_scene(seed, i, domain, size)``; the last ``round(n * val_fraction)`` scenes form the
    val split, so the val scenes of every domain with the same seed share their layouts (and labels).
    Train scenes go round-robin to the cities ``<domain>0..2``, val scenes to ``<domain>3``; the file stem is
    ``<city>_<i:06d>_000019``.

    Args:
        out_dir: a new or empty folder.
        domain: one of :data:`DOMAINS`.
        n: number of scenes (>= 1).
        seed: output is a pure function of the arguments, byte for byte.
        size: (height, width) in pixels, each >= 64.
        val_fraction: share of scenes in the val split, in [0, 1).
        progress: show a tqdm progress bar on stderr.
    Returns:
        summary dict: out_dir, domain, seed, size, n, counts {train, val}, class_share {class: pixel share},
        class_scenes {class: scenes holding it}, ignore_share, effects (adverse only: {effect: scenes}),
        paths {split: {images, labels}}, files (paths relative to out_dir), seconds.
    """
    t0 = time.perf_counter()
    domain = _check_domain(domain)
    H, W = _check_size(size)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        raise UserError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if not 0.0 <= vf < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new folder")
    n_val = int(round(n * vf))
    out.mkdir(parents=True, exist_ok=True)

    ids_lut = np.zeros(256, dtype=np.uint8)  # train id -> Cityscapes id; ignore -> 0 ("unlabeled")
    for t, c in TRAIN_TO_CITYSCAPES.items():
        ids_lut[t] = c
    pixels = np.zeros(256, dtype=np.int64)
    scenes_with = np.zeros(256, dtype=np.int64)
    effects: dict[str, int] = {}
    files: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"street scenes ({domain})", unit="scene", leave=False)
    try:
        for i in range(n):
            split = "val" if i >= n - n_val else "train"
            city = f"{domain}{TRAIN_CITIES}" if split == "val" else f"{domain}{i % TRAIN_CITIES}"
            stem = f"{city}_{i:06d}_{FRAME:06d}"
            img_dir = out / "leftImg8bit" / split / city
            gt_dir = out / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            sc = _layout(seed, i, H, W)
            image, label = _paint(sc, seed, i, domain), sc.label
            writes = (
                (img_dir / f"{stem}_leftImg8bit.png", image),
                (gt_dir / f"{stem}_gtFine_labelTrainIds.png", label),
                (gt_dir / f"{stem}_gtFine_labelIds.png", ids_lut[label]),
                (gt_dir / f"{stem}_gtFine_color.png", colorize(label)),
            )
            for path, arr in writes:
                _write_png(path, arr)
                files.append(str(path.relative_to(out)))
            counts = np.bincount(label.ravel(), minlength=256)
            pixels += counts
            scenes_with += counts > 0
            if domain == "adverse":
                effects[sc.effect] = effects.get(sc.effect, 0) + 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    total = max(int(pixels.sum()), 1)
    summary: dict[str, Any] = {
        "out_dir": str(out), "domain": domain, "seed": seed, "size": [H, W], "n": n,
        "counts": {"train": n - n_val, "val": n_val},
        "class_share": {name: float(pixels[t]) / total for t, name in enumerate(CLASSES)},
        "class_scenes": {name: int(scenes_with[t]) for t, name in enumerate(CLASSES)},
        "ignore_share": float(pixels[IGNORE]) / total,
        "paths": {split: {"images": str(out / "leftImg8bit" / split), "labels": str(out / "gtFine" / split)}
                  for split in ("train", "val")},
        "files": files,
    }
    if domain == "adverse":
        summary["effects"] = dict(sorted(effects.items()))
    _write_text(out / "README.md", _readme(summary))
    summary["files"].append("README.md")
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _readme(s: dict[str, Any]) -> str:
    H, W = s["size"]
    shares = "\n".join(f"| {name} | {100 * s['class_share'][name]:.2f} | {s['class_scenes'][name]} |"
                       for name in CLASSES)
    eff = ""
    if "effects" in s:
        eff = "Adverse effects drawn: " + ", ".join(f"{k} {v}" for k, v in s["effects"].items()) + ".\n\n"
    looks = {
        "synthetic": "flat shading, one saturated colour per class with a small per-object jitter",
        "realistic": "textured, sun-lit with shadows, haze, lens blur and vignetting",
        "adverse": "the realistic rendering under one of fog, night, rain or sensor noise per scene",
    }[s["domain"]]
    return (
        f"# Street scenes: {s['domain']}\n\n"
        f"Built-in street scenes from `mmseq.vision.scenes`, domain **{s['domain']}** ({looks}).\n\n"
        f"Made with: `mmseq data make street-scenes OUT --domain {s['domain']} --n {s['n']} --seed {s['seed']}`"
        f" (size {H}x{W}).\n\n"
        f"- domain: {s['domain']}\n- seed: {s['seed']}\n- size: {H}x{W} (height x width)\n"
        f"- scenes: {s['n']} ({s['counts']['train']} train, {s['counts']['val']} val)\n\n"
        "Layout (Cityscapes): `leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png` (RGB) and\n"
        "`gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png` (train ids 0..18, 255 = ignore),\n"
        "`_gtFine_labelIds.png` (Cityscapes label ids, 0 = ignore), `_gtFine_color.png` (palette colours).\n"
        "The labels depend only on the seed and the scene number: every domain made with the same seed and size\n"
        "has the same label maps, so the val split can be compared across domains.\n\n"
        f"{eff}"
        "| class | pixel % | scenes |\n|---|---|---|\n"
        f"{shares}\n| (ignore) | {100 * s['ignore_share']:.2f} | |\n"
    )
