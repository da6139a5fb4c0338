"""Turns the JSON results of benches/batching/run.sh into summary.md (tables) and
throughput.svg (a bar chart per model). Standard library only."""

import json
import sys
from pathlib import Path

MODES = ["b1", "static8", "static32", "aimd", "aimd-delay"]
MODELS = ["logreg", "mlp", "fixed-cost"]


def load(path):
    return json.loads(path.read_text()) if path.exists() else None


def row(label, r):
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "-"
    lat = r["latency_ms"]
    return (
        f"| {label} | {r['throughput_rps']:.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
        f"{r['server']['mean_batch']:.1f} | {r['server']['batch_sizes']} | {errors} |"
    )


def main(out):
    lines = ["| run | served req/s | p50 ms | p99 ms | mean batch | batch size at end | errors |",
             "|---|---|---|---|---|---|---|"]
    bars = {}
    for model in MODELS:
        for mode in MODES:
            r = load(out / f"modes-{model}-{mode}.json")
            if r:
                lines.append(row(f"{model} {mode}", r))
                bars.setdefault(model, []).append((mode, r["throughput_rps"]))
    lines += ["", "| run | served req/s | p50 ms | p99 ms | mean batch | batch size at end | errors |",
              "|---|---|---|---|---|---|---|"]
    for model in ["logreg", "fixed-cost"]:
        for replicas in [1, 2, 4]:
            r = load(out / f"replicas-{model}-{replicas}.json")
            if r:
                lines.append(row(f"{model} aimd, {replicas} replicas, closed loop", r))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    (out / "throughput.svg").write_text(svg(bars))


def svg(bars):
    """One group of bars per model; bar height is throughput relative to the group's max."""
    width, height, pad, group_gap = 760, 300, 40, 30
    colors = ["#999", "#7aa6d6", "#3b78c2", "#e07b39", "#b5461a"]
    groups = len(bars) or 1
    group_w = (width - 2 * pad - (groups - 1) * group_gap) / groups
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="{pad}" y="20" font-size="13">Served requests/s at a 20 ms SLO, '
             'open-loop Poisson load, 1 replica (labels: req/s)</text>']
    for g, (model, values) in enumerate(bars.items()):
        top = max(v for _, v in values) or 1
        x0 = pad + g * (group_w + group_gap)
        bar_w = group_w / len(values)
        for i, (mode, value) in enumerate(values):
            h = (height - 80) * value / top
            x, y = x0 + i * bar_w, height - h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" height="{h:.1f}" '
                         f'fill="{colors[i % len(colors)]}"/>')
            parts.append(f'<text x="{x + 2:.1f}" y="{y - 4:.1f}">{value:.0f}</text>')
            parts.append(f'<text x="{x + 2:.1f}" y="{height + 14}" transform="rotate(30 {x + 2:.1f} '
                         f'{height + 14})">{mode}</text>')
        parts.append(f'<text x="{x0:.1f}" y="{height + 55}" font-size="13">{model}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
