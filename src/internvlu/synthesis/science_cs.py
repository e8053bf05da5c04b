"""Computer-science editing (paper §4.4, App. B.3): the ``cs`` generator.

Each sample is an edit (or think-edit) pair over a data structure drawn with matplotlib at fixed node
positions, so input and target align pixel for pixel except where the operation changes something. The
target and the chain of thought come from a classic solver run on the structure:

* ``bst_insert``: insert a key into a binary search tree (the comparison path is the thought);
* ``heap_insert`` / ``heap_extract``: min- or max-heap insert (sift up) and extract-root (sift down),
  drawn as a tree with its array view below;
* ``shortest_path``: Dijkstra on a weighted undirected graph, the (unique) shortest path highlighted;
* ``khop``: the k-hop neighbourhood of a node (breadth-first layers);
* ``traversal``: pre-/in-/post-/level-order of a binary tree, or BFS / DFS of a graph (neighbours in
  alphabetical order), with the visiting order written next to each node;
* ``fsm_trace``: run a string through a deterministic finite automaton; the transitions taken and the
  final state (accepting or not) are highlighted.

Trees sit at heap-index positions (the root at slot 1, children of slot i at 2i and 2i+1), so adding or
removing a node never moves another. Graph nodes sit on a jittered 3x3 grid; a candidate edge that would
pass near a third node or cross another edge is dropped (the paper's occlusion check), so every drawing
is readable. Ground truth in ``meta``: the structure before and after, the solver's steps and answer,
and every node's pixel centre and radius (``nodes``) in both images.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections.abc import Callable
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
    new_figure,
    pick,
    pick_distinct,
    pick_weighted,
    probabilities,
    require_matplotlib,
)
from internvlu.synthesis.runner import Generator, RejectSample, register_generator

TASKS: tuple[str, ...] = ("edit", "think")
FAMILIES: tuple[str, ...] = (
    "bst_insert",
    "heap_insert",
    "heap_extract",
    "shortest_path",
    "khop",
    "traversal",
    "fsm_trace",
)
FONT = "DejaVu Sans"  # bundled with matplotlib: the same glyphs on every machine

WHITE = "#ffffff"
INK = "#222222"
HIGHLIGHT = "#ffb000"  # visited / changed nodes
SOURCE = "#e4572e"  # the source node, the path
NEW = "#7ac74f"  # inserted node, accepting end state
BADGE = "#3b75af"  # order badges
LIGHT = "#fde7b0"  # array cells that changed
LETTERS = "ABCDEFGHIJ"

# --------------------------------------------------------------------------------------------------
# Drawing model: what is drawn, in normalised image coordinates (x right, y down, both in [0, 1]).
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DNode:
    x: float
    y: float
    label: str
    fill: str = WHITE
    edge: str = INK
    width: float = 1.6
    double: bool = False  # accepting FSM state


@dataclasses.dataclass
class DEdge:
    u: str
    v: str
    directed: bool = False
    label: str = ""
    color: str = INK
    width: float = 1.4
    rad: float = 0.0  # arc3 curvature; 0 = straight


@dataclasses.dataclass
class DCell:
    x: float  # centre
    y: float
    w: float
    h: float
    text: str
    fill: str = WHITE


@dataclasses.dataclass
class Drawing:
    nodes: dict[str, DNode] = dataclasses.field(default_factory=dict)
    edges: list[DEdge] = dataclasses.field(default_factory=list)
    badges: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)
    cells: list[DCell] = dataclasses.field(default_factory=list)
    notes: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)
    start: str | None = None  # FSM start state (an arrow comes in from above)

    def copy(self) -> Drawing:
        return Drawing(
            {k: dataclasses.replace(n) for k, n in self.nodes.items()},
            [dataclasses.replace(e) for e in self.edges],
            list(self.badges),
            [dataclasses.replace(c) for c in self.cells],
            list(self.notes),
            self.start,
        )


def render(drawing: Drawing, size: int, radius: float) -> Image.Image:
    """Draw with matplotlib (Agg) on a `size` x `size` canvas; `radius` is the node radius (normalised)."""
    require_matplotlib()
    from matplotlib.patches import Arc, Circle, FancyArrowPatch, Rectangle

    fig, _ = new_figure(size, size)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)  # y down, like image rows
    ax.set_axis_off()
    pt_per_unit = size * 72 / fig.dpi  # points per normalised unit
    r_pt = radius * pt_per_unit
    label_pt = r_pt * 0.95
    for edge in drawing.edges:
        a, b = drawing.nodes[edge.u], drawing.nodes[edge.v]
        style = "-|>" if edge.directed else "-"
        if edge.u == edge.v:
            # Self-loop: a circle of radius 0.7r centred 1.45r out from the node, on the side facing away
            # from the drawing's centre; the arc outside the node is drawn, with an arrowhead where it ends.
            ang = math.atan2(a.y - 0.5, a.x - 0.5)
            ux, uy = math.cos(ang), math.sin(ang)
            d, rho = 1.45 * radius, 0.7 * radius
            cx, cy = a.x + ux * d, a.y + uy * d
            back = math.atan2(-uy, -ux)  # direction from the loop centre to the node centre
            phi = math.acos((d * d + rho * rho - radius * radius) / (2 * d * rho))
            t1, t2 = back + phi, back + 2 * math.pi - phi
            ax.add_patch(
                Arc(
                    (cx, cy),
                    2 * rho,
                    2 * rho,
                    theta1=math.degrees(t1),
                    theta2=math.degrees(t2),
                    color=edge.color,
                    lw=edge.width,
                    zorder=1,
                )
            )
            tip = (cx + rho * math.cos(t2), cy + rho * math.sin(t2))
            tail = (cx + rho * math.cos(t2 - 0.5), cy + rho * math.sin(t2 - 0.5))
            patch = FancyArrowPatch(
                tail,
                tip,
                arrowstyle="-|>",
                mutation_scale=r_pt * 0.55,
                color=edge.color,
                lw=edge.width,
                shrinkA=0,
                shrinkB=0,
                zorder=1,
            )
            lx, ly = a.x + ux * (d + rho + 0.55 * radius), a.y + uy * (d + rho + 0.55 * radius)
        elif not edge.directed and edge.rad == 0:
            # A plain segment between the circles: far cheaper to draw than an arrow patch.
            length = math.hypot(b.x - a.x, b.y - a.y)
            ux, uy = (b.x - a.x) / length, (b.y - a.y) / length
            xs = (a.x + ux * radius, b.x - ux * radius)
            ys = (a.y + uy * radius, b.y - uy * radius)
            patch = None
            ax.plot(xs, ys, color=edge.color, lw=edge.width, solid_capstyle="butt", zorder=1)
            lx, ly = edge_label_point(a, b, 0.0)
        else:
            patch = FancyArrowPatch(
                (a.x, a.y),
                (b.x, b.y),
                connectionstyle=f"arc3,rad={edge.rad}",
                arrowstyle=style,
                mutation_scale=r_pt * 0.55,
                color=edge.color,
                lw=edge.width,
                shrinkA=r_pt,
                shrinkB=r_pt,
                zorder=1,
            )
            lx, ly = edge_label_point(a, b, edge.rad)
        if patch is not None:
            ax.add_patch(patch)
        if edge.label:
            ax.text(
                lx,
                ly,
                edge.label,
                ha="center",
                va="center",
                fontsize=label_pt * 0.85,
                family=FONT,
                color=edge.color,
                zorder=2,
                bbox={"boxstyle": "round,pad=0.15", "fc": WHITE, "ec": "none"},
            )
    for node in drawing.nodes.values():
        ax.add_patch(Circle((node.x, node.y), radius, fc=node.fill, ec=node.edge, lw=node.width, zorder=3))
        if node.double:
            ax.add_patch(
                Circle((node.x, node.y), radius * 0.8, fc="none", ec=node.edge, lw=node.width * 0.8, zorder=3)
            )
        ax.text(
            node.x,
            node.y,
            node.label,
            ha="center",
            va="center",
            fontsize=label_pt,
            family=FONT,
            color=INK,
            zorder=4,
        )
    if drawing.start is not None:
        s = drawing.nodes[drawing.start]
        ax.add_patch(
            FancyArrowPatch(
                (s.x, s.y - 3 * radius),
                (s.x, s.y),
                arrowstyle="-|>",
                mutation_scale=r_pt * 0.55,
                color=INK,
                lw=1.4,
                shrinkA=0,
                shrinkB=r_pt,
                zorder=1,
            )
        )
    for x, y, text in drawing.badges:
        ax.add_patch(Circle((x, y), radius * 0.55, fc=BADGE, ec="none", zorder=5))
        ax.text(
            x, y, text, ha="center", va="center", fontsize=label_pt * 0.7, family=FONT, color=WHITE, zorder=6
        )
    for cell in drawing.cells:
        ax.add_patch(
            Rectangle(
                (cell.x - cell.w / 2, cell.y - cell.h / 2),
                cell.w,
                cell.h,
                fc=cell.fill,
                ec=INK,
                lw=1.0,
                zorder=3,
            )
        )
        ax.text(
            cell.x,
            cell.y,
            cell.text,
            ha="center",
            va="center",
            fontsize=label_pt * 0.8,
            family=FONT,
            color=INK,
            zorder=4,
        )
    for x, y, text in drawing.notes:
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=label_pt * 0.6,
            family=FONT,
            color="#666666",
            zorder=4,
        )
    return figure_image(fig)


def edge_label_point(a: DNode, b: DNode, rad: float) -> tuple[float, float]:
    """Midpoint of matplotlib's arc3 curve (quadratic Bezier through control mid + rad * (dy, -dx))."""
    mx, my = (a.x + b.x) / 2, (a.y + b.y) / 2
    dx, dy = b.x - a.x, b.y - a.y
    # The control point is computed in display space where y points up; our y axis points down.
    cx, cy = mx - rad * dy, my + rad * dx
    return 0.5 * mx + 0.5 * cx, 0.5 * my + 0.5 * cy


def node_boxes(drawing: Drawing, size: int, radius: float) -> dict[str, dict[str, Any]]:
    """Pixel centre, radius and label of every node (the meta ground truth)."""
    return {
        key: {
            "label": n.label,
            "cx": round(n.x * size, 2),
            "cy": round(n.y * size, 2),
            "r": round(radius * size, 2),
        }
        for key, n in drawing.nodes.items()
    }


# --------------------------------------------------------------------------------------------------
# Trees at heap-index slots
# --------------------------------------------------------------------------------------------------


def slot_position(slot: int, top: float, bottom: float, levels: int) -> tuple[float, float]:
    """Centre of heap slot `slot` (root = 1) in a tree of `levels` levels drawn between `top` and `bottom`."""
    depth = slot.bit_length() - 1
    offset = slot - (1 << depth)
    margin = 0.06
    x = margin + (offset + 0.5) * (1 - 2 * margin) / (1 << depth)
    y = top + depth * (bottom - top) / max(1, levels - 1)
    return x, y


def bst_insert_path(tree: dict[int, int], key: int) -> tuple[list[int], int]:
    """Slots visited while inserting `key` into a BST stored as slot -> key; returns (path, new slot)."""
    slot, path = 1, []
    while slot in tree:
        path.append(slot)
        slot = 2 * slot if key < tree[slot] else 2 * slot + 1
    return path, slot


def tree_drawing(tree: dict[int, Any], top: float, bottom: float, levels: int) -> Drawing:
    drawing = Drawing()
    for slot in sorted(tree):
        x, y = slot_position(slot, top, bottom, levels)
        drawing.nodes[str(slot)] = DNode(x, y, str(tree[slot]))
    for slot in sorted(tree):
        if slot > 1:
            drawing.edges.append(DEdge(str(slot // 2), str(slot)))
    return drawing


def heap_order(values: list[int], kind: str) -> Callable[[int, int], bool]:
    """`before(a, b)`: whether a must sit above b in a min- or max-heap."""
    return (lambda a, b: a < b) if kind == "min" else (lambda a, b: a > b)


# --------------------------------------------------------------------------------------------------
# Graphs on a jittered grid
# --------------------------------------------------------------------------------------------------


def _seg_point_dist(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    ax_, ay = a
    bx, by = b
    px, py = p
    dx, dy = bx - ax_, by - ay
    t = max(0.0, min(1.0, ((px - ax_) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax_ + t * dx), py - (ay + t * dy))


def _segments_cross(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float], d: tuple[float, float]
) -> bool:
    def orient(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0


@dataclasses.dataclass
class Graph:
    pos: dict[str, tuple[float, float]]
    edges: dict[tuple[str, str], int]  # (u, v) with u < v -> weight (1 when unweighted)

    def neighbours(self, node: str) -> list[str]:
        out = [v for (a, v) in self.edges if a == node] + [a for (a, v) in self.edges if v == node]
        return sorted(out)

    def weight(self, u: str, v: str) -> int:
        return self.edges[(min(u, v), max(u, v))]


def random_graph(
    rng: np.random.Generator, n: int, radius: float, weighted: bool, extra_prob: float = 0.45
) -> Graph:
    """Connected planar-drawn graph: nodes on a jittered 3x3 grid, edges between nearby cells only."""
    cells = [int(c) for c in rng.choice(9, size=n, replace=False)]
    pitch, origin = 0.8 / 3, 0.1
    pos: dict[str, tuple[float, float]] = {}
    for letter, cell in zip(LETTERS, sorted(cells)):
        cx = origin + (cell % 3 + 0.5) * pitch + rng.uniform(-0.22, 0.22) * pitch
        cy = origin + (cell // 3 + 0.5) * pitch + rng.uniform(-0.22, 0.22) * pitch
        pos[letter] = (round(cx, 4), round(cy, 4))
    names = list(pos)
    candidates = [
        (u, v)
        for i, u in enumerate(names)
        for v in names[i + 1 :]
        if math.dist(pos[u], pos[v]) <= 1.6 * pitch
    ]
    order = [candidates[int(i)] for i in rng.permutation(len(candidates))]
    parent = {u: u for u in names}

    def find(u: str) -> str:
        while parent[u] != u:
            u = parent[u]
        return u

    chosen: list[tuple[str, str]] = []

    def clear(u: str, v: str) -> bool:
        # Occlusion check: no third node near the segment, no crossing with an accepted edge.
        if any(_seg_point_dist(pos[w], pos[u], pos[v]) < 2.0 * radius for w in names if w not in (u, v)):
            return False
        return not any(
            _segments_cross(pos[u], pos[v], pos[a], pos[b]) for a, b in chosen if len({u, v, a, b}) == 4
        )

    for u, v in order:  # spanning tree first (Kruskal on a random order), so the graph is connected
        if find(u) != find(v) and clear(u, v):
            parent[find(u)] = find(v)
            chosen.append((u, v))
    if len({find(u) for u in names}) != 1:
        raise RejectSample("graph_disconnected")
    for u, v in order:
        if (u, v) not in chosen and rng.random() < extra_prob and clear(u, v):
            chosen.append((u, v))
    weights = {e: (int(rng.integers(1, 10)) if weighted else 1) for e in sorted(chosen)}
    return Graph(pos, weights)


def graph_drawing(graph: Graph, weighted: bool) -> Drawing:
    drawing = Drawing()
    for name, (x, y) in graph.pos.items():
        drawing.nodes[name] = DNode(x, y, name)
    for (u, v), w in graph.edges.items():
        drawing.edges.append(DEdge(u, v, label=str(w) if weighted else ""))
    return drawing


def dijkstra(
    graph: Graph, source: str
) -> tuple[dict[str, int], dict[str, list[str]], list[tuple[str, int, list[tuple[str, int]]]]]:
    """Distances, all shortest-path predecessors, and the steps (node settled, its distance, updates)."""
    dist = {source: 0}
    preds: dict[str, list[str]] = {source: []}
    done: set[str] = set()
    steps = []
    queue = [(0, source)]
    while queue:
        d, u = heapq.heappop(queue)
        if u in done:
            continue
        done.add(u)
        updates = []
        for v in graph.neighbours(u):
            if v in done:
                continue
            nd = d + graph.weight(u, v)
            if v not in dist or nd < dist[v]:
                dist[v], preds[v] = nd, [u]
                heapq.heappush(queue, (nd, v))
                updates.append((v, nd))
            elif nd == dist[v]:
                preds[v].append(u)
        steps.append((u, d, updates))
    return dist, preds, steps


def bfs_layers(graph: Graph, source: str) -> list[list[str]]:
    layers, seen = [[source]], {source}
    while True:
        nxt = sorted({v for u in layers[-1] for v in graph.neighbours(u) if v not in seen})
        if not nxt:
            return layers
        seen.update(nxt)
        layers.append(nxt)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CsConfig(GeneratorConfig):
    """Settings of the ``cs`` generator.

    Attributes:
        image_size: side of the square images (>= 192).
        tasks / task_weights: "edit" (instruction only) and/or "think" (with the solver's thought).
        families / family_weights: enabled task families (see the module docstring).
        min_nodes, max_nodes: graph size (4..9; trees and heaps use their own limits of 15 slots).
    """

    image_size: int = 384
    tasks: tuple[str, ...] = TASKS
    task_weights: tuple[float, ...] = ()
    families: tuple[str, ...] = FAMILIES
    family_weights: tuple[float, ...] = ()
    min_nodes: int = 5
    max_nodes: int = 8

    def validate(self) -> None:
        check_min_int("image_size", self.image_size, 192)
        check_subset("tasks", self.tasks, TASKS)
        check_weights("task_weights", self.task_weights, self.tasks)
        check_subset("families", self.families, FAMILIES)
        check_weights("family_weights", self.family_weights, self.families)
        if not 4 <= self.min_nodes <= self.max_nodes <= 9:
            raise ValueError(f"need 4 <= min_nodes <= max_nodes <= 9, got {self.min_nodes}, {self.max_nodes}")


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------

Built = tuple[Drawing, Drawing, str, str, dict[str, Any]]  # input, target, prompt, thought, ground truth


@register_generator("cs")
class CsGenerator(Generator):
    """Data-structure and algorithm edits with solver chains of thought; see the module docstring."""

    config_class = CsConfig
    RADIUS = 0.042  # node radius as a fraction of the image side

    def __init__(self, config: CsConfig) -> None:
        super().__init__(config)
        require_matplotlib()
        self.cfg = config
        self.task_p = probabilities(config.task_weights, len(config.tasks))
        self.family_p = probabilities(config.family_weights, len(config.families))

    def sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        task = pick_weighted(rng, self.cfg.tasks, self.task_p)
        family = pick_weighted(rng, self.cfg.families, self.family_p)
        before, after, prompt, thought, truth = getattr(self, f"_{family}")(rng)
        size = self.cfg.image_size
        image_in = render(before, size, self.RADIUS)
        image_out = render(after, size, self.RADIUS)
        if image_in.tobytes() == image_out.tobytes():
            raise RejectSample("edit_changes_nothing")
        meta = {
            "world": "cs",
            "family": f"{task}/{family}",
            "solver": truth,
            "nodes": node_boxes(before, size, self.RADIUS),
            "target_nodes": node_boxes(after, size, self.RADIUS),
        }
        return edit_pair_sample(task, sample_id, prompt, thought, image_in, image_out, meta)

    # ---- trees -----------------------------------------------------------------------------------

    def _random_bst(self, rng: np.random.Generator, count: int) -> dict[int, int]:
        tree: dict[int, int] = {}
        for key in (int(k) for k in rng.choice(np.arange(1, 100), size=4 * count, replace=False)):
            _, slot = bst_insert_path(tree, key)
            if slot < 16:  # at most 4 levels
                tree[slot] = key
            if len(tree) == count:
                break
        return tree

    def _bst_insert(self, rng: np.random.Generator) -> Built:
        tree = self._random_bst(rng, int(rng.integers(4, 10)))
        free = [k for k in range(1, 100) if k not in tree.values()]
        options = [k for k in free if bst_insert_path(tree, k)[1] < 16]
        if not options:
            raise RejectSample("bst_full")
        key = pick(rng, options)
        path, slot = bst_insert_path(tree, key)
        before = tree_drawing(tree, 0.1, 0.86, 4)
        after_tree = {**tree, slot: key}
        after = tree_drawing(after_tree, 0.1, 0.86, 4)
        after.nodes[str(slot)].fill = NEW
        steps = []
        for s in path:
            go = "left" if key < tree[s] else "right"
            steps.append(f"{key} {'<' if go == 'left' else '>'} {tree[s]}, go {go}")
        side = "left" if slot % 2 == 0 else "right"
        thought = (
            f"Start at the root {tree[1]}. " + "; ".join(steps) + ". "
            f"The {side} child of {tree[slot // 2]} is empty, so {key} becomes the {side} child of {tree[slot // 2]} "
            f"at depth {slot.bit_length() - 1}. No other node moves; I draw the new node in green."
        )
        prompt = f"Insert the key {key} into this binary search tree and draw the resulting tree."
        truth = {
            "before": _slots(tree),
            "after": _slots(after_tree),
            "key": key,
            "path": [tree[s] for s in path],
            "parent": tree[slot // 2],
            "side": side,
        }
        return before, after, prompt, thought, truth

    def _heap_drawing(self, values: list[int], changed: set[int] = frozenset()) -> Drawing:  # type: ignore[assignment]
        drawing = tree_drawing({i + 1: v for i, v in enumerate(values)}, 0.08, 0.6, 4)
        width = 0.88 / 15
        for i in range(15):
            x = 0.06 + (i + 0.5) * width
            if i < len(values):
                drawing.cells.append(
                    DCell(x, 0.8, width, 0.07, str(values[i]), LIGHT if i in changed else WHITE)
                )
            drawing.notes.append((x, 0.86, str(i)))
        for i in changed:
            if i < len(values):
                drawing.nodes[str(i + 1)].fill = HIGHLIGHT
        return drawing

    def _random_heap(self, rng: np.random.Generator, count: int, kind: str) -> list[int]:
        values = sorted(int(v) for v in rng.choice(np.arange(1, 100), size=count, replace=False))
        if kind == "max":
            values.reverse()
        heap: list[int] = []
        before = heap_order(values, kind)
        for v in (values[int(i)] for i in rng.permutation(count)):
            heap.append(v)
            i = len(heap) - 1
            while i > 0 and before(heap[i], heap[(i - 1) // 2]):
                heap[i], heap[(i - 1) // 2] = heap[(i - 1) // 2], heap[i]
                i = (i - 1) // 2
        return heap

    def _heap_insert(self, rng: np.random.Generator) -> Built:
        kind = pick(rng, ("min", "max"))
        heap = self._random_heap(rng, int(rng.integers(3, 15)), kind)
        value = pick(rng, [v for v in range(1, 100) if v not in heap])
        before = heap_order(heap, kind)
        new = [*heap, value]
        i = len(new) - 1
        steps = [f"Append {value} at index {i} (parent index {(i - 1) // 2})."]
        changed = {i}
        while i > 0:
            p = (i - 1) // 2
            if before(new[i], new[p]):
                steps.append(
                    f"{value} {'<' if kind == 'min' else '>'} parent {new[p]}: swap indices {i} and {p}."
                )
                new[i], new[p] = new[p], new[i]
                changed |= {i, p}
                i = p
            else:
                steps.append(f"{value} {'>=' if kind == 'min' else '<='} parent {new[p]}: stop.")
                break
        else:
            steps.append(f"{value} reached the root.")
        thought = " ".join(steps) + f" The array is now {new}; the changed slots are highlighted."
        prompt = f"Insert {value} into this {kind}-heap and draw the heap and its array after sifting up."
        truth = {"kind": kind, "before": heap, "after": new, "value": value, "changed": sorted(changed)}
        return self._heap_drawing(heap), self._heap_drawing(new, changed), prompt, thought, truth

    def _heap_extract(self, rng: np.random.Generator) -> Built:
        kind = pick(rng, ("min", "max"))
        heap = self._random_heap(rng, int(rng.integers(4, 16)), kind)
        before = heap_order(heap, kind)
        root = heap[0]
        new = [heap[-1], *heap[1:-1]]
        steps = [f"Remove the root {root}; move the last element {heap[-1]} to index 0."]
        changed = {0}
        i = 0
        while True:
            kids = [c for c in (2 * i + 1, 2 * i + 2) if c < len(new)]
            if not kids:
                steps.append(f"{new[i]} is a leaf: stop.")
                break
            best = kids[0] if len(kids) == 1 or before(new[kids[0]], new[kids[1]]) else kids[1]
            if before(new[best], new[i]):
                steps.append(
                    f"The {'smaller' if kind == 'min' else 'larger'} child of {new[i]} is {new[best]}: swap indices {i} and {best}."
                )
                new[i], new[best] = new[best], new[i]
                changed |= {i, best}
                i = best
            else:
                steps.append(f"{new[i]} is in order with its children: stop.")
                break
        thought = " ".join(steps) + f" The extracted {kind}imum is {root}; the array is now {new}."
        prompt = f"Extract the root of this {kind}-heap and draw the heap and its array after sifting down."
        truth = {"kind": kind, "before": heap, "after": new, "extracted": root, "changed": sorted(changed)}
        return self._heap_drawing(heap), self._heap_drawing(new, changed), prompt, thought, truth

    def _traversal(self, rng: np.random.Generator) -> Built:
        if rng.random() < 0.5:
            return self._tree_traversal(rng)
        return self._graph_traversal(rng)

    def _tree_traversal(self, rng: np.random.Generator) -> Built:
        tree = self._random_bst(rng, int(rng.integers(4, 10)))
        order_name = pick(rng, ("preorder", "inorder", "postorder", "level-order"))

        def walk(slot: int) -> list[int]:
            if slot not in tree:
                return []
            left, right = walk(2 * slot), walk(2 * slot + 1)
            return {
                "preorder": [slot, *left, *right],
                "inorder": [*left, slot, *right],
                "postorder": [*left, *right, slot],
            }[order_name]

        slots = sorted(tree) if order_name == "level-order" else walk(1)
        before = tree_drawing(tree, 0.12, 0.86, 4)
        after = before.copy()
        r = self.RADIUS
        for k, slot in enumerate(slots, 1):
            node = after.nodes[str(slot)]
            dx = -1.15 * r if slot % 2 == 0 else 1.15 * r  # away from the edge to the parent
            after.badges.append((node.x + dx, node.y - 1.15 * r, str(k)))
        rule = {
            "preorder": "visit a node, then its left subtree, then its right subtree",
            "inorder": "visit the left subtree, then the node, then the right subtree (ascending keys in a BST)",
            "postorder": "visit the left subtree, then the right subtree, then the node",
            "level-order": "visit level by level from the top, left to right",
        }[order_name]
        keys = [tree[s] for s in slots]
        thought = f"{order_name[:1].upper() + order_name[1:]} traversal: {rule}. The order is {', '.join(map(str, keys))}. I write each node's position in this order in a badge beside it."
        prompt = f"Number the nodes of this binary tree in {order_name} traversal order."
        truth = {"tree": _slots(tree), "order": order_name, "keys": keys}
        return before, after, prompt, thought, truth

    def _graph(self, rng: np.random.Generator, weighted: bool) -> Graph:
        n = int(rng.integers(self.cfg.min_nodes, self.cfg.max_nodes + 1))
        return random_graph(rng, n, self.RADIUS, weighted)

    def _graph_traversal(self, rng: np.random.Generator) -> Built:
        graph = self._graph(rng, weighted=False)
        kind = pick(rng, ("BFS", "DFS"))
        start = pick(rng, list(graph.pos))
        order: list[str] = []
        trace: list[str] = []
        if kind == "BFS":
            queue, seen = [start], {start}
            while queue:
                u = queue.pop(0)
                order.append(u)
                new = [v for v in graph.neighbours(u) if v not in seen]
                seen.update(new)
                queue.extend(new)
                trace.append(f"visit {u}, enqueue {', '.join(new) if new else 'nothing'}")
        else:

            def dfs(u: str) -> None:
                order.append(u)
                trace.append(f"visit {u}")
                for v in graph.neighbours(u):
                    if v not in order:
                        dfs(v)

            dfs(start)
        before = graph_drawing(graph, weighted=False)
        after = before.copy()
        for k, u in enumerate(order, 1):
            x, y = self._badge_spot(graph, u)
            after.badges.append((x, y, str(k)))
        thought = (
            f"{kind} from {start}, taking neighbours in alphabetical order: "
            + "; ".join(trace)
            + f". The visiting order is {', '.join(order)}; I write each position in a badge next to its node."
        )
        prompt = f"Number the nodes in {kind} order starting from {start} (neighbours in alphabetical order)."
        truth = {"edges": _edges(graph), "start": start, "kind": kind, "order": order}
        return before, after, prompt, thought, truth

    def _badge_spot(self, graph: Graph, u: str) -> tuple[float, float]:
        """The diagonal beside node u farthest (in angle) from its edges, so the badge covers no line."""
        x, y = graph.pos[u]
        angles = [math.atan2(graph.pos[v][1] - y, graph.pos[v][0] - x) for v in graph.neighbours(u)]
        best, best_gap = 0.0, -1.0
        for cand in (-3 * math.pi / 4, -math.pi / 4, math.pi / 4, 3 * math.pi / 4):
            gap = min((abs(math.remainder(cand - a, 2 * math.pi)) for a in angles), default=math.pi)
            if gap > best_gap + 1e-9:
                best, best_gap = cand, gap
        d = 1.6 * self.RADIUS
        return x + d * math.cos(best), y + d * math.sin(best)

    def _shortest_path(self, rng: np.random.Generator) -> Built:
        graph = self._graph(rng, weighted=True)
        names = list(graph.pos)
        source, target = pick_distinct(rng, names, 2)
        dist, preds, steps = dijkstra(graph, source)
        path = [target]
        while path[-1] != source:
            options = preds[path[-1]]
            if len(options) != 1:
                raise RejectSample("shortest_path_not_unique")
            path.append(options[0])
        path.reverse()
        if len(path) < 3:
            raise RejectSample("shortest_path_trivial")
        before = graph_drawing(graph, weighted=True)
        after = before.copy()
        on_path = set(itertools.pairwise(path)) | set(itertools.pairwise(path[::-1]))
        for edge in after.edges:
            if (edge.u, edge.v) in on_path:
                edge.color, edge.width = SOURCE, 3.2
        for u in path:
            after.nodes[u].fill = HIGHLIGHT
        lines = []
        for u, d, updates in steps:
            upd = ", ".join(f"{v}={nd}" for v, nd in updates)
            lines.append(f"settle {u} at {d}" + (f" (update {upd})" if upd else ""))
            if u == target:
                break
        thought = (
            f"Dijkstra from {source}: " + "; ".join(lines) + ". "
            f"Following predecessors back from {target} gives {' -> '.join(path)} with total weight {dist[target]}, "
            "and no other path has that weight. I highlight its nodes and edges."
        )
        prompt = f"Highlight the shortest path from {source} to {target} in this weighted graph."
        truth = {
            "edges": _edges(graph),
            "source": source,
            "target": target,
            "path": path,
            "distance": dist[target],
            "distances": dict(sorted(dist.items())),
        }
        return before, after, prompt, thought, truth

    def _khop(self, rng: np.random.Generator) -> Built:
        graph = self._graph(rng, weighted=False)
        source = pick(rng, list(graph.pos))
        k = int(rng.integers(1, 3))
        layers = bfs_layers(graph, source)
        within = [u for layer in layers[: k + 1] for u in layer]
        if len(within) == len(graph.pos):
            raise RejectSample("khop_covers_all")
        before = graph_drawing(graph, weighted=False)
        after = before.copy()
        for u in within:
            after.nodes[u].fill = HIGHLIGHT
        after.nodes[source].fill = SOURCE
        parts = [f"hop {d}: {', '.join(layer)}" for d, layer in enumerate(layers[1 : k + 1], 1)]
        thought = (
            f"Breadth-first search from {source}. " + "; ".join(parts) + ". "
            f"So the {k}-hop neighbourhood is {', '.join(sorted(within))}; "
            f"{', '.join(sorted(set(graph.pos) - set(within)))} {'is' if len(graph.pos) - len(within) == 1 else 'are'} farther away."
        )
        prompt = f"Highlight every node within {k} hop{'s' if k > 1 else ''} of node {source}."
        truth = {"edges": _edges(graph), "source": source, "k": k, "layers": layers, "within": sorted(within)}
        return before, after, prompt, thought, truth

    def _fsm_trace(self, rng: np.random.Generator) -> Built:
        n = int(rng.integers(3, 5))
        states = [f"q{i}" for i in range(n)]
        table = {(s, a): states[int(rng.integers(n))] for s in states for a in "ab"}
        accepting = sorted(s for s in states if rng.random() < 0.4) or [states[-1]]
        word = "".join(pick(rng, "ab") for _ in range(int(rng.integers(3, 7))))
        before = Drawing(start="q0")
        for i, s in enumerate(states):
            ang = math.pi + 2 * math.pi * i / n  # q0 on the left, then clockwise
            before.nodes[s] = DNode(
                0.5 + 0.3 * math.cos(ang), 0.5 - 0.3 * math.sin(ang), s, double=s in accepting
            )
        labels: dict[tuple[str, str], list[str]] = {}
        for (s, a), t in sorted(table.items()):
            labels.setdefault((s, t), []).append(a)
        for (s, t), symbols in sorted(labels.items()):
            rad = 0.25 if (t, s) in labels and s != t else 0.0
            before.edges.append(DEdge(s, t, directed=True, label=",".join(symbols), rad=rad))
        state, trace, used = "q0", [], set()
        for ch in word:
            nxt = table[(state, ch)]
            trace.append(f"{state} --{ch}--> {nxt}")
            used.add((state, nxt))
            state = nxt
        accepted = state in accepting
        after = before.copy()
        for edge in after.edges:
            if (edge.u, edge.v) in used:
                edge.color, edge.width = SOURCE, 2.8
        after.nodes[state].fill = NEW if accepted else SOURCE
        thought = (
            f"Start in q0 and read '{word}' one symbol at a time: " + ", ".join(trace) + ". "
            f"The run ends in {state}, which is {'an accepting' if accepted else 'not an accepting'} state, "
            f"so the automaton {'accepts' if accepted else 'rejects'} the string. I colour the transitions used and "
            f"fill {state} {'green (accept)' if accepted else 'red (reject)'}."
        )
        prompt = (
            f"Trace the input '{word}' through this automaton from the start state: highlight the transitions "
            "taken and mark the final state green if it accepts or red if it rejects."
        )
        truth = {
            "states": states,
            "transitions": {f"{s},{a}": t for (s, a), t in sorted(table.items())},
            "accepting": accepting,
            "word": word,
            "trace": trace,
            "final": state,
            "accepted": accepted,
        }
        return before, after, prompt, thought, truth


def _slots(tree: dict[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(tree.items())}


def _edges(graph: Graph) -> list[list[Any]]:
    return [[u, v, w] for (u, v), w in sorted(graph.edges.items())]
