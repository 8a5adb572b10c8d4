"""Figures of the paper's workflows (matplotlib, Agg backend: no display needed).

Every figure is written at a fixed size (FIGURE_SIZE inches x DPI, no tight bounding box) so that a rerun
writes an image of the same shape; PNG and, where asked, SVG.
"""
from __future__ import annotations

from pathlib import Path

from durable.atomic import atomic_path

DPI = 100
FIGURE_SIZE = (6.4, 4.0)          # Figure 5's panels: 640 x 400 pixels
HEATMAP_PANEL = (3.2, 3.0)        # Table 3's heatmap: one panel per layer count, 320 x 300 pixels each


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path, formats=("png",)) -> list[Path]:
    """Write the figure as path.<format> for each format (atomically and durably); close it."""
    written = []
    for fmt in formats:
        final = path.with_suffix(f".{fmt}")
        # SVG embeds a date and random ids unless told otherwise: fixed metadata gives the same bytes on a rerun
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with atomic_path(final) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
        written.append(final)
    pyplot().close(fig)
    return written


def table3_heatmap(table: dict, path: Path, key: str = "f1@1") -> Path:
    """One panel per layer count: heads (rows) x head dimension (columns), coloured by the mean score."""
    plt = pyplot()
    cells = {(r["layers"], r["heads"], r["head_dim"]): r[key]["mean"] for r in table["rows"]}
    layers = sorted({k[0] for k in cells})
    heads = sorted({k[1] for k in cells})
    dims = sorted({k[2] for k in cells})
    values = list(cells.values())
    lo, hi = min(values), max(values)
    # constrained: the axis labels and the colour bar fit inside the figure, whatever the panel count
    fig, axes = plt.subplots(1, len(layers), squeeze=False, layout="constrained",
                             figsize=(HEATMAP_PANEL[0] * len(layers), HEATMAP_PANEL[1]))
    for ax, n_layers in zip(axes[0], layers):
        grid = [[cells.get((n_layers, h, d), float("nan")) for d in dims] for h in heads]
        image = ax.imshow(grid, vmin=lo, vmax=hi if hi > lo else lo + 1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(dims)), [str(d) for d in dims])
        ax.set_yticks(range(len(heads)), [str(h) for h in heads])
        ax.set_xlabel("head dimension")
        if ax is axes[0][0]:
            ax.set_ylabel("heads")          # the panels share their rows
        ax.set_title(f"{n_layers} layer{'s' if n_layers > 1 else ''}", fontsize=9)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=key.upper())
    return save(fig, path)[0]


def present_absent_bars(rows: list[dict], path: Path) -> list[Path]:
    """Grouped bars: F1@1 on present and on absent keyphrases, per model (mean over seeds, sd as error bar)."""
    plt = pyplot()
    models = list(dict.fromkeys(r["config"] for r in rows))
    stats = {(r["config"], r["bucket"]): r for r in rows if r["analysis"] == "presence"}
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    width = 0.38
    for offset, kind in ((-width / 2, "present"), (width / 2, "absent")):
        means = [stats[m, kind]["mean"] if (m, kind) in stats else 0.0 for m in models]
        sds = [(stats[m, kind]["sd"] or 0.0) if (m, kind) in stats else 0.0 for m in models]
        ax.bar([i + offset for i in range(len(models))], means, width, yerr=sds, capsize=3, label=kind)
    ax.set_xticks(range(len(models)), models, rotation=15, fontsize=8)
    ax.set_ylabel("F1@1 (%)")
    ax.set_title("Present and absent keyphrases")
    ax.legend()
    fig.subplots_adjust(bottom=0.2)
    return save(fig, path, ("png", "svg"))


def bucket_lines(rows: list[dict], analysis: str, xlabel: str, path: Path) -> list[Path]:
    """One line per model: F1@1 by bucket (buckets in the order the rows give them)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    selected = [r for r in rows if r["analysis"] == analysis]
    buckets = list(dict.fromkeys(r["bucket"] for r in selected))
    for model in dict.fromkeys(r["config"] for r in selected):
        points = {r["bucket"]: r for r in selected if r["config"] == model}
        xs = [i for i, b in enumerate(buckets) if b in points]
        ax.errorbar(xs, [points[buckets[i]]["mean"] for i in xs],
                    yerr=[points[buckets[i]]["sd"] or 0.0 for i in xs], marker="o", capsize=3, label=model)
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1@1 (%)")
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.15)
    return save(fig, path, ("png", "svg"))
