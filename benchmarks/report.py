"""Rows in, a table, a JSON file and a PNG bar chart out.

A row is ``{"metric": str, <column key>: str, "value": float, "unit": str}``;
the column key is ``engine`` for the engine benchmark and ``driver`` for the
storage one.  Units that end in ``/s`` are better higher; all others lower.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def higher_is_better(unit: str) -> bool:
    return unit.endswith("/s")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def pivot(rows: list[Row], key: str) -> tuple[list[str], list[str], dict[tuple[str, str], Row]]:
    """Metrics in first-seen order, columns in first-seen order, and the cell lookup."""
    metrics: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], Row] = {}
    for row in rows:
        if row["metric"] not in metrics:
            metrics.append(row["metric"])
        if row[key] not in columns:
            columns.append(row[key])
        cells[(row["metric"], row[key])] = row
    return metrics, columns, cells


def table(rows: list[Row], key: str, columns: list[str] | None = None,
          ratio: tuple[str, str] | None = None) -> str:
    """A Markdown table: one line per metric, one column per engine or driver.

    ``ratio=(a, b)`` adds a column a/b (for times: below 1 means a is faster).
    """
    # rows with "chart": False (the start path's budget: dozens of spans of one
    # engine, a table of their own) stay out of the grid
    metrics, seen, cells = pivot([r for r in rows if r.get("chart", True)], key)
    cols = [c for c in (columns or seen) if c in seen] + [c for c in seen
                                                          if columns and c not in columns]
    head = ["metric", *cols]
    if ratio:
        head.append(f"ratio {ratio[0]}/{ratio[1]}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        unit = next(cells[(m, c)]["unit"] for c in seen if (m, c) in cells)
        vals = [_fmt(cells[(m, c)]["value"], unit) if (m, c) in cells else "-" for c in cols]
        if ratio:
            a, b = cells.get((m, ratio[0])), cells.get((m, ratio[1]))
            if a and b and b["value"]:
                vals.append(f"{a['value'] / b['value']:.2f}")
            else:
                vals.append("-")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                                if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            info["mem_total_mb"] = int(f.readline().split()[1]) // 1024
    except (OSError, StopIteration):
        pass
    for name, cmd in (("dockerd", ["dockerd", "--version"]),
                      ("docker_cli", ["/usr/local/bin/docker", "--version"])):
        try:
            info[name] = subprocess.run(cmd, capture_output=True, text=True,
                                        timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info[name] = None
    return info


def write(out_dir: Path, name: str, rows: list[Row], key: str, meta: dict[str, Any],
          columns: list[str] | None = None, ratio: tuple[str, str] | None = None) -> str:
    """Write <name>.json, <name>.md and <name>.png into ``out_dir``; return the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table(rows, key, columns, ratio)
    meta = {**meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out_dir / f"{name}.md").write_text(text + "\n")
    chart(rows, key, out_dir / f"{name}.png", title=f"skiff benchmarks: {name}",
          columns=columns)
    return text


def chart(rows: list[Row], key: str, path: Path, title: str,
          columns: list[str] | None = None) -> None:
    """One small bar chart per metric (their units differ), in a grid.

    Without matplotlib (the ``bench`` extra) there is no chart, only a note.
    """
    try:
        import matplotlib
    except ModuleNotFoundError:
        print(f"no chart: matplotlib is not installed (pip install -e '.[bench]'): {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # rows with "chart": False (the start path's budget: dozens of spans of one
    # engine, a table of their own) stay out of the grid
    metrics, seen, cells = pivot([r for r in rows if r.get("chart", True)], key)
    cols = [c for c in (columns or seen) if c in seen] + [c for c in seen
                                                          if columns and c not in columns]
    n = max(1, len(metrics))
    ncols = 3 if n > 4 else min(n, 2)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.6 * nrows), squeeze=False)
    colors = ["#2b7bba", "#d9822b", "#7a7a7a", "#3a9e5c", "#a04ac0", "#c0392b"]
    for i, m in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        present = [c for c in cols if (m, c) in cells]
        vals = [cells[(m, c)]["value"] for c in present]
        unit = cells[(m, present[0])]["unit"]
        ax.bar(range(len(present)), vals,
               color=[colors[cols.index(c) % len(colors)] for c in present])
        ax.set_xticks(range(len(present)), present, fontsize=8)
        better = "higher" if higher_is_better(unit) else "lower"
        ax.set_title(f"{m}\n({unit}, {better} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for j in range(len(metrics), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle(title, fontsize=10)
    # keep a band of ~0.4 inch at the top for the title, whatever the height
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)
