"""The optimizer's report: one self-contained HTML file (plots embedded as PNG data URIs).

Plots: validation accuracy against tile sparsity per scheme; the latency / accuracy and
memory / accuracy Pareto fronts (measured points where measured, predicted otherwise); the
chosen program's operations per layer against their lower bounds; and a heat map of live
units per layer over the candidates on the fronts.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fheprune.reporting import write_text_atomic

__all__ = ["write_report"]

log = logging.getLogger(__name__)


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 4.0)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    encoded: str = base64.b64encode(buf.getvalue()).decode("ascii")
    return "data:image/png;base64," + encoded


def _family(r: dict[str, Any]) -> str:
    c = r["candidate"]
    method = str(c["method"])
    if c["family"] == "diagonal":
        return "dense diagonal"
    if c["family"] == "tile":
        return method if method == "dense" else f"{method} {c['target']}"
    return method + (f" G={c['groups']}" if c["groups"] > 1 else "")


def _cost(r: dict[str, Any], what: str) -> tuple[float, bool]:
    if r.get("measured"):
        return float(r["measured"][what]), True
    return float(r["predicted"][what]), False


def _accuracy_plot(rows: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        for fam in sorted({_family(r) for r in rows}):
            pts = sorted((r["unit_sparsity"], r["val_metric"]) for r in rows if _family(r) == fam)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=fam, alpha=0.8)
        ax.set_xlabel("unit (tile) sparsity")
        ax.set_ylabel("validation accuracy")
        ax.set_title("accuracy against sparsity, per scheme")
        ax.legend(fontsize=7)

    return draw


def _front_plot(
    rows: list[dict[str, Any]], front: list[str], what: str, scale: float, unit: str
) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        # Every candidate at its prediction (the front is drawn on those, comparable numbers);
        # the finalists also at their measurement.
        ax.scatter(
            [100 * r["degradation"] for r in rows],
            [r["predicted"][what] * scale for r in rows],
            marker="o",
            label="predicted",
            alpha=0.7,
        )
        finalists = [r for r in rows if r.get("measured")]
        ax.scatter(
            [100 * r["degradation"] for r in finalists],
            [r["measured"][what] * scale for r in finalists],
            marker="s",
            label="measured",
            alpha=0.8,
        )
        pts = sorted(
            (100 * r["degradation"], r["predicted"][what] * scale)
            for r in rows
            if r["key"] in front
        )
        ax.step(
            [p[0] for p in pts],
            [p[1] for p in pts],
            where="post",
            color="k",
            lw=1,
            label="Pareto front (predicted)",
        )
        ax.set_yscale("log")
        ax.set_xlabel("validation degradation (accuracy points)")
        ax.set_ylabel(f"{what.replace('_', ' ')} ({unit})")
        ax.legend(fontsize=7)

    return draw


def _layers_plot(layers: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        names = [lay["name"] for lay in layers]
        x = list(range(len(names)))
        w = 0.2
        series = (
            ("rotate", "rotations"),
            ("rotation_lower_bound", "rotation bound"),
            ("mul_plain", "plaintext mults"),
            ("mul_plain_lower_bound", "mult bound"),
        )
        for i, (key, label) in enumerate(series):
            ax.bar(
                [v + (i - 1.5) * w for v in x],
                [max(lay[key], 0.5) for lay in layers],
                w,
                label=label,
            )
        ax.set_xticks(x, names)
        ax.set_yscale("log")
        ax.set_title("chosen program: operations per layer (one group of samples)")
        ax.legend(fontsize=7)

    return draw


def _heatmap(rows: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        names = list(rows[0]["live_units"])
        grid = [
            [
                r["live_units"][n][0] / r["live_units"][n][1] if r["live_units"][n][1] else 1.0
                for n in names
            ]
            for r in rows
        ]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=6)
        ax.set_title("live units per layer (fraction), candidates on the fronts")
        ax.figure.colorbar(image, ax=ax)

    return draw


def _table(rows: list[dict[str, Any]], best_key: str | None) -> str:
    head = (
        "<tr><th>candidate</th><th>val acc</th><th>degradation</th><th>unit sparsity</th>"
        "<th>predicted latency (s)</th><th>measured latency (s)</th><th>memory (MiB)</th>"
        "<th>prediction error</th></tr>"
    )
    body = []
    for r in sorted(rows, key=lambda r: _cost(r, "latency_s")[0]):
        meas = r.get("measured") or {}
        style = ' style="font-weight:bold"' if r["key"] == best_key else ""
        err = f"{100 * meas['prediction_error']:+.0f}%" if meas else ""
        body.append(
            f"<tr{style}><td>{html.escape(r['label'])}</td><td>{r['val_metric']:.4f}</td>"
            f"<td>{100 * r['degradation']:+.2f}</td><td>{100 * r['unit_sparsity']:.1f}%</td>"
            f"<td>{r['predicted']['latency_s']:.4f}</td>"
            f"<td>{meas.get('latency_s', float('nan')):.4f}</td>"
            f"<td>{_cost(r, 'memory_bytes')[0] / 2**20:.1f}</td><td>{err}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def write_report(result: dict[str, Any], path: Path) -> Path | None:
    """Write the HTML report of an :func:`~fheprune.optimize.optimize` result."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover - matplotlib comes with the test/benchmark extras
        log.warning("matplotlib is not installed; no report")
        return None
    rows = [r for r in result["screened"] if "predicted" in r]
    best = result.get("best")
    front_keys = set(result["pareto"]["latency"]) | set(result["pareto"]["memory"])
    names = list(rows[0]["live_units"]) if rows else []
    on_front = [r for r in rows if r["key"] in front_keys and list(r["live_units"]) == names][:30]
    figures = [
        ("Accuracy against sparsity", _png(_accuracy_plot(rows))),
        (
            "Latency / accuracy Pareto front",
            _png(_front_plot(rows, result["pareto"]["latency"], "latency_s", 1.0, "s per batch")),
        ),
        (
            "Memory / accuracy Pareto front",
            _png(_front_plot(rows, result["pareto"]["memory"], "memory_bytes", 1 / 2**20, "MiB")),
        ),
    ]
    if best is not None:
        figures.append(("Operations per layer", _png(_layers_plot(best["layers"]))))
    if on_front:
        figures.append(("Live units", _png(_heatmap(on_front), (7.0, 1.5 + 0.25 * len(on_front)))))
    c = result["constraints"]
    if best is not None:
        verdict = (
            f"<p><b>Chosen:</b> {html.escape(best['label'])} &mdash; measured latency "
            f"{best['measured']['latency_s']:.4f} s per {result['batch']} images, memory "
            f"{best['measured']['memory_bytes'] / 2**20:.1f} MiB, validation degradation "
            f"{100 * best['degradation']:+.2f} points; test accuracy {best['test_metric']:.4f} "
            f"(unpruned {best['baseline_test_metric']:.4f}). Bundle: "
            f"<code>{html.escape(best['bundle'])}</code></p>"
        )
    else:
        lines = "".join(
            f"<li>{html.escape(v['message'])}</li>" for v in result["infeasible"]["violations"]
        )
        verdict = (
            f"<p><b>No program meets every constraint.</b> The closest misses:</p><ul>{lines}</ul>"
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>fheprune optimize: {html.escape(result['model'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:2px 6px}img{max-width:100%}</style></head><body>",
        f"<h1>fheprune optimize: {html.escape(result['model'])}</h1>",
        f"<p>Objective: {html.escape(result['objective'])}; constraints: "
        f"{html.escape(str({k: v for k, v in c.items() if v is not None}))}; "
        f"{result['trials']} candidates screened ({result['failed_trials']} failed) with "
        f"{result['workers']} worker(s) in {result['wall_s']:.0f} s. Selection on the "
        "validation split; the test split is read once, for the chosen program.</p>",
        verdict,
    ]
    parts += [
        f"<h2>{html.escape(t)}</h2><img src='{src}' alt='{html.escape(t)}'>" for t, src in figures
    ]
    parts.append("<h2>Candidates</h2>" + _table(rows, best["key"] if best else None))
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
    return path
