"""The pictures: matplotlib only (no torch), so the plot stage starts fast.

PNGs are written without the "Software" metadata matplotlib stamps by default, so the same
data always gives the same bytes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from torchreg import fixedmath  # noqa: E402
from torchreg.files import write_bytes  # noqa: E402

plt.rcParams.update(
    {
        "figure.figsize": (6.4, 4.4),
        "figure.dpi": 110,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        # Laid out once while drawing (bbox_inches="tight" would draw every figure twice).
        "figure.constrained_layout.use": True,
    }
)
DATA, MODEL, TRUTH = "#4C72B0", "#DD5555", "#333333"


def save(fig: plt.Figure, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def fit_figure(
    pred: dict, curve: dict, feature: int, subtitle: str, label: str, target: str = "y"
) -> plt.Figure:
    """The tutorial's figure (one feature against y, with the model's line), and beside it the
    same feature against its partial residual, where the other features' effect is removed."""
    fig, (raw, partial) = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    x = pred[f"x{feature}"]
    rows = [i for i, f in enumerate(curve["feature"]) if int(f) == feature]
    cx = [curve["x"][i] for i in rows]
    for ax, y, title in (
        (raw, pred["actual"], f"{target} (other features add spread)"),
        (partial, pred[f"partial_x{feature}"], "partial residual (other features removed)"),
    ):
        # Thin lines over the points: on the right the points sit on the line, and both must show.
        ax.scatter(x, y, s=12, alpha=0.4, color=DATA, label="test rows", lw=0)
        ax.plot(cx, [curve["model"][i] for i in rows], color=MODEL, lw=1.2, label="model")
        if "truth" in curve:  # synthetic data: the function it was drawn from
            truth = [curve["truth"][i] for i in rows]
            ax.plot(cx, truth, "--", color=TRUTH, lw=0.8, label="true f")
        ax.set(xlabel=f"feature {label}", title=title)
        ax.title.set_fontsize(10)
    raw.set_ylabel(target)
    partial.set_ylabel(f"{target} minus the other features' fitted part")
    partial.legend(loc="upper left", frameon=False)
    others = "0" if "truth" in curve else "their training mean"
    lines = "lines" if "truth" in curve else "line"
    title = f"Fit along feature {label} ({lines}: other features at {others})\n{subtitle}"
    fig.suptitle(title, fontsize=11)
    return fig


def loss_figure(
    steps: list[float],
    loss: list[float],
    loss_name: str,
    floor: float,
    val: dict | None = None,
    scaled: bool = False,
) -> plt.Figure:
    """The loss per epoch; `scaled`: a table's, on its standardised target."""
    fig, ax = plt.subplots()
    epochs = [s + 1 for s in steps]
    ax.plot(epochs, loss, color=MODEL, lw=1.5, label=f"training {loss_name} (epoch mean)")
    if val is not None:
        val_epochs = [s + 1 for s in val["step"]]
        ax.plot(val_epochs, val["val_loss"], color=DATA, lw=1.2, label=f"validation {loss_name}")
    if loss_name == "mae" and floor > 0:
        ax.axhline(floor, color=TRUTH, ls="--", lw=1, label=f"noise floor {floor:.4g}")
    ax.set_yscale("log")
    title = "Training loss" if val is None else "Training and validation loss"
    unit = ", standardised target" if scaled else ""
    ax.set(xlabel="epoch", ylabel=f"{loss_name}{unit} (log scale)", title=title)
    ax.legend(loc="best", frameon=False)
    return fig


def predicted_figure(pred: dict, subtitle: str, target: str = "y") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    actual, predicted = pred["actual"], pred["predicted"]
    lo, hi = min(actual + predicted), max(actual + predicted)
    ax.plot([lo, hi], [lo, hi], "--", color=TRUTH, lw=1, label="perfect prediction")
    ax.scatter(actual, predicted, s=8, alpha=0.5, color=DATA, label="test rows")
    ax.set(
        xlabel=f"actual {target}",
        ylabel=f"predicted {target}",
        title=f"Predicted vs actual\n{subtitle}",
    )
    ax.title.set_fontsize(9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper left", frameon=False)
    return fig


def residual_figure(pred: dict, floor: float, target: str = "y") -> plt.Figure:
    """Residuals against the prediction and their distribution, with the noise floor drawn as
    +-floor (the mean |noise|: a perfect model's mean |residual|) and, on the histogram, the
    N(0, noise_std) curve a perfect model's residuals would follow."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0), width_ratios=[3, 2], sharey=True)
    residual = pred["residual"]
    left.scatter(pred["predicted"], residual, s=8, alpha=0.5, color=DATA, lw=0)
    left.axhline(0, color=TRUTH, lw=1)
    left.set(
        xlabel=f"predicted {target}", ylabel="residual (actual - predicted)", title="Residuals"
    )
    # Sturges' rule sizes the bins from the row count: 25 fixed bins over 1000 rows look ragged.
    edges = np.histogram_bin_edges(residual, bins="sturges")
    right.hist(residual, bins=edges, color=DATA, alpha=0.8, orientation="horizontal")
    right.set(xlabel="test rows", title="Distribution")
    if floor > 0:
        for ax in (left, right):
            ax.axhline(floor, color=TRUTH, ls="--", lw=1, label=f"noise floor \u00b1{floor:.3g}")
            ax.axhline(-floor, color=TRUTH, ls="--", lw=1)
        std = floor * math.sqrt(math.pi / 2)  # mean |N(0, s)| = s * sqrt(2 / pi)
        ys = np.linspace(edges[0], edges[-1], 200)
        scale = len(residual) * (edges[1] - edges[0]) / (std * math.sqrt(2 * math.pi))
        density = scale * fixedmath.exp(-0.5 * (ys / std) ** 2)  # np.exp: per-CPU bits
        right.plot(density, ys, color=MODEL, lw=1.5, label="noise alone (perfect model)")
        right.legend(loc="upper right", frameon=False, fontsize=8)
    return fig
