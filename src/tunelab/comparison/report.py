"""The comparison as a terminal table, three plots and one self-contained HTML page."""
from __future__ import annotations

import base64
import html
from pathlib import Path

PLOTS = {
    "metric_vs_trainable": "metric vs trainable parameters",
    "metric_vs_time": "metric vs training time",
    "forgetting_vs_gain": "forgetting vs gain",
}


def _cell(value, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells, shared by the terminal table and the HTML page."""
    tests = list(result["tests"])
    metric = result["metric"]
    header = ["approach", "kind", "trainable %", "train s", "peak MB"] + [f"{t} {metric}" for t in tests] + \
             ["ms/example", "prompt tok", "general ppl Δ", "source kept"]
    body = []
    primary = result["primary"]
    for r in result["rows"]:
        p = r["tests"][primary]
        body.append([r["name"], r["kind"] if r["kind"] != "train" else f"{r['stage']}/{r['method']}",
                     _cell(r["trainable_percent"], ".3f"), _cell(r["train_seconds"], ".1f"),
                     _cell(r["peak_rss_mb"], ",.0f")]
                    + [_cell(r["tests"][t]["value"], ".3f" if abs(r["tests"][t]["value"] or 0) < 1000 else ",.0f") for t in tests]
                    + [_cell(p.get("latency_ms"), ".1f"), _cell(p.get("prompt_tokens"), ".0f"),
                       _cell(None if r.get("general_perplexity_change") is None else 100 * r["general_perplexity_change"], "+.1f") +
                       ("%" if r.get("general_perplexity_change") is not None else ""),
                       _cell(None if r.get("source_kept") is None else 100 * r["source_kept"], ".0f") +
                       ("%" if r.get("source_kept") is not None else "")])
    return header, body


def format_table(result: dict) -> str:
    header, body = table_rows(result)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [result["title"], line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [line(r) for r in body]
    out.append(f"{result['metric']} on {result['primary']} ranks the approaches"
               f" ({'lower' if result['lower_is_better'] else 'higher'} is better); ms/example and prompt tokens on "
               f"{result['primary']}" + (f"; general ppl Δ: perplexity change on {result['forgetting_text']}."
                                         if result.get("forgetting_text") else "; general ppl Δ: no general-text "
                                         "set configured (forgetting.text)."))
    for test in result["tests"]:
        sizes = {}
        for r in result["rows"]:
            sizes.setdefault(r["tests"][test].get("n"), []).append(r["name"])
        if len(sizes) > 1:  # some approaches scored fewer rows (their own test_rows): say which
            common = max(sizes, key=lambda n: len(sizes[n]))
            others = "; ".join(f"{n} for {', '.join(names)}" for n, names in sizes.items() if n != common)
            out.append(f"{test}: {common} rows scored ({others}).")
    out += ["", "Recommendation:"] + [f"- {s}" for s in result["recommendation"]]
    return "\n".join(out)


def plot_all(result: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, test, metric = result["rows"], result["primary"], result["metric"]
    value = lambda r: r["tests"][test]["value"]
    baseline = next((r for r in rows if r["kind"] != "train"), rows[0])
    sign = -1 if result["lower_is_better"] else 1
    paths = {}
    figures = {
        "metric_vs_trainable": ("trainable parameters (%, log; baselines at 1e-4)",
                                lambda r: max(r["trainable_percent"], 1e-4), True),
        "metric_vs_time": ("training time (s; baselines at 0)", lambda r: r["train_seconds"], False),
    }
    for key, (xlabel, x, log) in figures.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.scatter(x(r), value(r), marker="o" if r["kind"] == "train" else "s")
            ax.annotate(r["name"], (x(r), value(r)), fontsize=8, xytext=(4, 3), textcoords="offset points")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel), ax.set_ylabel(f"{metric} on {test}"), ax.set_title(PLOTS[key])
        fig.tight_layout()
        paths[key] = out_dir / f"{key}.png"
        fig.savefig(paths[key], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    use_ppl = any(r.get("general_perplexity_change") is not None for r in rows if r["kind"] == "train")
    for r in rows:
        gain = sign * (value(r) - value(baseline))
        if use_ppl:
            loss = 100 * (r.get("general_perplexity_change") or 0.0)
        else:
            loss = 100 * (1 - r["source_kept"]) if r.get("source_kept") is not None else 0.0
        ax.scatter(gain, loss)
        ax.annotate(r["name"], (gain, loss), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(f"gain in {metric} on {test} over {baseline['name']}")
    ax.set_ylabel("general-text perplexity change (%)" if use_ppl else f"{result.get('source') or 'source'} metric lost (%)")
    ax.set_title(PLOTS["forgetting_vs_gain"])
    fig.tight_layout()
    paths["forgetting_vs_gain"] = out_dir / "forgetting_vs_gain.png"
    fig.savefig(paths["forgetting_vs_gain"], dpi=110)
    plt.close(fig)
    return paths


def write_html(result: dict, plots: dict[str, Path], path: Path) -> Path:
    """One file, plots embedded as data URIs: it can be mailed or opened from anywhere."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("tunelab.comparison", "."), autoescape=select_autoescape(["html", "j2"]))
    header, body = table_rows(result)
    images = {key: base64.b64encode(p.read_bytes()).decode("ascii") for key, p in plots.items()}
    page = env.get_template("report.html.j2").render(
        result=result, header=header, body=body, plots=[(key, PLOTS[key], images[key]) for key in plots],
        escape=html.escape)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
