"""Self-contained HTML pages for `llnassist cohort ... --report`: the result's tables and its
figures, each figure inline as SVG with a PNG download beside it."""

from __future__ import annotations

import base64
import html
import io

_CSS = ("body{font-family:system-ui,Arial,sans-serif;max-width:1000px;margin:1.5em auto;color:#222}"
        "table{border-collapse:collapse;font-size:.9em;margin:.6em 0}td,th{border:1px solid #bbb;padding:3px 7px}"
        "h2{border-bottom:1px solid #ccc;font-size:1.15em}.fig{margin:1em 0}")


def _fig(fig, name: str) -> str:
    import matplotlib.pyplot as plt

    svg, png = io.StringIO(), io.BytesIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    fig.savefig(png, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    body = svg.getvalue()
    body = body[body.index("<svg"):]
    b64 = base64.b64encode(png.getvalue()).decode("ascii")
    return (f"<div class='fig' id='fig-{name}'>{body}<br><a download='{name}.png' "
            f"href='data:image/png;base64,{b64}'>PNG</a></div>")


def _table(header, rows) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _survival(r: dict) -> list:
    plt = _plt()
    parts = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g, km in r["km"].items():
        ax.step(km["curve"]["time"], km["curve"]["survival"], where="post", label=f"{g} (n={km['n']})")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.legend()
    parts.append(_fig(fig, "kaplan-meier"))
    ticks = list(next(iter(r["km"].values()))["at_risk"])
    parts.append("<p>Numbers at risk</p>" + _table(["group", *ticks], [[g, *km["at_risk"].values()]
                                                                      for g, km in r["km"].items()]))
    rows = [[g, km["n"], km["events"], km["median"]] + [f"{v['survival']:.3f} ({_fmt(v['lower'])}-{_fmt(v['upper'])})"
                                                        for v in km["at"].values()] for g, km in r["km"].items()]
    at = list(next(iter(r["km"].values()))["at"])
    parts.append(_table(["group", "n", "events", "median", *[f"S({t})" for t in at]], rows))
    if "logrank" in r:
        lr = r["logrank"]
        parts.append(f"<p>Log-rank: chi-square {lr['chi2']:.3f}, df {lr['df']}, p = {_fmt(lr['p'])}</p>")
    if "cox" in r:
        for kind in ("univariable", "multivariable"):
            parts.append(f"<h2>Cox regression, {kind}</h2>")
            parts.append(_table(["term", "HR", "95% CI", "p"], [[k, v["hr"], f"{v['lower']:.3f}-{v['upper']:.3f}",
                                                                 v["p"]] for k, v in r["cox"][kind].items()]))
        parts.append(f"<p>Concordance {r['cox']['concordance']:.3f}. Proportional hazards (Grambsch-Therneau):</p>")
        parts.append(_table(["term", "chi-square", "p"], [[k, v["chi2"], v["p"]]
                                                          for k, v in r["cox"]["proportional_hazards"].items()]))
    return parts


def _diagnostic(r: dict) -> list:
    parts = []
    for name, res in r["predictions"].items():
        parts.append(f"<h2>{html.escape(name)} against {html.escape(r['truth'])}</h2>")
        parts.append(_table(["measure", "estimate", "95% CI (exact)"],
                            [[m, res[m]["estimate"], f"{_fmt(res[m]['lower'])}-{_fmt(res[m]['upper'])}"]
                             for m in ("accuracy", "sensitivity", "specificity", "ppv", "npv")]))
        k = res["kappa"]
        parts.append(f"<p>Cohen's kappa {k['estimate']:.3f} ({k['lower']:.3f}-{k['upper']:.3f}), {k['label']}</p>")
        m = res["confusion"]["matrix"]
        parts.append(_table(["reference \\ prediction", *res["confusion"]["labels"]],
                            [[lab, *row] for lab, row in zip(res["confusion"]["labels"], m)]))
    if "kappa_matrix" in r:
        plt = _plt()
        km = r["kappa_matrix"]
        fig, ax = plt.subplots(figsize=(1.2 * len(km["raters"]) + 2, 1.2 * len(km["raters"]) + 1))
        im = ax.imshow(km["kappa"], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(km["raters"])), km["raters"], rotation=45, ha="right")
        ax.set_yticks(range(len(km["raters"])), km["raters"])
        for i, row in enumerate(km["kappa"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k")
        fig.colorbar(im, ax=ax, label="Cohen's kappa")
        parts.append("<h2>Agreement (kappa heat map)</h2>" + _fig(fig, "kappa"))
    return parts


def _model(r: dict) -> list:
    plt = _plt()
    a = r["auc"]
    parts = [f"<p>AUC {a['estimate']:.3f} (DeLong 95% CI {a['lower']:.3f}-{a['upper']:.3f}); Youden cut-off "
             f"{r['youden']['cutoff']:.4g}; at cut-off {r['cutoff']:.4g}: sensitivity "
             f"{r['at_cutoff']['sensitivity']:.3f}, specificity {r['at_cutoff']['specificity']:.3f}. Calibration "
             f"intercept {r['calibration']['intercept']:.3f}, slope {r['calibration']['slope']:.3f}, Brier "
             f"{r['calibration']['brier']:.4f}.</p>"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    cur = r["calibration"]["curve"]
    ax.plot([0, 1], [0, 1], "--", color="#888")
    ax.plot([c["predicted"] for c in cur], [c["observed"] for c in cur], "o-")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed proportion")
    parts.append(_fig(fig, "calibration"))
    fig, ax = plt.subplots(figsize=(6, 4))
    dc = r["decision_curve"]
    th = [d["threshold"] for d in dc]
    ax.plot(th, [d["model"] for d in dc], label="model")
    ax.plot(th, [d["all"] for d in dc], label="treat all")
    ax.plot(th, [0 for _ in dc], label="treat none")
    ax.set_ylim(-0.05, max(0.05, max(d["all"] for d in dc)) * 1.1)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.legend()
    parts.append(_fig(fig, "decision-curve"))
    return parts


def _baseline(r: dict) -> list:
    groups = list(r["groups"])
    rows = []
    for v in r["variables"]:
        if v["kind"] == "continuous":
            rows.append([v["variable"], *[v["cells"][g] for g in groups], v["p"], v["test"]])
        else:
            rows.append([v["variable"], *["" for _ in groups], v["p"], v["test"]])
            rows += [[f"  {lev}", *[cells[g] for g in groups], "", ""] for lev, cells in v["cells"].items()]
    return [_table(["", *[f"{g} (n={n})" for g, n in r["groups"].items()], "p", "test"], rows)]


def _refit(r: dict) -> list:
    a = r["outer_auc"]
    return [f"<p>Nested cross-validation ({r['outer_folds']} outer x {r['inner_folds']} inner folds, seed {r['seed']})"
            f": honest AUC {a['estimate']:.3f} ({a['lower']:.3f}-{a['upper']:.3f}); lambda {r['lambda']:.4g}"
            f"{'; ComBat by ' + html.escape(r['harmonised_by']) if r['harmonised_by'] else ''}.</p>",
            _table(["term", "coefficient"], [["intercept", r["score"]["intercept"]],
                                             *[[k, v] for k, v in r["score"]["coefficients"].items()]])]


def html_report(kind: str, result: dict) -> str:
    body = {"survival": _survival, "diagnostic": _diagnostic, "model": _model, "table": _baseline,
            "refit": _refit}[kind](result)
    title = {"survival": "Survival", "diagnostic": "Diagnostic accuracy", "model": "Risk score performance",
             "table": "Baseline characteristics", "refit": "Radiomics score refit"}[kind]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLNAssist cohort: {title}</title>"
            f"<style>{_CSS}</style></head><body><h1>{title}</h1>" + "".join(body) + "</body></html>")
