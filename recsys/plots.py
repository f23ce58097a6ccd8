"""Figures for notebooks and the README, on matplotlib (imported on first use; Agg when there is no display).

Every function draws on `ax` (a new figure when None) and returns the figure; the numbers come from
`recsys.evaluation`, `recsys.metrics` and `recsys.embeddings`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def _axes(ax: Any, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    import matplotlib

    if ax is not None:
        return ax.figure, ax
    if matplotlib.get_backend().lower() not in ("agg",) and not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    return fig, ax


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY")) or "inline" in os.environ.get("MPLBACKEND", "")


def metrics_at_k(table: pd.DataFrame, metrics: Sequence[str] = ("recall", "ndcg"), ax: Any = None) -> Any:
    """Each model (row of `table`, columns like 'ndcg@10') as a line per metric against K."""
    fig, ax = _axes(ax)
    styles = ("-", "--", ":", "-.")
    for row, (name, values) in enumerate(table.iterrows()):
        colour = f"C{row % 10}"
        for m, metric in enumerate(metrics):
            cols = sorted((c for c in table.columns if c.startswith(f"{metric}@")), key=lambda c: int(c.split("@")[1]))
            ks = [int(c.split("@")[1]) for c in cols]
            ax.plot(ks, values[cols].to_numpy(float), styles[m % 4], marker="o", color=colour,
                    label=f"{name} {metric}")
    ax.set_xlabel("K")
    ax.set_ylabel("metric@K")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def embedding_map(coords: np.ndarray, labels: Sequence[str] | None = None,
                  annotate: Mapping[int, str] | None = None, top_labels: int = 8, ax: Any = None) -> Any:
    """A 2-D map (e.g. `recsys.embeddings.tsne_map`) coloured by label (the `top_labels` most common; the
    rest grey), with some points annotated {row: text}. The legend sits outside the map, beside it; the
    annotations stand in a column inside each side edge, apart from each other, each linked to its point by a
    line (`label_positions`), so none is cut off at the edge or covers another."""
    fig, ax = _axes(ax, (7.0, 6.0))
    coords = np.asarray(coords)
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.6)
    else:
        labels = np.asarray(labels, dtype=object)
        common = pd.Series(labels).value_counts().index[:top_labels]
        rest = ~np.isin(labels, common)
        ax.scatter(coords[rest, 0], coords[rest, 1], s=3, color="0.8", label="other")
        for i, label in enumerate(common):
            mask = labels == label
            ax.scatter(coords[mask, 0], coords[mask, 1], s=4, color=f"C{i % 10}", label=str(label))
        ax.legend(fontsize=7, markerscale=3, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    rows = list(annotate or {})
    if rows:
        for row, (x, y, ha) in zip(rows, label_positions(coords, rows)):
            ax.annotate(annotate[row], coords[row], xytext=(x, y), textcoords="data", ha=ha, va="center",
                        fontsize=7, arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"},
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def label_positions(coords: np.ndarray, rows: Sequence[int], gap: float = 0.04) -> list[tuple[float, float, str]]:
    """(x, y, horizontal alignment) of the labels of `coords[rows]`: two columns inside the map's edges, the
    points of the right half labelled at the right edge (text ending there), the left half's at the left
    edge; in each column the labels keep their points' order by height, at least `gap` of the map's height
    apart, within its vertical range."""
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    height = max(float(hi[1] - lo[1]), 1e-9)
    right_half = coords[list(rows), 0] > (lo[0] + hi[0]) / 2
    out: list[tuple[float, float, str]] = [(0.0, 0.0, "")] * len(rows)
    for side, x in (("left", float(lo[0])), ("right", float(hi[0]))):
        order = sorted((i for i in range(len(rows)) if right_half[i] == (side == "right")),
                       key=lambda i: coords[rows[i], 1])
        ys = [float(coords[rows[i], 1]) for i in order]
        for j in range(1, len(ys)):  # upwards: each at least `gap` above the one below
            ys[j] = max(ys[j], ys[j - 1] + gap * height)
        if ys and ys[-1] > hi[1]:  # the stack left the map at the top: push it down from there
            ys[-1] = float(hi[1])
            for j in range(len(ys) - 2, -1, -1):
                ys[j] = min(ys[j], ys[j + 1] - gap * height)
        for i, y in zip(order, ys):
            out[i] = (x, y, side)
    return out


def popularity_curve(popularity: np.ndarray, recommended: Mapping[str, np.ndarray], ax: Any = None) -> Any:
    """The catalogue's popularity curve (items by decreasing training popularity) and, on the same item order,
    how often each model recommends each item (`recsys.evaluation.recommendation_counts`), as shares."""
    fig, ax = _axes(ax)
    order = np.argsort(-np.asarray(popularity), kind="stable")
    rank = np.arange(1, len(order) + 1)
    ax.plot(rank, popularity[order] / max(popularity.sum(), 1), color="k", lw=2, label="catalogue (training)")
    for i, (name, counts) in enumerate(recommended.items()):
        share = counts[order] / max(counts.sum(), 1)
        ax.plot(rank, share, ".", ms=2, alpha=0.6, color=f"C{i % 10}", label=f"recommended by {name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("item rank by training popularity")
    ax.set_ylabel("share of interactions / of recommendations")
    ax.legend(fontsize=7)
    return fig


def norm_vs_popularity(table: pd.DataFrame, ax: Any = None) -> Any:
    """Each item's vector norm against its popularity (`recsys.embeddings.item_table`)."""
    fig, ax = _axes(ax)
    ax.scatter(table["popularity"] + 1, table["norm"], s=3, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training popularity (users) + 1")
    ax.set_ylabel("item vector norm")
    ax.grid(alpha=0.3)
    return fig


def dimensionality(table: pd.DataFrame, metric: str = "ndcg@10", ax: Any = None) -> Any:
    """Quality against training time and query latency across embedding sizes
    (`recsys.embeddings.dimensionality_sweep`)."""
    fig, ax = _axes(ax)
    ax.plot(table["factors"], table[metric], "o-", color="C0", label=metric)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("factors")
    ax.set_ylabel(metric, color="C0")
    twin = ax.twinx()
    twin.plot(table["factors"], table["train_s"], "s--", color="C1", label="train s")
    twin.plot(table["factors"], table["query_ms"] * 100, "^:", color="C2", label="query ms x 100")
    twin.set_ylabel("seconds / ms x 100")
    fig.legend(fontsize=7, loc="upper left")
    return fig


def drift_map(old_xy: np.ndarray, new_xy: np.ndarray, moved: Sequence[int], labels: Mapping[int, str] | None = None,
              ax: Any = None) -> Any:
    """Two versions of the same items on one map: every item where the new version puts it (grey), and for the
    rows `moved` an arrow from where the old version (aligned) put it, labelled from `labels`."""
    fig, ax = _axes(ax, (7.0, 6.0))
    ax.scatter(new_xy[:, 0], new_xy[:, 1], s=4, color="0.75", label="new version")
    for row in moved:
        ax.annotate("", xy=new_xy[row], xytext=old_xy[row],
                    arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 1.0})
        ax.scatter(*old_xy[row], s=14, color="tab:blue", zorder=3)
        ax.scatter(*new_xy[row], s=14, color="tab:red", zorder=3)
        if labels and row in labels:
            ax.text(*new_xy[row], labels[row], fontsize=7)
    ax.scatter([], [], s=14, color="tab:blue", label="moved item, old version (aligned)")
    ax.scatter([], [], s=14, color="tab:red", label="moved item, new version")
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
