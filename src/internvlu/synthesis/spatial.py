"""Spatial reasoning (paper §4.5, App. B.4): the ``spatial`` generator, solid-geometry edit pairs.

Five transform families, each an edit (or think-edit) pair rendered with matplotlib 3-D under one fixed
camera, axes and limits, so the two images differ only by the transform:

* ``rotate``: rotate the solid by 90, 180 or 270 degrees about the x, y or z axis;
* ``revolve``: revolve a 3-6-vertex generator polygon (drawn in a coordinate plane) about an axis in
  that plane into a solid of revolution (the paper's "revolution about the x/y/z axis");
* ``reflect_plane``: mirror the solid in a plane perpendicular to xoy (x = c or y = c), which is drawn;
  the target adds the mirror image;
* ``reflect_point``: point symmetry about a marked point P; the target adds the image;
* ``translate``: move the solid by 4-10 units along one axis;
* ``project``: orthographic projection onto the xoy plane; the target adds the projected outline.

Solids are convex polyhedra with integer vertices (cuboids, prisms and pyramids over random convex
lattice polygons), so every transform above maps vertices to exact integers or halves, which the chain
of thought lists. Faces keep their colour through a transform, so orientation is visible. Ground truth
in ``meta``: vertices before and after, faces, face colours, the 4x4 affine matrix, the transform's
parameters and the camera.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
from PIL import Image

from internvlu.data.records import Sample
from internvlu.synthesis.gen_common import (
    GeneratorConfig,
    check_min_int,
    check_subset,
    check_weights,
    edit_pair_sample,
    figure_image,
    fmt_num,
    new_figure,
    pick,
    pick_weighted,
    probabilities,
    require_matplotlib,
)
from internvlu.synthesis.runner import Generator, RejectSample, register_generator

TASKS: tuple[str, ...] = ("edit", "think")
FAMILIES: tuple[str, ...] = ("rotate", "revolve", "reflect_plane", "reflect_point", "translate", "project")
SOLIDS: tuple[str, ...] = ("cuboid", "prism", "pyramid")
AXES = ("x", "y", "z")
FACE_COLORS = ("#e4572e", "#4c9be8", "#7ac74f", "#ffc914", "#a05eb5", "#f29e4c", "#2ec4b6", "#e56399")
LIMIT = 10  # the scene box is [-LIMIT, LIMIT]^3
FONT = "DejaVu Sans"
POLYGON_NAMES = {3: "triangular", 4: "quadrilateral", 5: "pentagonal", 6: "hexagonal"}


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def convex_hull_2d(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull vertices of 2-D points (monotone chain), collinear points dropped."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) < 3:
        return np.asarray(pts)

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for p in seq:
            while (
                len(out) >= 2
                and (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
                <= 0
            ):
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def random_lattice_polygon(rng: np.random.Generator, n_min: int, n_max: int, span: int) -> np.ndarray:
    """A convex polygon with n_min..n_max integer vertices inside [0, span]^2 (hull of random points)."""
    for _ in range(50):
        pts = rng.integers(0, span + 1, size=(int(rng.integers(n_min, n_max + 3)), 2))
        hull = convex_hull_2d(pts)
        if n_min <= len(hull) <= n_max and polygon_area(hull) >= 2:
            return hull.astype(np.float64)
    raise RejectSample("polygon_failed")


@dataclasses.dataclass
class Solid:
    """A polyhedron: vertices (V, 3), faces (lists of vertex indices), one colour per face."""

    name: str
    vertices: np.ndarray
    faces: list[list[int]]
    colors: list[str]

    def transformed(self, matrix: np.ndarray) -> Solid:
        homo = np.c_[self.vertices, np.ones(len(self.vertices))]  # (V, 4)
        moved = (homo @ matrix.T)[:, :3]  # (V, 3)
        faces = [list(f) for f in self.faces]
        if np.linalg.det(matrix[:3, :3]) < 0:
            faces = [f[::-1] for f in faces]  # mirrors flip orientation; keep outward winding
        return Solid(self.name, np.round(moved, 9) + 0.0, faces, list(self.colors))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vertices": _rows(self.vertices),
            "faces": self.faces,
            "colors": self.colors,
        }


def fmt_float(v: float) -> float:
    return float(round(float(v), 6)) + 0.0  # + 0.0 turns -0.0 into 0.0


def make_solid(rng: np.random.Generator, kind: str) -> Solid:
    """A solid with integer vertices, its base on z = 0 near the origin (placed later)."""
    if kind == "cuboid":
        a, b, c = (int(v) for v in rng.integers(2, 6, size=3))
        base = np.array([[0, 0], [a, 0], [a, b], [0, b]], dtype=np.float64)
        name = "cube" if a == b == c else "cuboid"
        return _prism(base, c, name)
    base = random_lattice_polygon(rng, 3, 6, 5)
    height = int(rng.integers(2, 6))
    label = POLYGON_NAMES[len(base)]
    if kind == "prism":
        return _prism(base, height, f"{label} prism")
    apex_xy = np.round(base.mean(0))
    vertices = np.c_[base, np.zeros(len(base))]
    vertices = np.vstack([vertices, [apex_xy[0], apex_xy[1], height]])
    n = len(base)
    faces = [list(range(n))[::-1]] + [[i, (i + 1) % n, n] for i in range(n)]
    colors = [FACE_COLORS[i % len(FACE_COLORS)] for i in range(len(faces))]
    return Solid(f"{label} pyramid", vertices, faces, colors)


def _prism(base: np.ndarray, height: int, name: str) -> Solid:
    n = len(base)
    bottom = np.c_[base, np.zeros(n)]
    top = np.c_[base, np.full(n, float(height))]
    vertices = np.vstack([bottom, top])
    faces = [list(range(n))[::-1], list(range(n, 2 * n))] + [
        [i, (i + 1) % n, n + (i + 1) % n, n + i] for i in range(n)
    ]
    colors = [FACE_COLORS[i % len(FACE_COLORS)] for i in range(len(faces))]
    return Solid(name, vertices, faces, colors)


def translation(v: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = v
    return m


def rotation(axis: str, degrees: int) -> np.ndarray:
    """Right-handed rotation about a coordinate axis through the origin (exact for multiples of 90)."""
    c = round(math.cos(math.radians(degrees)))
    s = round(math.sin(math.radians(degrees)))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def reflection_plane(axis: str, c: float) -> np.ndarray:
    """Mirror in the plane axis = c (x = c or y = c: perpendicular to xoy)."""
    k = AXES.index(axis)
    m = np.eye(4)
    m[k, k] = -1
    m[k, 3] = 2 * c
    return m


def reflection_point(p: np.ndarray) -> np.ndarray:
    m = -np.eye(4)
    m[3, 3] = 1
    m[:3, 3] = 2 * p
    return m


def revolve_mesh(profile: np.ndarray, segments: int = 48) -> list[np.ndarray]:
    """Quads of the surface swept by the closed (radius, height) polygon about its height axis.

    Returns quads in the axis frame: (r cos t, r sin t, h); the caller maps frame axes to x/y/z.
    """
    ts = np.linspace(0, 2 * np.pi, segments + 1)
    quads = []
    n = len(profile)
    for k in range(n):
        (r0, h0), (r1, h1) = profile[k], profile[(k + 1) % n]
        for t0, t1 in itertools.pairwise(ts):
            quads.append(
                np.array(
                    [
                        [r0 * math.cos(t0), r0 * math.sin(t0), h0],
                        [r0 * math.cos(t1), r0 * math.sin(t1), h0],
                        [r1 * math.cos(t1), r1 * math.sin(t1), h1],
                        [r1 * math.cos(t0), r1 * math.sin(t0), h1],
                    ]
                )
            )
    return quads


# Revolution about `axis`: the generator polygon lies in a coordinate plane containing the axis, at
# (radius along `radial`, height along `axis`); frame (a, b, h) -> world via these column orders.
REVOLVE_FRAMES = {"z": ("x", "y", "z"), "x": ("y", "z", "x"), "y": ("z", "x", "y")}


def frame_to_world(points: np.ndarray, axis: str) -> np.ndarray:
    a, b, h = REVOLVE_FRAMES[axis]
    out = np.zeros_like(points)
    out[:, AXES.index(a)] = points[:, 0]
    out[:, AXES.index(b)] = points[:, 1]
    out[:, AXES.index(h)] = points[:, 2]
    return out


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scene3D:
    """What one image shows: solids, extra translucent polygons, marked points, segments."""

    solids: list[Solid] = dataclasses.field(default_factory=list)
    polygons: list[tuple[np.ndarray, str, float]] = dataclasses.field(
        default_factory=list
    )  # (P, 3), colour, alpha
    points: list[tuple[np.ndarray, str]] = dataclasses.field(default_factory=list)
    surface: list[np.ndarray] = dataclasses.field(default_factory=list)  # revolved quads
    axis_line: str | None = None  # draw a full coordinate axis (revolution axis) dashed


def render_scene(scene: Scene3D, size: int, elev: float, azim: float) -> tuple[Image.Image, list[np.ndarray]]:
    """The image and, per solid (then the revolved surface, if any), pixel positions ((V, 2), x right, y down)."""
    require_matplotlib()
    from matplotlib.colors import to_rgba
    from mpl_toolkits.mplot3d import proj3d
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig, _ = new_figure(size, size)
    ax = fig.add_axes((0, 0, 1, 1), projection="3d")
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_zlim(-LIMIT, LIMIT)
    ax.set_box_aspect((1, 1, 1), zoom=1.45)
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    ax.computed_zorder = False  # draw in our order: floor grid, axes, then the depth-sorted faces
    grid = np.arange(-LIMIT, LIMIT + 1, 2)
    for g in grid:
        ax.plot([g, g], [-LIMIT, LIMIT], [0, 0], color="#dddddd", lw=0.6, zorder=0)
        ax.plot([-LIMIT, LIMIT], [g, g], [0, 0], color="#dddddd", lw=0.6, zorder=0)
    for k, name in enumerate(AXES):
        end = np.zeros(3)
        end[k] = LIMIT
        ax.plot([0, end[0]], [0, end[1]], [0, end[2]], color="#444444", lw=1.2, zorder=1)
        ax.text(*(end * 1.08), name, fontsize=size / 32, family=FONT, color="#222222", zorder=1)
    ax.text(0, 0, 0, "O", fontsize=size / 40, family=FONT, color="#444444", zorder=1)
    if scene.axis_line is not None:
        end = np.zeros(3)
        end[AXES.index(scene.axis_line)] = LIMIT
        ax.plot(*zip(-end, end), color="#222222", lw=1.0, ls="--", zorder=1)
    verts: list[np.ndarray] = []
    colors: list[tuple[float, float, float, float]] = []
    for poly, color, alpha in scene.polygons:
        verts.append(poly)
        colors.append(to_rgba(color, alpha))
    for solid in scene.solids:
        for face, color in zip(solid.faces, solid.colors):
            verts.append(solid.vertices[face])
            colors.append(to_rgba(color, 0.92))
    if verts:
        ax.add_collection3d(
            Poly3DCollection(verts, facecolors=colors, edgecolors="#222222", linewidths=0.8, zorder=2)
        )
    if scene.surface:
        # Lambert shading computed here (not mplot3d's shade=, whose behaviour varies across versions).
        quads = np.asarray(scene.surface)  # (Q, 4, 3)
        normals = np.cross(quads[:, 2] - quads[:, 0], quads[:, 3] - quads[:, 1])  # (Q, 3)
        norms = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = normals / np.where(norms > 0, norms, 1)
        light = np.array([0.4, -0.5, 0.77])
        light = light / np.linalg.norm(light)
        level = 0.45 + 0.55 * np.abs(normals @ light)  # (Q,)
        base = np.asarray(to_rgba("#4c9be8"))
        shaded = np.clip(base[None, :3] * level[:, None], 0, 1)
        face_rgba = np.c_[shaded, np.ones(len(shaded))]
        ax.add_collection3d(
            Poly3DCollection(
                list(quads), facecolors=face_rgba, edgecolors=face_rgba, linewidths=0.3, zorder=3
            )
        )
    for point, label in scene.points:
        ax.scatter(*point, color="#111111", s=size / 20, depthshade=False, zorder=4)
        ax.text(*(point + 0.6), label, fontsize=size / 36, family=FONT, color="#111111", zorder=4)
    image = figure_image(fig)
    projected = []
    groups = [solid.vertices for solid in scene.solids]
    if scene.surface:
        groups.append(np.concatenate(scene.surface))  # checked for the frame, not reported
    for points in groups:
        xs, ys, _ = proj3d.proj_transform(*points.T, ax.get_proj())
        display = ax.transData.transform(np.c_[xs, ys])  # (V, 2), origin bottom-left
        projected.append(np.c_[display[:, 0], size - display[:, 1]])
    return image, projected


# --------------------------------------------------------------------------------------------------
# Config and generator
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SpatialConfig(GeneratorConfig):
    """Settings of the ``spatial`` generator.

    Attributes:
        image_size: side of the square images (>= 192).
        tasks / task_weights: "edit" and/or "think" (the transform worked out vertex by vertex).
        families / family_weights: enabled transforms (see the module docstring).
        solids: solid kinds ("cuboid", "prism", "pyramid").
        elev_range, azim_range: camera elevation and azimuth ranges in degrees (shared by both images).
    """

    image_size: int = 384
    tasks: tuple[str, ...] = TASKS
    task_weights: tuple[float, ...] = ()
    families: tuple[str, ...] = FAMILIES
    family_weights: tuple[float, ...] = ()
    solids: tuple[str, ...] = SOLIDS
    elev_range: tuple[float, ...] = (18.0, 32.0)
    azim_range: tuple[float, ...] = (-65.0, -25.0)

    def validate(self) -> None:
        check_min_int("image_size", self.image_size, 192)
        check_subset("tasks", self.tasks, TASKS)
        check_weights("task_weights", self.task_weights, self.tasks)
        check_subset("families", self.families, FAMILIES)
        check_weights("family_weights", self.family_weights, self.families)
        check_subset("solids", self.solids, SOLIDS)
        for name in ("elev_range", "azim_range"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"{name}={value!r} must be (low, high) with low <= high")


def _pt(v: np.ndarray) -> str:
    return "(" + ", ".join(fmt_num(float(c)) for c in v) + ")"


def _vertex_lines(before: np.ndarray, after: np.ndarray, limit: int = 8) -> str:
    names = [chr(ord("A") + i) for i in range(len(before))]
    pairs = [f"{n}{_pt(b)} -> {_pt(a)}" for n, b, a in zip(names, before, after)]
    text = "; ".join(pairs[:limit])
    if len(pairs) > limit:
        text += f"; and likewise for the other {len(pairs) - limit} vertices"
    return text


Built = tuple[Scene3D, Scene3D, str, str, dict[str, Any]]


@register_generator("spatial")
class SpatialGenerator(Generator):
    """Solid-geometry transforms as edit pairs; see the module docstring."""

    config_class = SpatialConfig

    def __init__(self, config: SpatialConfig) -> None:
        super().__init__(config)
        require_matplotlib()
        self.cfg = config
        self.task_p = probabilities(config.task_weights, len(config.tasks))
        self.family_p = probabilities(config.family_weights, len(config.families))

    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        task = pick_weighted(rng, self.cfg.tasks, self.task_p)
        family = pick_weighted(rng, self.cfg.families, self.family_p)
        elev = float(np.round(rng.uniform(*self.cfg.elev_range), 1))
        azim = float(np.round(rng.uniform(*self.cfg.azim_range), 1))
        before, after, prompt, thought, truth = getattr(self, f"_{family}")(rng)
        size = self.cfg.image_size
        image_in, pix_in = render_scene(before, size, elev, azim)
        image_out, pix_out = render_scene(after, size, elev, azim)
        margin = 0.03 * size
        for pix in (*pix_in, *pix_out):  # every vertex inside the frame, with a margin
            if pix.min() < margin or pix.max() > size - margin:
                raise RejectSample("out_of_frame")
        if image_in.tobytes() == image_out.tobytes():
            raise RejectSample("edit_changes_nothing")
        meta = {
            "world": "spatial",
            "family": f"{task}/{family}",
            "camera": {"elev": elev, "azim": azim},
            "limits": [-LIMIT, LIMIT],
            **truth,
            "pixels": _pixels(pix_in[: len(before.solids)]),
            "target_pixels": _pixels(pix_out[: len(after.solids)]),
        }
        return edit_pair_sample(task, sample_id, prompt, thought, image_in, image_out, meta)

    # ---- placing solids --------------------------------------------------------------------------

    def _solid(self, rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> Solid:
        """A random solid translated (by integers) so that its bounding box lies inside [low, high]."""
        solid = make_solid(rng, pick(rng, self.cfg.solids))
        lo, hi = solid.vertices.min(0), solid.vertices.max(0)
        room_lo, room_hi = low - lo, high - hi
        if np.any(room_hi < room_lo):
            raise RejectSample("no_room")
        shift = np.array(
            [int(rng.integers(math.ceil(a), math.floor(b) + 1)) for a, b in zip(room_lo, room_hi)]
        )
        return solid.transformed(translation(shift))

    @staticmethod
    def _describe(solid: Solid) -> str:
        lo, hi = solid.vertices.min(0), solid.vertices.max(0)
        centre = (lo + hi) / 2
        return (
            f"a {solid.name} with {len(solid.vertices)} vertices, its bounding box centred at {_pt(centre)}"
        )

    def _apply(self, solid: Solid, matrix: np.ndarray) -> Solid:
        moved = solid.transformed(matrix)
        if np.abs(moved.vertices).max() > LIMIT - 0.5:
            raise RejectSample("out_of_view")
        return moved

    # ---- families --------------------------------------------------------------------------------

    def _rotate(self, rng: np.random.Generator) -> Built:
        axis = pick(rng, AXES)
        angle = pick(rng, (90, 180, 270))
        solid = self._solid(rng, np.array([-7, -7, 0]), np.array([7, 7, 7]))
        matrix = rotation(axis, angle)
        moved = self._apply(solid, matrix)
        rule = mapping_text(matrix)
        thought = (
            f"The input shows {self._describe(solid)}. A rotation by {angle} degrees about the {axis}-axis "
            f"(right-handed, counter-clockwise looking from +{axis} towards the origin) keeps {axis} fixed: {rule}. "
            f"Vertex by vertex: {_vertex_lines(solid.vertices, moved.vertices)}. "
            f"Each face keeps its colour, so the result is {self._describe(moved)}."
        )
        prompt = f"Rotate the solid {angle} degrees counter-clockwise about the {axis}-axis."
        truth = _transform_truth({"kind": "rotate", "axis": axis, "degrees": angle}, matrix, solid, moved)
        return Scene3D([solid]), Scene3D([moved]), prompt, thought, truth

    def _translate(self, rng: np.random.Generator) -> Built:
        axis = pick(rng, AXES)
        distance = int(rng.integers(4, 11)) * pick(rng, (1, -1))
        k = AXES.index(axis)
        low, high = np.array([-9.0, -9, -2]), np.array([9.0, 9, 9])
        if distance > 0:
            high[k] -= distance
        else:
            low[k] -= distance
        solid = self._solid(rng, low, high)
        vector = np.zeros(3)
        vector[k] = distance
        matrix = translation(vector)
        moved = self._apply(solid, matrix)
        thought = (
            f"The input shows {self._describe(solid)}. Translating by {distance:+d} along the {axis}-axis adds "
            f"{distance:+d} to every {axis} coordinate and leaves the others: {_vertex_lines(solid.vertices, moved.vertices)}. "
            f"Shape, size, orientation and face colours are unchanged; the result is {self._describe(moved)}."
        )
        direction = f"the {'positive' if distance > 0 else 'negative'} {axis} direction"
        prompt = f"Move the solid {abs(distance)} units in {direction}."
        transform = {"kind": "translate", "axis": axis, "distance": distance}
        truth = _transform_truth(transform, matrix, solid, moved)
        return Scene3D([solid]), Scene3D([moved]), prompt, thought, truth

    def _reflect_plane(self, rng: np.random.Generator) -> Built:
        axis = pick(rng, ("x", "y"))
        c = int(rng.integers(-2, 3))
        k = AXES.index(axis)
        low, high = np.array([-9.0, -9, 0]), np.array([9.0, 9, 7])
        side = pick(rng, (1, -1))
        if side > 0:
            low[k] = c + 1  # keep the solid strictly on one side of the plane
        else:
            high[k] = c - 1
        solid = self._solid(rng, low, high)
        matrix = reflection_plane(axis, c)
        image = self._apply(solid, matrix)
        other = 1 - k  # the other horizontal axis (k is x=0 or y=1)
        corners = []
        for u, z in ((-LIMIT + 1, -1), (LIMIT - 1, -1), (LIMIT - 1, 9), (-LIMIT + 1, 9)):
            p = np.zeros(3)
            p[k], p[other], p[2] = c, u, z
            corners.append(p)
        plane = (np.asarray(corners), "#9aa5b1", 0.25)
        thought = (
            f"The input shows {self._describe(solid)} and the plane {axis} = {c}, which is perpendicular to the "
            f"xoy plane. Reflection in it maps {axis} to {fmt_num(2 * c)} - {axis} and keeps the other coordinates: "
            f"{_vertex_lines(solid.vertices, image.vertices)}. The mirror image is congruent but of opposite "
            f"handedness; I add it on the other side of the plane and keep the original."
        )
        prompt = f"Draw the mirror image of the solid in the plane {axis} = {c}, keeping the original."
        truth = _transform_truth({"kind": "reflect_plane", "axis": axis, "c": c}, matrix, solid, image)
        return (Scene3D([solid], [plane]), Scene3D([solid, image], [plane]), prompt, thought, truth)

    def _reflect_point(self, rng: np.random.Generator) -> Built:
        p = np.array(
            [int(v) for v in rng.integers(-2, 3, size=2)] + [int(rng.integers(1, 4))], dtype=np.float64
        )
        solid = self._solid(rng, np.array([-8.0, -8, -2]), np.array([8.0, 8, 8]))
        if np.all(solid.vertices.min(0) <= p) and np.all(p <= solid.vertices.max(0)):
            raise RejectSample("point_inside_solid")
        matrix = reflection_point(p)
        image = self._apply(solid, matrix)
        gap = np.maximum(
            solid.vertices.min(0) - image.vertices.max(0), image.vertices.min(0) - solid.vertices.max(0)
        )
        if gap.max() < 1:  # bounding boxes closer than one unit on every axis: the two would overlap
            raise RejectSample("image_overlaps_solid")
        label = f"P{_pt(p)}"
        thought = (
            f"The input shows {self._describe(solid)} and the point {label}. Point symmetry about P maps each "
            f"vertex V to 2P - V, i.e. {mapping_text(matrix)}: {_vertex_lines(solid.vertices, image.vertices)}. "
            "P is the midpoint of every vertex and its image; I add the image and keep the original."
        )
        prompt = f"Draw the image of the solid under point symmetry about {label}, keeping the original."
        transform = {"kind": "reflect_point", "point": [fmt_float(v) for v in p]}
        truth = _transform_truth(transform, matrix, solid, image)
        return (
            Scene3D([solid], points=[(p, "P")]),
            Scene3D([solid, image], points=[(p, "P")]),
            prompt,
            thought,
            truth,
        )

    def _project(self, rng: np.random.Generator) -> Built:
        solid = self._solid(rng, np.array([-8.0, -8, 2]), np.array([8.0, 8, 9]))
        xy = solid.vertices[:, :2]
        hull = convex_hull_2d(xy)
        shadow = np.c_[hull, np.zeros(len(hull))]
        area = polygon_area(hull)
        thought = (
            f"The input shows {self._describe(solid)}, floating above the xoy plane. Orthographic projection onto "
            f"xoy sends (x, y, z) to (x, y, 0). The solid is convex, so its projection is the convex hull of the "
            f"projected vertices: a {len(hull)}-gon with corners {', '.join(_pt(v) for v in shadow)} and area "
            f"{fmt_num(area)}. I draw it as a grey region on the xoy plane under the solid."
        )
        prompt = "Draw the orthographic projection of the solid onto the xoy plane."
        truth = {
            "transform": {"kind": "project", "plane": "xoy"},
            "matrix": _rows(np.diag([1.0, 1, 0, 1])),
            "solid": solid.to_dict(),
            "projection": _rows(shadow),
            "projection_area": fmt_float(area),
        }
        return Scene3D([solid]), Scene3D([solid], [(shadow, "#555555", 0.55)]), prompt, thought, truth

    def _revolve(self, rng: np.random.Generator) -> Built:
        axis = pick(rng, AXES)
        hull = random_lattice_polygon(rng, 3, 6, 5)  # (radius, height) lattice points in [0, 5]^2
        offset = int(rng.integers(0, 3))  # distance of the polygon from the axis (0 = touching it)
        height0 = int(rng.integers(-3, 1))
        profile = hull + np.array([offset, height0])
        a, _, h = REVOLVE_FRAMES[axis]
        poly3d = frame_to_world(np.c_[profile[:, 0], np.zeros(len(profile)), profile[:, 1]], axis)
        quads = [frame_to_world(q, axis) for q in revolve_mesh(profile)]
        r_min, r_max = float(profile[:, 0].min()), float(profile[:, 0].max())
        h_min, h_max = float(profile[:, 1].min()), float(profile[:, 1].max())
        touching = r_min == 0
        shape = (
            "a solid without a hole"
            if touching
            else f"a ring-shaped solid with a hole of radius {fmt_num(r_min)}"
        )
        corners = ", ".join(_pt(v) for v in poly3d)
        thought = (
            f"The generator polygon has {len(profile)} vertices, {corners}, in the {_plane_name(a, h)} plane on the side "
            f"{a} >= 0 of the {axis}-axis. Revolving it about the {axis}-axis sweeps each point on a circle whose "
            f"radius is its distance {a} from the axis, so the solid spans {h} from {fmt_num(h_min)} to "
            f"{fmt_num(h_max)} with outer radius {fmt_num(r_max)}; the polygon "
            f"{'touches' if touching else 'does not touch'} the axis, giving {shape}."
        )
        prompt = (
            f"Revolve the shaded polygon about the {axis}-axis and draw the resulting solid of revolution."
        )
        truth = {
            "transform": {"kind": "revolve", "axis": axis},
            "polygon": _rows(poly3d),
            "profile": _rows(profile),
            "radius_range": [r_min, r_max],
            "height_range": [h_min, h_max],
        }
        polygon = (poly3d, "#e4572e", 0.85)
        return (
            Scene3D(polygons=[polygon], axis_line=axis),
            Scene3D(surface=quads, axis_line=axis),
            prompt,
            thought,
            truth,
        )


def mapping_text(matrix: np.ndarray) -> str:
    """The affine map as coordinates, e.g. "(x, y, z) -> (x, -z, y)" (integer matrices only)."""
    outs = []
    for row in matrix[:3]:
        terms = []
        for coef, name in zip(row[:3], AXES):
            if coef:
                sign = "-" if coef < 0 else "+"
                mag = "" if abs(coef) == 1 else fmt_num(abs(coef))
                terms.append(f"{sign} {mag}{name}")
        if row[3]:
            terms.append(f"{'-' if row[3] < 0 else '+'} {fmt_num(abs(row[3]))}")
        text = " ".join(terms) or "0"
        outs.append(text[2:] if text.startswith("+ ") else "-" + text[2:])
    return f"(x, y, z) -> ({', '.join(outs)})"


def _plane_name(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first}o{second}"


def _pixels(groups: list[np.ndarray]) -> list[list[list[float]]]:
    return [[[round(float(v), 2) for v in p] for p in pix] for pix in groups]


def _rows(m: np.ndarray) -> list[list[float]]:
    """A 2-D array (matrix, vertex list, polygon) as JSON rows of rounded floats."""
    return [[fmt_float(v) for v in row] for row in m]


def _transform_truth(
    transform: dict[str, Any], matrix: np.ndarray, before: Solid, after: Solid
) -> dict[str, Any]:
    """Ground truth of a family that maps one solid by a 4x4 matrix (rotate, translate, reflections)."""
    return {
        "transform": transform,
        "matrix": _rows(matrix),
        "solid": before.to_dict(),
        "target_solid": after.to_dict(),
    }
