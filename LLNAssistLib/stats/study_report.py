"""HTML report of a reader-study analysis: ROC curves per reader and modality, AUC table, MRMC
result, and a between-reader kappa heat map per modality (like Figure 2A of Qiao et al., Front Oncol 2025)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from . import mrmc, roc


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def build(result: dict, ratings: np.ndarray, truth: np.ndarray) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = html.escape
    modalities, readers = result["modality_order"], sorted(result["readers"])
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>LLNAssist reader study</title>",
             "<style>body{font-family:system-ui,Arial,sans-serif;max-width:1100px;margin:1.5em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 7px}</style></head><body>",
             f"<h1>Reader study analysis</h1><p>{result['n_readers']} readers, {result['n_cases']} cases "
             f"({result['n_diseased']} positive), modalities {', '.join(e(m) for m in modalities)}.</p>"]
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.2 * len(modalities), 4.2))
    for ax, (i, m) in zip(np.atleast_1d(axes), enumerate(modalities)):
        for j, rd in enumerate(readers):
            fpr, tpr = roc.roc_curve(ratings[i, j], truth)
            ax.plot(fpr, tpr, marker=".", label=f"{rd} (AUC {result['readers'][rd][m]['auc']:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(title=f"ROC - {m}", xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="lower right")
    parts.append(f"<h2>ROC curves</h2><img alt='ROC curves' src='data:image/png;base64,{_png(fig)}'>")
    parts.append("<h2>AUC per reader</h2><table><tr><th>reader</th>"
                 + "".join(f"<th>{e(m)} AUC (95% CI)</th>" for m in modalities) + "<th>DeLong p</th></tr>")
    pvals = {d["reader"]: d["p"] for d in result["delong"]}
    for rd in readers:
        cells = "".join(f"<td>{result['readers'][rd][m]['auc']:.3f} ({result['readers'][rd][m]['auc_ci'][0]:.3f}-"
                        f"{result['readers'][rd][m]['auc_ci'][1]:.3f})</td>" for m in modalities)
        parts.append(f"<tr><td>{e(rd)}</td>{cells}<td>{pvals[rd]:.4f}</td></tr>")
    parts.append("</table>")
    if "or_jackknife" in result["mrmc"]:
        r = result["mrmc"]["or_jackknife"]["rrrc"]
        parts.append(f"<h2>MRMC (Obuchowski-Rockette, jackknife, random readers and cases)</h2><p>"
                     f"{e(mrmc.describe_rrrc(r, result['difference']))}.</p>")
    if result.get("kappa"):
        fig, axes = plt.subplots(1, len(modalities), figsize=(5.0 * len(modalities), 3.8))
        for ax, m in zip(np.atleast_1d(axes), modalities):
            k = np.eye(len(readers))
            for row in result["kappa"]:
                if row["modality"] == m:
                    a, b = readers.index(row["reader_a"]), readers.index(row["reader_b"])
                    k[a, b] = k[b, a] = row["linear"]["kappa"]
            im = ax.imshow(k, vmin=-1, vmax=1, cmap="RdYlGn")
            for a in range(len(readers)):
                for b in range(len(readers)):
                    ax.text(b, a, f"{k[a, b]:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(readers)), readers)
            ax.set_yticks(range(len(readers)), readers)
            ax.set_title(f"linear-weighted kappa - {m}")
            fig.colorbar(im, ax=ax, fraction=0.046)
        parts.append(f"<h2>Agreement between readers</h2><img alt='kappa heat map' "
                     f"src='data:image/png;base64,{_png(fig)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
