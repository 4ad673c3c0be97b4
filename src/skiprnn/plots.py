"""Figures of the paper, rendered to PNG with matplotlib's Agg canvas (no display, no pyplot state).

Every function takes plain tensors / numpy arrays / lists (nothing from the model code), writes a PNG
at ``path`` (parent folders are created) and returns ``path`` as a ``Path``. The image is
``figsize × dpi`` pixels exactly (no tight bounding box).

* :func:`plot_adding_samples`   — paper Fig. 5: adding-task sequences, used samples red, skipped blue.
* :func:`plot_frequency_samples` — paper Fig. 6: sine waves with used / skipped samples.
* :func:`plot_mnist_masks`      — paper Fig. 3: digits with used pixels red, skipped blue (28×28).
* :func:`plot_learning_curves`  — curves from Lightning's ``CSVLogger`` ``metrics.csv`` or dicts;
  several runs give mean and min–max band (paper Fig. 2).

:func:`mnist_masks_figure` and :func:`learning_curves_figure` build the matplotlib ``Figure`` of
the two ``plot_*`` functions without saving it (to edit or inspect it).
* :func:`plot_tradeoff`         — metric vs state updates across λ values / p_skip / thresholds.

Conventions: batch first. ``updates`` holds the binary gate u_t (1 = state updated = sample used);
values > 0.5 count as used, so ũ probabilities threshold like the paper's rounding.
"""

from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["plot_adding_samples", "plot_frequency_samples", "plot_mnist_masks", "mnist_masks_figure",
           "mask_colour", "plot_learning_curves", "learning_curves_figure", "plot_gate_dynamics",
           "plot_tradeoff", "read_metrics_csv"]

USED_COLOR = "#d62728"     # red: sample used (state updated)
SKIPPED_COLOR = "#1f77b4"  # blue: sample skipped (state copied)
PathLike = Union[str, "os.PathLike[str]"]


# ----- helpers ------------------------------------------------------------------------------------
def _np(a, dtype=np.float64) -> np.ndarray:
    """Tensor / array / list -> numpy array of ``dtype`` (detached, on CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().float().numpy()
    return np.asarray(a, dtype=dtype)


def _new_figure(figsize, dpi) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _as_sequences(x, updates, channels: Optional[int], name: str, max_samples: Optional[int]):
    """Check and convert ``x`` (N, T[, C]) and ``updates`` (N, T); single sequences get N = 1."""
    x = _np(x)
    u = _np(updates)
    if channels is not None and x.ndim == 2 and x.shape[-1] == channels and u.ndim == 1:
        x = x[None]
    if u.ndim == 1:
        u = u[None]
    if channels == 1 and x.ndim == 2:
        x = x[..., None]
    if channels is not None and (x.ndim != 3 or x.shape[-1] != channels):
        raise ValueError(f"{name}: x must have shape (N, T, {channels}), got {x.shape}")
    if u.shape != x.shape[:2]:
        raise ValueError(f"{name}: updates must have shape (N, T) = {x.shape[:2]}, got {u.shape}")
    if max_samples is not None:
        x, u = x[:max_samples], u[:max_samples]
    return x, u > 0.5


def _rows_figure(n: int, figsize, dpi) -> tuple:
    """``(fig, figsize, axes)`` of ``n`` sample rows sharing the time axis (paper Figs. 5, 6)."""
    figsize = figsize or (9.0, 1.0 + 0.9 * n)
    fig = _new_figure(figsize, dpi)
    return fig, figsize, fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]


def _label_row(ax, ylim, yticks, name: str, used) -> None:
    ax.set_ylim(*ylim)
    ax.set_yticks(yticks)
    ax.tick_params(labelsize=7)
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    ax.text(1.005, 0.5, f"{int(used.sum())}/{len(used)}\nused", transform=ax.transAxes,
            fontsize=7, va="center")


def _finish_rows(fig, figsize, extra_handles, title, left: float, ylabel: str, path, dpi) -> Path:
    handles = [Line2D([], [], ls="", marker="o", color=USED_COLOR, label="used (update)"),
               Line2D([], [], ls="", marker="o", color=SKIPPED_COLOR, label="skipped (copy)"),
               *extra_handles]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    fig.subplots_adjust(left=left, right=0.92, top=1 - 0.5 / figsize[1], bottom=0.5 / figsize[1],
                        hspace=0.15)
    fig.text(0.01, 0.5, ylabel, rotation=90, va="center", fontsize=9)
    return _save(fig, path, dpi)


# ----- sample figures -----------------------------------------------------------------------------
def plot_adding_samples(x, updates, path: PathLike, *, max_samples: Optional[int] = 10,
                        title: Optional[str] = "Adding task: used (red) and skipped (blue) samples",
                        figsize: Optional[tuple] = None, dpi: int = 100) -> Path:
    """Paper Fig. 5: one row per sequence, value vs time step.

    ``x``: (N, T, 2) with ``x[..., 0]`` the values and ``x[..., 1]`` the 0/1 markers (a single
    (T, 2) sequence is accepted); ``updates``: (N, T) binary u_t. Used samples are red dots, skipped
    ones blue; the two marked samples get a black ring and a shaded column.
    """
    x, used = _as_sequences(x, updates, 2, "plot_adding_samples", max_samples)
    T = used.shape[1]
    fig, figsize, axes = _rows_figure(used.shape[0], figsize, dpi)
    t = np.arange(T)
    for i, ax in enumerate(axes):
        values, markers = x[i, :, 0], x[i, :, 1] > 0.5
        ax.axhline(0.0, color="0.85", lw=0.6, zorder=0)
        for tm in t[markers]:
            ax.axvspan(tm - 0.5, tm + 0.5, color="0.88", zorder=0)
        ax.scatter(t[~used[i]], values[~used[i]], s=10, color=SKIPPED_COLOR, zorder=2)
        ax.scatter(t[used[i]], values[used[i]], s=10, color=USED_COLOR, zorder=3)
        ax.scatter(t[markers], values[markers], s=70, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=4)
        _label_row(ax, (-0.6, 0.6), [-0.5, 0.0, 0.5], f"#{i}", used[i])
    axes[-1].set_xlabel("time step")
    axes[-1].set_xlim(-1, T)
    ring = Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="black",
                  label="marker")
    return _finish_rows(fig, figsize, [ring], title, 0.07, "value", path, dpi)


def plot_frequency_samples(x, updates, path: PathLike, *, sampling_period_ms: Optional[float] = None,
                           labels=None, max_samples: Optional[int] = 10,
                           title: Optional[str] = "Frequency discrimination: used (red) and "
                                                  "skipped (blue) samples",
                           figsize: Optional[tuple] = None, dpi: int = 100) -> Path:
    """Paper Fig. 6: one row per sine wave, amplitude vs sample index (or time in ms when
    ``sampling_period_ms`` is given).

    ``x``: (N, T, 1) or (N, T) amplitudes; ``updates``: (N, T) binary u_t; ``labels``: optional
    (N,) class indices shown per row.
    """
    x, used = _as_sequences(x, updates, 1, "plot_frequency_samples", max_samples)
    lab = None if labels is None else _np(labels, np.int64)
    fig, figsize, axes = _rows_figure(used.shape[0], figsize, dpi)
    t = np.arange(used.shape[1]) * (sampling_period_ms or 1.0)
    for i, ax in enumerate(axes):
        v = x[i, :, 0]
        ax.plot(t, v, color="0.75", lw=0.8, zorder=1)
        ax.scatter(t[~used[i]], v[~used[i]], s=6, color=SKIPPED_COLOR, zorder=2)
        ax.scatter(t[used[i]], v[used[i]], s=12, color=USED_COLOR, zorder=3)
        _label_row(ax, (-1.2, 1.2), [-1, 0, 1],
                   f"#{i}" if lab is None else f"#{i}\nclass {lab[i]}", used[i])
    axes[-1].set_xlabel("time (ms)" if sampling_period_ms else "sample index")
    return _finish_rows(fig, figsize, [], title, 0.08, "amplitude", path, dpi)


def mask_colour(used, intensity) -> np.ndarray:
    """RGB of MNIST mask pixels: ``USED_COLOR`` / ``SKIPPED_COLOR`` mixed with white, the more
    white the darker the pixel (intensity 1: the pure colour; 0, the background: a pale tint of
    it, so used and skipped background pixels differ from each other and from the digit)."""
    from matplotlib.colors import to_rgb
    used = np.asarray(used, bool)[..., None]
    a = 0.25 + 0.75 * np.clip(np.asarray(intensity, np.float64), 0.0, 1.0)[..., None]
    base = np.where(used, np.array(to_rgb(USED_COLOR)), np.array(to_rgb(SKIPPED_COLOR)))
    return 1.0 - a * (1.0 - base)


def plot_mnist_masks(images, updates, path: PathLike, *, dpi: int = 100, **kw) -> Path:
    """Paper Fig. 3: each digit as a 28×28 mask, used pixels red and skipped pixels blue
    (:func:`mask_colour`: pale on the background, full colour on the digit); the legend shows the
    four colours drawn. Arguments: :func:`mnist_masks_figure`."""
    return _save(mnist_masks_figure(images, updates, dpi=dpi, **kw), path, dpi)


def mnist_masks_figure(images, updates, *, labels=None, max_samples: Optional[int] = 8,
                       ncols: Optional[int] = None,
                       title: Optional[str] = "Sequential MNIST: used (red) and skipped (blue) pixels",
                       figsize: Optional[tuple] = None, dpi: int = 100) -> Figure:
    """The figure of :func:`plot_mnist_masks`.

    ``images``: (N, 784), (N, 784, 1) or (N, 28, 28): 0-255 grey levels, floats in [0, 1], or
    any other real values (standardized pixels: each image scaled to [0, 1]); ``updates``:
    (N, 784) binary u_t in raster order; ``labels``: optional (N,) digits for the panel titles.
    """
    img = _np(images)
    if img.ndim == 3 and img.shape[1:] == (784, 1):
        img = img[..., 0]
    if img.ndim == 2 and img.shape == (28, 28):
        img = img[None]
    if img.ndim == 2 and img.shape[1] == 784:
        img = img.reshape(-1, 28, 28)
    if img.ndim != 3 or img.shape[1:] != (28, 28):
        raise ValueError(f"plot_mnist_masks: images must be (N, 784) or (N, 28, 28), got {img.shape}")
    u = _np(updates)
    if u.ndim == 1:
        u = u[None]
    if u.shape != (img.shape[0], 784):
        raise ValueError(f"plot_mnist_masks: updates must have shape ({img.shape[0]}, 784), got {u.shape}")
    img = img.astype(np.float64)
    if img.min() >= 0.0 and img.max() > 1.0 and img.max() <= 255.0 and np.all(img == np.round(img)):
        img = img / 255.0                          # 0-255 grey levels
    elif img.min() < 0.0 or img.max() > 1.0:      # e.g. standardized pixels: each image to [0, 1]
        lo = img.min(axis=(1, 2), keepdims=True)
        img = (img - lo) / np.maximum(img.max(axis=(1, 2), keepdims=True) - lo, 1e-12)
    if max_samples is not None:
        img, u = img[:max_samples], u[:max_samples]
    used = (u > 0.5).reshape(-1, 28, 28)
    n = img.shape[0]
    lab = None if labels is None else _np(labels, np.int64)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    figsize = figsize or (2.2 * ncols, 2.4 * nrows + 0.5)
    fig = _new_figure(figsize, dpi)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(mask_colour(used[i], img[i]), interpolation="nearest")
        head = "" if lab is None else f"digit {lab[i]}: "
        ax.set_title(f"{head}{int(used[i].sum())}/784 used", fontsize=8)
    handles = [Line2D([], [], ls="", marker="s", ms=8, mec="0.6", mew=0.5, color=mask_colour(u_, v),
                      label=f"{'used' if u_ else 'skipped'}, {'digit' if v else 'background'}")
               for u_ in (True, False) for v in (1.0, 0.0)]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False,
               handletextpad=0.2, columnspacing=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.55 / figsize[1], bottom=0.35 / figsize[1],
                        wspace=0.05, hspace=0.25)
    return fig


# ----- learning curves ----------------------------------------------------------------------------
def read_metrics_csv(path: PathLike, x: str = "step") -> "OrderedDict[str, tuple]":
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` into ``{metric: (xs, ys)}``.

    Each metric keeps only the rows where it was logged (empty cells / NaN are dropped). ``x`` is
    the column used as abscissa ('step' or 'epoch'); rows without it are skipped.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return OrderedDict()
    if x not in rows[0]:
        raise ValueError(f"{path}: no column {x!r} (columns: {', '.join(rows[0])})")
    return _columns_to_series({k: [r.get(k, "") for r in rows] for k in rows[0]}, x)


def _to_float(v) -> float:
    try:
        return float(v)   # strips whitespace; None and empty cells raise
    except (TypeError, ValueError):
        return math.nan


def _columns_to_series(cols: Mapping, x: str) -> "OrderedDict[str, tuple]":
    xs_all = np.array([_to_float(v) for v in cols[x]])
    out = OrderedDict()
    for key, values in cols.items():
        if key in (x, "step", "epoch"):
            continue
        ys = np.array([_to_float(v) for v in values])
        keep = np.isfinite(ys) & np.isfinite(xs_all)
        if keep.any():
            out[key] = (xs_all[keep], ys[keep])
    return out


def _normalise_run(run, x: str) -> "OrderedDict[str, tuple]":
    """One run (CSV path or dict) -> {metric: (xs, ys)} with NaNs dropped."""
    if isinstance(run, (str, os.PathLike)):
        return read_metrics_csv(run, x)
    if not isinstance(run, Mapping):
        raise TypeError(f"a run must be a metrics.csv path or a dict, got {type(run).__name__}")
    if x in run and all(np.ndim(v) == 1 for v in run.values()):
        lens = {len(v) for v in run.values()}
        if len(lens) == 1:  # columnar table like the CSV
            return _columns_to_series(run, x)
    out = OrderedDict()
    for key, s in run.items():
        if isinstance(s, Mapping):
            xs, ys = _np(s["x"]), _np(s["y"])
        elif isinstance(s, tuple) and len(s) == 2:
            xs, ys = _np(s[0]), _np(s[1])
        else:
            ys = _np(s)
            xs = np.arange(len(ys), dtype=np.float64)
        if xs.shape != ys.shape:
            raise ValueError(f"series {key!r}: x and y lengths differ ({xs.shape} vs {ys.shape})")
        keep = np.isfinite(xs) & np.isfinite(ys)
        if keep.any():
            out[key] = (xs[keep], ys[keep])
    return out


def plot_learning_curves(source, path: PathLike, *, dpi: int = 100, **kw) -> Path:
    """Learning curves, one panel per metric (train loss, val metric, val update fraction, ...);
    arguments: :func:`learning_curves_figure`."""
    return _save(learning_curves_figure(source, dpi=dpi, **kw), path, dpi)


def _is_error(key: str) -> bool:
    """A loss or error metric (drawn on a log axis when positive): the values that fall by decades."""
    k = key.lower()
    return "loss" in k or "mse" in k or "error" in k


def learning_curves_figure(source, *, x: str = "step", keys: Optional[Sequence[str]] = None,
                           labels: Optional[Sequence[str]] = None, band: bool = True,
                           logy: Union[str, bool] = "auto", title: Optional[str] = None,
                           ylabels: Optional[Mapping[str, str]] = None,
                           hlines: Optional[Mapping[str, tuple]] = None,
                           ncols: int = 2, figsize: Optional[tuple] = None, dpi: int = 100) -> Figure:
    """The figure of :func:`plot_learning_curves`: one panel per metric.

    ``source``: one run or a list of runs. A run is the path of a Lightning ``CSVLogger``
    ``metrics.csv`` (columns ``step``, ``epoch`` and one per logged metric, with empty cells where a
    metric was not logged), a columnar dict like that CSV (``{'step': [...], 'val_metric': [...]}``
    with NaN gaps), or a dict of series ``{name: ys | (xs, ys) | {'x': xs, 'y': ys}}``.

    ``x``: abscissa column for tables ('step' or 'epoch'). ``keys``: metrics to show (default all,
    in order of appearance). Several runs: with ``band`` and identical abscissae for a metric, the
    mean is drawn with a min–max band (paper Fig. 2); otherwise each run is its own line, named by
    ``labels``. ``logy='auto'`` uses a log axis for positive series of losses and errors (names
    with 'loss', 'mse' or 'error'). ``ylabels``: the y-axis label per metric (default its name).
    ``hlines``: ``{metric: (value, label)}``, a dashed horizontal line per panel (e.g. the
    "solved" threshold). A series with one point is drawn as a marker.
    """
    runs = list(source) if isinstance(source, (list, tuple)) else [source]
    if not runs:
        raise ValueError("plot_learning_curves: no runs given")
    series = [_normalise_run(r, x) for r in runs]
    if keys is None:
        keys = list(OrderedDict.fromkeys(k for s in series for k in s))
    keys = [k for k in keys if any(k in s for s in series)]
    if not keys:
        raise ValueError("plot_learning_curves: no metric with data to plot")
    labels = list(labels) if labels is not None else [f"run {i}" for i in range(len(runs))]
    ncols = max(1, min(ncols, len(keys)))
    nrows = math.ceil(len(keys) / ncols)
    figsize = figsize or (5.0 * ncols, 3.2 * nrows + (0.4 if title else 0.0))
    fig = _new_figure(figsize, dpi)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, key in zip(axes, keys):
        present = [(i, s[key]) for i, s in enumerate(series) if key in s]
        same_x = len(present) > 1 and all(
            p[1][0].shape == present[0][1][0].shape and np.array_equal(p[1][0], present[0][1][0])
            for p in present)
        if band and same_x:
            xs = present[0][1][0]
            ys = np.stack([p[1][1] for p in present])
            ax.fill_between(xs, ys.min(0), ys.max(0), color="C0", alpha=0.25, lw=0,
                            label=f"min–max ({len(present)} runs)")
            ax.plot(xs, ys.mean(0), color="C0", lw=1.5, label="mean", marker="o" if len(xs) == 1 else None)
        else:
            for i, (xs, ys) in present:
                marker = "o" if len(xs) <= 30 else None
                ax.plot(xs, ys, color=colors[i], lw=1.2, marker=marker, ms=3,
                        label=labels[i] if len(runs) > 1 else None)
        all_y = np.concatenate([p[1][1] for p in present])
        if key in (hlines or {}):
            value, label = hlines[key]
            ax.axhline(value, color="0.3", ls="--", lw=1, label=label)
            all_y = np.append(all_y, value)
        if (band and same_x) or len(runs) > 1 or key in (hlines or {}):
            ax.legend(fontsize=7)
        if logy is True or (logy == "auto" and _is_error(key) and (all_y > 0).all()):
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel((ylabels or {}).get(key, key), fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_gate_dynamics(metrics: Mapping, path: PathLike, *, title: Optional[str] = None,
                       dpi: int = 100) -> Path:
    """What decides the update gate during training, from a run's ``gate/*`` step metrics.

    ``metrics``: ``{name: (steps, values)}`` (e.g. ``read_metrics_csv``), with the names the
    training module logs: ``gate/lambda``, ``gate/bias``, ``gate/weight_norm``,
    ``gate/grad_bias_{task,budget}``, ``gate/delta_q{10,50,90}``, ``gate/updates_pos<k>``,
    ``gate/grad_cell_{task,budget}``, ``gate/cell_budget_dominated`` and, if present,
    ``train/update_fraction_step``. Panels: λ and the used fraction; b_p and |W_p|;
    the gradient on b_p split into its task and budget parts (positive: pushes Δũ down); the
    Δũ quantiles against 0.5 (below it the step after an update is skipped); and a map of the
    fraction of updates per position bucket (rows: start → end of the sequence) over training;
    the gradient on the cell's weights by part, with the share of weights whose budget part is
    larger (Adam moves those towards fewer updates at about the learning rate).
    """
    def get(k):
        v = metrics.get(k)
        return None if v is None else (_np(v[0]), _np(v[1]))

    buckets = sorted((int(k[len("gate/updates_pos"):]), k) for k in metrics
                     if k.startswith("gate/updates_pos"))
    if get("gate/bias") is None and not buckets:
        raise ValueError("plot_gate_dynamics: no gate/* metrics (a run without a learned gate, or "
                         "logged before the gate diagnostics existed)")
    fig = _new_figure((11.0, 7.4 + (0.4 if title else 0.0)), dpi)
    axes = fig.subplots(3, 2).ravel()

    _budget_panel(axes[0], get)
    _gate_parameters_panel(axes[1], get)
    _bias_gradient_panel(axes[2], get)
    _delta_panel(axes[3], get)
    _positions_panel(fig, axes[4], get, buckets)
    _cell_gradient_panel(axes[5], get)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _budget_panel(ax, get) -> None:
    """λ and the fraction of steps used."""
    lam = get("gate/lambda")
    if lam is not None:
        ax.plot(*lam, color="C3", lw=1.3, label="λ (budget weight)")
        ax.set_ylabel("λ", color="C3")
    frac = get("train/update_fraction_step")
    if frac is not None:
        ax2 = ax.twinx()
        ax2.plot(*frac, color="C0", lw=1.0, label="used fraction (train)")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("used fraction", color="C0")
    ax.set_title("budget schedule and updates", fontsize=9)


def _gate_parameters_panel(ax, get) -> None:
    """b_p and |W_p|."""
    for k, c, lab in (("gate/bias", "C2", "b_p"), ("gate/weight_norm", "C4", "|W_p|")):
        v = get(k)
        if v is not None:
            ax.plot(*v, color=c, lw=1.3, label=lab)
    ax.set_title("update-gate parameters", fontsize=9)
    ax.legend(fontsize=7)


def _bias_gradient_panel(ax, get) -> None:
    """The gradient on b_p split into its task and budget parts."""
    for k, c, lab in (("gate/grad_bias_task", "C0", "task"), ("gate/grad_bias_budget", "C3", "budget")):
        v = get(k)
        if v is not None:
            ax.plot(*v, color=c, lw=1.1, marker="o" if len(v[0]) <= 30 else None, ms=3, label=lab)
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_title("∂L/∂b_p by part (> 0 removes updates)", fontsize=9)
    ax.legend(fontsize=7)


def _delta_panel(ax, get) -> None:
    """The Δũ quantiles after an update, against 0.5."""
    q = [get(f"gate/delta_q{p}") for p in (10, 50, 90)]
    if q[1] is not None:
        if q[0] is not None and q[2] is not None:
            ax.fill_between(q[0][0], q[0][1], q[2][1], color="C1", alpha=0.3, lw=0, label="10–90 %")
        ax.plot(*q[1], color="C1", lw=1.3, label="median")
    ax.axhline(0.5, color="0.3", ls="--", lw=0.9, label="0.5: skip below")
    ax.set_ylim(0, 1.02)
    ax.set_title("Δũ after an update", fontsize=9)
    ax.legend(fontsize=7)


def _positions_panel(fig, ax, get, buckets) -> None:
    """The fraction of updates per position bucket over training."""
    if buckets:
        xs = get(buckets[0][1])[0]
        grid = np.stack([get(k)[1] for _, k in buckets])
        extent = (xs[0], xs[-1] if len(xs) > 1 else xs[0] + 1, len(buckets) - 0.5, -0.5)
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                       extent=extent)
        fig.colorbar(im, ax=ax, fraction=0.05, label="fraction updated")
        ax.set_ylabel(f"position (1/{len(buckets)} of the sequence)")
    ax.set_title("where the updates fall", fontsize=9)


def _cell_gradient_panel(ax, get) -> None:
    """The gradient on the cell's weights by part, and the share the budget leads."""
    for k, c, lab in (("gate/grad_cell_task", "C0", "|task part|"),
                      ("gate/grad_cell_budget", "C3", "|budget part|")):
        v = get(k)
        if v is not None:
            ax.plot(*v, color=c, lw=1.1, label=lab)
    if get("gate/grad_cell_task") is not None:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left")
    dom = get("gate/cell_budget_dominated")
    if dom is not None:
        ax2 = ax.twinx()
        ax2.plot(*dom, color="k", lw=1.0, ls=":", label="share budget-dominated")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("share of weights led by the budget", fontsize=7)
    ax.set_title("gradient on the cell's weights", fontsize=9)


# ----- trade-off ----------------------------------------------------------------------------------
def plot_tradeoff(points: Sequence[Mapping], path: PathLike, metric_name: str = "accuracy", *,
                  title: Optional[str] = None, x_label: Optional[str] = None,
                  annotate: bool = True, figsize: tuple = (6.4, 4.8), dpi: int = 100) -> Path:
    """Task metric vs number of state updates, e.g. across λ values, p_skip or thresholds.

    ``points``: dicts with

    * ``metric`` (y) and optional ``metric_std`` (error bar);
    * x: ``updates_fraction`` (fraction of steps updated, plotted in %) or ``updates`` (updates per
      sequence), with optional ``updates_fraction_std`` / ``updates_std``; every point must use the
      same one;
    * ``label`` (text next to the point, e.g. "λ=1e-4") and optional ``group`` (series: points of a
      group are joined by a line and share a colour and a legend entry, e.g. "Skip LSTM",
      "LSTM + random skip"; default: the label).
    """
    if not points:
        raise ValueError("plot_tradeoff: no points")
    if all("updates_fraction" in p for p in points):
        xkey, scale = "updates_fraction", 100.0
        x_label = x_label or "state updates (% of steps)"
    elif all("updates" in p for p in points):
        xkey, scale = "updates", 1.0
        x_label = x_label or "state updates per sequence"
    else:
        raise ValueError("plot_tradeoff: every point needs 'updates_fraction', or every point 'updates'")
    groups: "OrderedDict[str, list]" = OrderedDict()
    for p in points:
        if "metric" not in p:
            raise ValueError(f"plot_tradeoff: point without 'metric': {dict(p)}")
        groups.setdefault(str(p.get("group", p.get("label", ""))), []).append(p)
    fig = _new_figure(figsize, dpi)
    ax = fig.subplots()
    for gi, (group, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda p: float(p[xkey]))
        xs = np.array([float(p[xkey]) for p in pts]) * scale
        ys = np.array([float(p["metric"]) for p in pts])
        xerr = np.array([float(p.get(xkey + "_std", 0.0) or 0.0) for p in pts]) * scale
        yerr = np.array([float(p.get("metric_std", 0.0) or 0.0) for p in pts])
        color = f"C{gi % 10}"
        ax.errorbar(xs, ys, xerr=xerr if xerr.any() else None, yerr=yerr if yerr.any() else None,
                    color=color, marker="o", ms=5, lw=1.2, capsize=3, ls="-" if len(pts) > 1 else "",
                    label=group)
        if annotate:
            for p, xv, yv in zip(pts, xs, ys):
                text = str(p.get("label", ""))
                if text and text != group:
                    ax.annotate(text, (xv, yv), textcoords="offset points", xytext=(4, 4),
                                fontsize=7, color=color)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric_name)
    if xkey == "updates_fraction":
        ax.set_xlim(left=0, right=max(105.0, ax.get_xlim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{metric_name} vs state updates", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)
