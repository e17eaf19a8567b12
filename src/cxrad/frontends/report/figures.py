"""The report's figures: one function per figure, each drawing with matplotlib (Agg, no pyplot state) and
saving a PNG of a fixed pixel size (``SIZES``) atomically. Inputs are plain arrays and dicts, so any
detector's outputs can be drawn."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, whatever the user's default backend is

import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxrad.files import atomic_write_bytes  # noqa: E402

DPI = 100
#: (width, height) in pixels of each figure kind
SIZES = {
    "loss_curves": (900, 480),
    "examples": (1000, 640),
    "score_densities": (1200, 460),
    "roc_pr": (1200, 540),
    "tsne": (820, 700),
    "confusion_matrix": (560, 480),
}
CLASS_COLOURS = {0: "#1f77b4", 1: "#d62728"}  # normal blue, abnormal red (tests look for these in screenshots)
CLASS_NAMES = {0: "normal", 1: "abnormal"}
_THRESHOLD_STYLES = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def _figure(kind: str, layout: str | None = "constrained") -> Figure:
    w, h = SIZES[kind]
    return Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout=layout)


def _save(fig: Figure, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches="tight": the pixel size stays SIZES[kind]
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _threshold_colour(i: int) -> str:
    return _THRESHOLD_STYLES[i % len(_THRESHOLD_STYLES)]


# ---------------------------------------------------------------------------------------- training
def loss_curves(history: dict, path) -> Path:
    """Every per-epoch series in ``history`` (train/val loss, GAN losses ...) against the epoch."""
    fig = _figure("loss_curves")
    ax = fig.add_subplot()
    series = {k: np.asarray(v, float) for k, v in history.items()
              if isinstance(v, (list, tuple, np.ndarray)) and len(v)}
    for name, values in series.items():
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, ms=3, lw=1.8,
                ls="--" if name.startswith("val") else "-", label=name)
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()]) if series else np.zeros(0)
    # log scale when series differ by orders of magnitude (e.g. a GAN's losses beside an MSE)
    if finite.size and (finite > 0).all() and finite.max() / max(finite.min(), 1e-12) > 100:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training history")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- examples
def examples(images: np.ndarray, titles: list[str], path, title: str, reconstructions=None, maps=None,
             map_max: float | None = None) -> Path:
    """Inputs (top row) beside their reconstructions and residual heatmaps, one column per image.

    Without reconstructions the second row shows the detector's anomaly map and the third overlays it on the
    input; without either only the inputs are shown. ``map_max`` fixes the heatmap scale so that figures of
    different classes compare."""
    fig = _figure("examples", layout=None)  # a fixed grid: constrained layout is slow with many image axes
    k = len(images)
    rows = [("input", "input")]
    if reconstructions is not None:
        rows.append(("reconstruction", "recon"))
        if maps is not None:
            rows.append(("residual", "map"))
    elif maps is not None:
        rows += [("anomaly map", "map"), ("map on input", "overlay")]
    axes = fig.subplots(len(rows), max(k, 1), squeeze=False)
    vmax = map_max if map_max else (float(np.percentile(maps, 99.5)) if maps is not None and np.size(maps)
                                    else 1.0)
    heat = None
    for r, (label, what) in enumerate(rows):
        for c in range(max(k, 1)):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= k:
                ax.set_axis_off()
                continue
            if what == "input":
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=255)
                ax.set_title(titles[c], fontsize=10.5)
            elif what == "recon":
                ax.imshow(reconstructions[c], cmap="gray", vmin=0, vmax=1)
            elif what == "map":
                heat = ax.imshow(maps[c], cmap="inferno", vmin=0, vmax=vmax)
            else:
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=255)
                ax.imshow(maps[c], cmap="inferno", vmin=0, vmax=vmax, alpha=0.5)  # colour bar from the map row
            if c == 0:
                ax.set_ylabel(label, fontsize=11)
    fig.subplots_adjust(left=0.045, right=0.9, top=0.8, bottom=0.02, wspace=0.08, hspace=0.1)
    if heat is not None:
        bottom = axes[-1, 0].get_position()
        fig.colorbar(heat, cax=fig.add_axes([0.92, bottom.y0, 0.015, bottom.height]), label="anomaly")
    if k == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    fig.suptitle(title, fontsize=15)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------- scores
def _density(ax, values: np.ndarray, colour: str, label: str, bins) -> None:
    from scipy.stats import gaussian_kde

    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    ax.hist(values, bins=bins, density=True, color=colour, alpha=0.3, label=f"{label} (n={values.size})")
    if values.size >= 2 and np.std(values) > 0:
        xs = np.linspace(bins[0], bins[-1], 400)
        ax.plot(xs, gaussian_kde(values)(xs), color=colour, lw=2)


def score_densities(labels, columns: dict[str, np.ndarray], thresholds: dict[str, dict[str, float]], path,
                    active: str | None = None) -> Path:
    """Per-class score densities (histogram + Gaussian KDE), one panel per column (the score first, then
    its components), with every threshold of that column drawn as a vertical line.

    ``thresholds`` maps a column name to {threshold name: value}; ``active`` names the one in use."""
    fig = _figure("score_densities")
    y = np.asarray(labels, int)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, (name, values) in zip(axes, columns.items()):
        values = np.asarray(values, float)
        lines = thresholds.get(name, {})
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        if lines:
            lo, hi = min(lo, *lines.values()), max(hi, *lines.values())
        pad = 0.05 * (hi - lo or 1.0)
        bins = np.linspace(lo - pad, hi + pad, 40)
        for cls in (0, 1):
            _density(ax, values[y == cls], CLASS_COLOURS[cls], CLASS_NAMES[cls], bins)
        for i, (tname, t) in enumerate(lines.items()):
            is_active = tname == active
            ax.axvline(t, color="black" if is_active else _threshold_colour(i), lw=2.2 if is_active else 1.4,
                       ls="-" if is_active else "--", label=f"{tname} = {t:.3g}" + (" (active)" if is_active else ""))
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.set_title(f"{name} by class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def roc_pr(labels, scores, auroc: float, auroc_ci, auprc: float, path, points: dict | None = None,
           active: str | None = None) -> Path:
    """ROC and precision-recall curves (scikit-learn), AUROC with its CI, and each threshold's operating
    point (``points``: name -> dict with sensitivity, specificity, precision)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, s = np.asarray(labels, int), np.asarray(scores, float)
    fig = _figure("roc_pr")
    ax_roc, ax_pr = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(y, s)
    lo, hi = auroc_ci
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if np.isfinite(lo) else ""
    ax_roc.plot(fpr, tpr, color=CLASS_COLOURS[1], lw=2.2, label=f"AUROC {auroc:.3f}{ci}")
    ax_roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    prec, rec, _ = precision_recall_curve(y, s)
    ax_pr.plot(rec, prec, color=CLASS_COLOURS[0], lw=2.2, label=f"AUPRC {auprc:.3f}")
    ax_pr.axhline(y.mean(), color="grey", ls=":", lw=1, label=f"prevalence {y.mean():.2f}")
    for i, (name, m) in enumerate((points or {}).items()):
        colour = "black" if name == active else _threshold_colour(i)
        marker = "*" if name == active else "o"
        size = 14 if name == active else 8
        ax_roc.plot(1 - m["specificity"], m["sensitivity"], marker, color=colour, ms=size, label=name)
        if np.isfinite(m["precision"]):
            ax_pr.plot(m["sensitivity"], m["precision"], marker, color=colour, ms=size, label=name)
    ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               title="ROC curve", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall curve",
              xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    return _save(fig, path)


# --------------------------------------------------------------------------------------- features
def tsne_map(features: np.ndarray, labels, path, groups=None, seed: int = 0, title: str = "") -> Path:
    """2-D t-SNE (scikit-learn) of per-image features, coloured by class; marker shape by ``groups``
    (e.g. the source hospital) when there are a few of them, since a site can separate as well as a class."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = StandardScaler().fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
              random_state=seed).fit_transform(x)
    y = np.asarray(labels, int)
    g = np.asarray(groups) if groups is not None else np.full(len(y), "")
    names = list(dict.fromkeys(g))
    markers = "os^Dvp*hX" if len(names) <= 9 else "o"
    fig = _figure("tsne")
    ax = fig.add_subplot()
    for cls in (0, 1):
        for j, name in enumerate(names):
            m = (y == cls) & (g == name)
            if m.any():
                label = CLASS_NAMES[cls] + (f" / {name}" if len(names) > 1 else "") + f" (n={m.sum()})"
                ax.scatter(xy[m, 0], xy[m, 1], s=26, color=to_rgba(CLASS_COLOURS[cls], 0.6),
                           marker=markers[j % len(markers)], edgecolors=CLASS_COLOURS[cls], linewidths=1.2,
                           label=label)  # see-through fill, solid rim: overlaps stay visible
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of detector features ({len(x)} images, perplexity {perplexity:g})")
    ax.legend(fontsize=8, markerscale=1.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ confusion
def confusion_matrix(cm: dict, path, title: str = "") -> Path:
    """2x2 matrix of counts (rows true class, columns verdict) with each row's share."""
    mat = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], float)
    share = mat / np.maximum(mat.sum(1, keepdims=True), 1)
    fig = _figure("confusion_matrix")
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(mat[i, j])}\n({share[i, j]:.0%})", ha="center", va="center", fontsize=14,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], ["flagged normal", "flagged anomalous"])
    ax.set_yticks([0, 1], ["normal", "abnormal"])
    ax.set_xlabel("verdict")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true class")
    return _save(fig, path)
