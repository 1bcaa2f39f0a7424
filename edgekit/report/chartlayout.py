"""Where chart text goes, so that none of it runs together.

matplotlib places tick labels and annotations without looking at their neighbours: six
labels such as 0.0125 on a narrow axis touch, and two versions measured at nearly the same
point get labels on top of each other. Three steps, each on a drawn figure, in display pixels:

    fit_axis_labels  an axis label's second line on (the budget's headroom) wrapped until the
                  label is no longer than its axis, so that neighbouring panels' labels part
    thin_ticks    fewer ticks on every numeric axis whose labels touch, until none do
                  (settle_layout does both, one draw a round, and freezes the layout)
    place_labels  each point label at the first spot around its point, nearest first, that
                  covers no other label, no marker and does not cross the axes edge (a small
                  adjustText); a label that fits nowhere is left out and reported

The figure's layout is frozen between them, so the pixels measured are the pixels drawn;
the SVG keeps that geometry (offsets are in points, positions in figure fractions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["Label", "on_top", "fit_axis_labels", "thin_ticks", "settle_layout", "freeze_layout", "place_labels",
           "marker_box", "marker_boxes", "drawn_tick_labels", "tick_label_boxes", "label_boxes", "overlap"]

GAP = 4            # pixels kept free between two tick labels
STEPS = [1, 2, 5, 10]  # tick steps: no 2.5, whose labels (0.0125) are the longest
# Around a point: right first (where a reader looks), then above, below, left, the diagonals.
DIRECTIONS = ((1, 0), (0, 1), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))
RINGS = (0, 6, 14, 26, 42)   # points beyond the marker's edge; from the second a leader line
PREWRAP = 0.9  # of its axis: what an axis label is wrapped to before the first layout (settle_layout)


@dataclass
class Label:
    """A label for the point `xy` (data coordinates) whose marker is `marker_size` (scatter s)."""

    xy: tuple[float, float]
    text: str
    marker_size: float = 36.0
    style: dict = field(default_factory=dict)   # Text properties: fontsize, weight, color


def overlap(a, b, gap: float = 0.0) -> bool:
    """Whether two display boxes come closer than `gap` pixels."""
    return a.x0 < b.x1 + gap and b.x0 < a.x1 + gap and a.y0 < b.y1 + gap and b.y0 < a.y1 + gap


def _renderer(fig):
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def drawn_tick_labels(axis) -> list:
    """The tick labels `axis` draws, in order: a tick outside the view keeps a label it does not draw."""
    lo, hi = sorted(axis.get_view_interval())
    slack = (hi - lo) * 1e-9
    return [label for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if lo - slack <= loc <= hi + slack and label.get_visible() and label.get_text()]


def tick_label_boxes(axis, renderer) -> list:
    """The display boxes of the tick labels `axis` draws, in order."""
    return [label.get_window_extent(renderer) for label in drawn_tick_labels(axis)]


def _numeric_axes(fig) -> list:
    from matplotlib.ticker import FixedLocator, NullLocator

    return [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            if axis.get_visible() and not isinstance(axis.get_major_locator(), (FixedLocator, NullLocator))]


def _crowded(axis, renderer) -> Optional[int]:
    """How many intervals would fit along `axis` when its labels touch, else None."""
    boxes = tick_label_boxes(axis, renderer)
    if not any(overlap(a, b, GAP) for a, b in zip(boxes, boxes[1:])):
        return None
    along = (lambda b: b.width) if axis.axis_name == "x" else (lambda b: b.height)
    ax_box = axis.axes.get_window_extent(renderer)
    length = ax_box.width if axis.axis_name == "x" else ax_box.height
    fits = int(length // (max(along(b) for b in boxes) + 2 * GAP))
    return max(1, min(fits, len(boxes) - 1) - 1)


def _wrap_labels(fig, renderer, room: float = 1.0) -> bool:
    """Wrap what follows the first line of each axis label until the label fits `room` times
    its axis, in the layout last drawn; whether any label changed."""
    import textwrap

    changed = False
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for label, length, along in ((ax.xaxis.label, frame.width * room, "width"),
                                     (ax.yaxis.label, frame.height * room, "height")):
            head, _, rest = label.get_text().partition("\n")
            rest = " ".join(rest.split())
            width = len(rest)
            while rest and width > 12 and getattr(label.get_window_extent(renderer), along) > length:
                width -= 4
                label.set_text(head + "\n" + textwrap.fill(rest, width))
                changed = True
    return changed


def _thin_once(fig, renderer) -> bool:
    """Fewer ticks on each numeric axis (colour bars too) whose labels touch in the layout
    last drawn; whether any axis changed."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    crowded = [(axis, n) for axis in _numeric_axes(fig) if (n := _crowded(axis, renderer)) is not None]
    for axis, nbins in crowded:
        if axis.get_scale() == "log":  # 1-2-5 in each decade, then decades, then fewer decades
            thinned = getattr(axis.get_major_locator(), "thinned", False)
            locator = LogLocator(subs=(1.0,), numticks=nbins + 1 if thinned else "auto")
            locator.thinned = True
            axis.set_major_locator(locator)
        else:
            axis.set_major_locator(MaxNLocator(nbins=nbins, steps=STEPS, min_n_ticks=2))
    return bool(crowded)


def _settle(fig, steps, rounds: int) -> bool:
    """Draw, apply each step to that layout, again until no step changes anything (True) or
    `rounds` are spent (False: the last changes are not drawn yet)."""
    for _ in range(rounds):
        renderer = _lay_out(fig)
        if not any([step(fig, renderer) for step in steps]):  # a list: every step runs each round
            return True
    return False


def _lay_out(fig):
    """Lay the figure out as a draw would, without drawing it: its layout engine measures
    every text and places the axes, which is all the steps read (tick labels are brought up
    to date when they are asked for). A figure without an engine is drawn without painting.
    Returns the renderer that measured."""
    renderer = _renderer(fig)
    engine = fig.get_layout_engine()
    if engine is None:
        fig.draw_without_rendering()
    else:
        engine.execute(fig)
    return renderer


def fit_axis_labels(fig) -> None:
    """Wrap what follows the first line of each axis label until the label fits its axis."""
    _settle(fig, [_wrap_labels], 1)


def thin_ticks(fig, rounds: int = 6) -> None:
    """Fewer ticks on each numeric axis (colour bars too) until no two labels touch."""
    _settle(fig, [_thin_once], rounds)


def settle_layout(fig, rounds: int = 6) -> None:
    """Axis labels wrapped to their axes and ticks thinned until none touch, both on one
    draw a round (each draw lays the whole figure out: the most of a chart's time), then
    the layout frozen where the last draw put it. The spines are left out of the layout:
    their extent (the tick marks) lies within the tick labels', and measuring it brought
    every tick up to date once more a draw. The labels are wrapped once before the first draw,
    to PREWRAP of their axes as they stand before the layout: a label wrapped only after it
    took a draw a second one (a fifth of a chart's CPU), and the axes the layout leaves
    are seldom much narrower than those."""
    for ax in fig.axes:
        for spine in ax.spines.values():
            spine.set_in_layout(False)
    _wrap_labels(fig, _renderer(fig), PREWRAP)
    freeze_layout(fig, drawn=_settle(fig, [_wrap_labels, _thin_once], rounds))


def freeze_layout(fig, drawn: bool = False) -> None:
    """Keep the axes where the last draw put them (drawing it first unless `drawn` says the
    last draw shows it as it is): labels are placed in those pixels. No layout engine is
    left at all, so that saving the figure does not lay it out (draw it) once more."""
    import matplotlib

    if not drawn:
        _lay_out(fig)
    with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)


def marker_box(ax, xy: tuple[float, float], size: float):
    """The display box of a scatter marker of size `size` (points squared) at data point `xy`."""
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform(xy)
    half = math.sqrt(size) / 2 * ax.figure.dpi / 72
    return Bbox([[x - half, y - half], [x + half, y + half]])


def marker_boxes(ax, obstacles: list[tuple[tuple[float, float], float]]):
    """marker_box for many (xy, size) at once: an array of (x0, y0, x1, y1) rows, which
    place_labels takes as its obstacles."""
    import numpy as np

    if not obstacles:
        return np.zeros((0, 4))
    centres = ax.transData.transform(np.array([xy for xy, _ in obstacles], dtype=float))
    half = np.sqrt(np.array([size for _, size in obstacles], dtype=float)) / 2 * ax.figure.dpi / 72
    return np.column_stack([centres[:, 0] - half, centres[:, 1] - half, centres[:, 0] + half, centres[:, 1] + half])


def on_top(ax, points: list[tuple[float, float]], pixel: float = 1.0) -> list[int]:
    """The indices of `points` (data coordinates) a reader can see: of those that fall on the
    same `pixel`-wide cell of the axes, the last (drawn on top of the others), in their order.
    A fleet's thousands of devices measured alike are a handful of dots: drawing each of them
    (and measuring every label spot against it) showed nothing more. The axes' view and scales must be set first."""
    import numpy as np

    if not points:
        return []
    cells = np.floor(ax.transData.transform(np.asarray(points, dtype=float)) / pixel)
    last = {}
    for i, cell in enumerate(map(tuple, cells.tolist())):
        last[cell] = i
    return sorted(last.values())


def _offsets(label: Label):
    """(dx, dy, ha, va, ring) in points, nearest first."""
    edge = math.sqrt(label.marker_size) / 2 + 2
    for ring, r in enumerate(RINGS):
        for dx, dy in DIRECTIONS:
            scale = (edge + r) / (math.sqrt(2) if dx and dy else 1)
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            yield dx * scale, dy * scale, ha, va, ring


def place_labels(ax, labels: list[Label], obstacles: list = ()) -> list[Label]:
    """Annotate `ax` with each label where it covers nothing already there (other labels,
    `obstacles`: display boxes of markers, or marker_boxes' array), in the order given;
    returns those left out."""
    renderer = _renderer(ax.figure)
    frame = ax.get_window_extent(renderer)
    taken, left_out = _Boxes(obstacles), []
    for label in labels:
        spot = _free_spot(ax, label, frame, taken, renderer)
        if spot is None:
            left_out.append(label)
            continue
        (dx, dy, ha, va, ring), box = spot
        taken.add(box)
        leader = {"arrowprops": {"arrowstyle": "-", "color": "#777777", "lw": 0.6, "shrinkA": 1, "shrinkB": 2}} \
            if ring >= 1 else {}
        ax.annotate(label.text, label.xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                    **label.style, **leader)
    return left_out


class _Boxes:
    """Display boxes as one array: whether a box comes near any of them is one vectorised test
    (a chart of 10,000 device dots tried each label spot against every dot in Python)."""

    def __init__(self, boxes):
        import numpy as np

        self._np = np
        given = boxes if isinstance(boxes, np.ndarray) else [[b.x0, b.y0, b.x1, b.y1] for b in boxes]
        self._xy = np.array(given, dtype=float).reshape(-1, 4)

    def add(self, box) -> None:
        self._xy = self._np.vstack([self._xy, [[box.x0, box.y0, box.x1, box.y1]]])

    def hit(self, box, gap: float = 0.0) -> bool:
        """overlap(box, any of them, gap)."""
        b = self._xy
        return bool(((box.x0 < b[:, 2] + gap) & (b[:, 0] < box.x1 + gap) &
                     (box.y0 < b[:, 3] + gap) & (b[:, 1] < box.y1 + gap)).any())


def _free_spot(ax, label: Label, frame, taken: list, renderer):
    """((dx, dy, ha, va, ring), box) of the nearest spot that is inside `frame` and clear of `taken`.
    The label is measured once, at its point; each spot's box is that box moved and aligned
    (a box per spot from matplotlib measured the same text forty times a label)."""
    from matplotlib.transforms import Bbox

    probe = ax.annotate(label.text, label.xy, xytext=(0, 0), textcoords="offset points", ha="left", va="bottom",
                        **label.style)
    try:
        at = probe.get_window_extent(renderer)  # its lower left corner on the point
    finally:
        probe.remove()
    points = ax.figure.dpi / 72
    for dx, dy, ha, va, ring in _offsets(label):
        x0 = at.x0 + dx * points - {"left": 0, "center": at.width / 2, "right": at.width}[ha]
        y0 = at.y0 + dy * points - {"bottom": 0, "center": at.height / 2, "top": at.height}[va]
        box = Bbox.from_bounds(x0, y0, at.width, at.height)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if inside and not taken.hit(box, 1):
            return (dx, dy, ha, va, ring), box
    return None


def label_boxes(fig) -> list:
    """The display boxes of every annotation's text in `fig` (for tests and checks)."""
    from matplotlib.text import Annotation, Text

    renderer = _renderer(fig)
    notes = [t for ax in fig.axes for t in ax.texts if isinstance(t, Annotation) and t.get_visible()]
    for note in notes:
        note.update_positions(renderer)  # where the text goes; Text's own extent leaves out the leader line
    return [Text.get_window_extent(note, renderer) for note in notes]
