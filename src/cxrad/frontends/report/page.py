"""One self-contained HTML page: figures as base64 data URIs, tables as HTML, inline CSS, no scripts, fonts
or links to fetch, so the file opens offline and can be mailed as it is."""
from __future__ import annotations

import base64
import datetime as _dt
import html as _html
from pathlib import Path

import numpy as np
import pandas as pd

CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 24px 40px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; border-bottom: 2px solid #c9ced8; padding-bottom: 4px; margin-top: 30px; }
.sub { color: #58606e; font-size: 13px; }
.warn { background: #fff4d6; border: 1px solid #e0b84c; border-radius: 6px; padding: 10px 14px; margin: 12px 0;
        font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { background: #fff; border: 1px solid #d6dae2; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 22px; }
.card span { color: #58606e; font-size: 12px; }
figure { background: #fff; border: 1px solid #d6dae2; border-radius: 6px; margin: 10px 0; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 13px; color: #414857; margin-top: 6px; }
.grid { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 10px; }
figure.narrow { width: 580px; }
.tables { overflow-x: auto; }
table.data { border-collapse: collapse; background: #fff; font-size: 13px; margin: 8px 0 14px; }
table.data th, table.data td { border: 1px solid #d6dae2; padding: 4px 8px; text-align: right; white-space: nowrap; }
table.data th { background: #e9ecf2; }
table.data td:first-child, table.data th:first-child { text-align: left; }
ul.notes li { margin: 3px 0; }
code { background: #e9ecf2; padding: 1px 4px; border-radius: 3px; font-size: 12px; }
"""

CAPTIONS = {
    "loss_curves": "Training and validation loss per epoch, as recorded by the detector during training.",
    "examples_normal_most": "Normal images the detector found most anomalous (false-alarm candidates).",
    "examples_normal_least": "Normal images the detector found least anomalous.",
    "examples_abnormal_most": "Abnormal images the detector found most anomalous.",
    "examples_abnormal_least": "Abnormal images the detector found least anomalous (missed-finding candidates).",
    "score_densities": "Score densities per class (histogram and Gaussian KDE) with every stored threshold; the "
                       "active one is the solid black line. Component panels show each score component's "
                       "densities.",
    "roc_pr": "ROC and precision-recall curves; markers are the operating points of the stored thresholds "
              "(star: active).",
    "tsne": "t-SNE map of the detector's features, coloured by class; marker shape by source.",
    "confusion_matrix": "Verdicts at the active threshold against the true class.",
}
#: what the captions and table notes add for the seed CAE, whose write-up these figures and tables follow
CAE_CAPTIONS = {
    "score_densities": " Their lines are the component thresholds each score threshold implies (reconstruction "
                       "error above, log-density below).",
    "tsne": " The features are the CAE's latent vectors.",
}
TABLE_TITLES = {
    "recall_auroc": ("Recall and AUROC at every stored threshold",
                     "Recall (sensitivity), specificity, precision and F1 at each stored threshold, with the AUROC "
                     "and its bootstrap 95% CI."),
    "class_means": ("Mean score components per class",
                    "Mean (and sd) of the score and of each of the detector's score components for normal and "
                    "abnormal images."),
    "by_source": ("Per source", "Each source's abnormal images against all normal images."),
    "by_finding": ("Per finding", "Each finding's images against all normal images."),
}


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def table_html(df: pd.DataFrame) -> str:
    body = df.copy()
    for col in body.columns:
        body[col] = body[col].map(_fmt)
    return body.to_html(index=False, classes="data", border=0, escape=True)


def captions(det) -> dict[str, str]:
    """Each figure's caption, with what is particular to the detector (only the seed CAE's are the write-up's)."""
    extra = CAE_CAPTIONS if det.kind == "cae" else {}
    return {name: text + extra.get(name, "") for name, text in CAPTIONS.items()}


def table_titles(det) -> dict[str, tuple[str, str]]:
    """Each table's heading and note; the seed CAE's two tables are its write-up's and say so."""
    titles = dict(TABLE_TITLES)
    if det.kind == "cae":
        titles["recall_auroc"] = (titles["recall_auroc"][0], "The seed write-up's table: " + titles["recall_auroc"][1])
        titles["class_means"] = (titles["class_means"][0], "The seed write-up's table: mean (and sd) reconstruction "
                                 "error and latent KDE log-density for normal and abnormal images.")
    return titles


def _figure(name: str, figures: dict, css: str = "", caption: str = "") -> str:
    if name not in figures:
        return ""
    return (f'<figure id="fig-{name}" class="{css}"><img alt="{name}" src="{data_uri(figures[name])}">'
            f"<figcaption>{_html.escape(caption or CAPTIONS.get(name, ''))} <code>{name}.png</code></figcaption>"
            "</figure>")


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{_html.escape(value)}</b><span>{_html.escape(label)}</span></div>'


def render(det, result: dict, tables: dict, figures: dict, notes: list[str], n_examples: int = 4,
           title: str | None = None, command: str | None = None) -> str:
    from cxrad.version import __version__
    e = _html.escape
    lo, hi = result["auroc_ci"]
    title = title or f"cxrad report: {det.kind} detector"
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    params = ", ".join(f"{k}={v!r}" for k, v in det.learned_params().items())
    cards = "".join([
        _card(f"{result['auroc']:.3f}", f"AUROC (95% CI {lo:.3f}-{hi:.3f})"),
        _card(f"{result['auprc']:.3f}", "AUPRC"),
        _card(f"{result['sensitivity']:.3f}", "recall / sensitivity"),
        _card(f"{result['specificity']:.3f}", "specificity"),
        _card(f"{result['precision']:.3f}", "precision"),
        _card(f"{result['f1']:.3f}", "F1"),
        _card(f"{result['n_normal']} / {result['n_abnormal']}", "normal / abnormal images"),
    ])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{e(title)}</h1>",
        f'<div class="sub">cxrad {e(__version__)} &middot; generated {e(when)} &middot; model <code>{e(det.kind)}'
        f"</code> ({e(params)}) &middot; trained on {e(str(getattr(det, 'n_train_', '?')))} normal images, "
        f"validated on {e(str(getattr(det, 'n_val_', '?')))}</div>",
        '<div class="warn"><b>Research tool, not a diagnostic device.</b> cxrad flags chest X-rays that differ '
        "from the normal images it learned from. Its scores are not a diagnosis and must not be used for "
        "clinical decisions.</div>",
        "<h2>Summary</h2>", f'<div class="cards">{cards}</div>',
        f"<p>Active threshold: <b>{e(result['threshold_rule'])}</b> = {result['threshold']:.4g} "
        "(an image is flagged when its score is above it)."
        + (f" Unreadable images: {result['n_errors']}." if result.get("n_errors") else "") + "</p>",
    ]
    if result.get("components"):
        parts.append("<p>Component AUROC: " + ", ".join(f"{e(k)} {v:.3f}" for k, v in result["components"].items())
                     + "</p>")
    texts, titles = captions(det), table_titles(det)

    def figure(name: str, css: str = "") -> str:
        return _figure(name, figures, css, texts.get(name, ""))
    parts += ["<h2>Training</h2>", figure("loss_curves")]
    parts += [f"<h2>Examples</h2><p>The {n_examples} most and least anomalous normal and abnormal images: input, "
              "reconstruction and residual heatmap (or the anomaly map for detectors that do not reconstruct), "
              "heatmaps on one common scale.</p>", '<div class="grid">']
    parts += [figure(f"examples_{c}_{end}") for c in ("normal", "abnormal") for end in ("most", "least")]
    parts += ["</div>", "<h2>Scores and thresholds</h2>", figure("score_densities"),
              figure("roc_pr"), "<h2>Features</h2>", figure("tsne"),
              "<h2>Verdicts</h2>", figure("confusion_matrix", "narrow"), '<div class="tables">']
    for name in ("recall_auroc", "class_means"):
        if name in tables and len(tables[name]):
            head, text = titles[name]
            parts += [f'<h3 id="table-{name}">{e(head)}</h3><p class="sub">{e(text)}</p>', table_html(tables[name])]
    parts.append('</div><h2>Breakdown</h2><div class="tables">')
    for name in ("by_source", "by_finding"):
        if name in tables and len(tables[name]):
            head, text = titles[name]
            parts += [f'<h3 id="table-{name}">{e(head)}</h3><p class="sub">{e(text)}</p>', table_html(tables[name])]
    parts.append("</div>")
    if notes:
        parts += ["<h2>Notes</h2>", '<ul class="notes">'] + [f"<li>{e(n)}</li>" for n in notes] + ["</ul>"]
    if command:
        parts.append(f'<p class="sub">Made with <code>{e(command)}</code></p>')
    parts.append('<p class="sub">Beside this page: every figure as PNG, scores.csv, metrics.json, the tables as CSV.'
                 "</p></main></body></html>")
    return "\n".join(p for p in parts if p)
