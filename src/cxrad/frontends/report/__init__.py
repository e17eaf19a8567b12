"""``cxrad report``: one command for every figure of the write-ups, as PNG files and one self-contained
HTML page (figures embedded, opens offline).

    from cxrad.frontends.report import build_report
    rep = build_report("runs/model", manifest_or_imageset, "runs/report")
    rep.html  # runs/report/report.html

Metrics and tables come from :func:`cxrad.evaluation.evaluate_model` (which also writes the scores,
metrics.json and the breakdown CSVs beside the report); this module only picks examples, runs t-SNE and draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.data import ImageSet, deduplicate, load_images, open_dataset
from cxrad.detectors.results import csv_text, table_rows
from cxrad.evaluation import evaluate_model, threshold_table
from cxrad.files import atomic_write_text
from cxrad.detectors import load_detector

FIGURES = ("loss_curves", "examples_normal_most", "examples_normal_least", "examples_abnormal_most",
           "examples_abnormal_least", "score_densities", "roc_pr", "tsne", "confusion_matrix")


@dataclass
class Report:
    html: Path
    figures: dict[str, Path]  # figure name -> PNG, for the figures that could be drawn
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    metrics: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def _load_data(data, det, cache_dir, progress):
    if isinstance(data, ImageSet):
        if data.images.shape[1:] != (det.image_size, det.image_size):
            raise ValueError(f"the images are {data.images.shape[1:]} but the model expects "
                             f"{det.image_size}x{det.image_size}; load them with the model's preprocessing")
        return data
    if isinstance(data, (str, Path)):
        data = deduplicate(open_dataset(data))[0]
    return load_images(data, det.prep, cache_dir=cache_dir, progress=progress)


def _pick_examples(ok: pd.DataFrame, label: int, k: int) -> dict[str, pd.DataFrame]:
    rows = ok[ok["label"] == label].sort_values("score", kind="stable")
    return {"most": rows.iloc[::-1].head(k), "least": rows.head(k)}


def _example_title(row) -> str:
    name = Path(str(row["path"])).name
    name = name if len(name) <= 22 else name[:10] + "..." + name[-9:]
    finding = str(row.get("finding", "") or "")
    return f"{name}\n{finding[:20]}\nscore {row['score']:.3g}"


def _maps(det, images: np.ndarray):
    """Reconstructions and anomaly maps (one forward pass), or None for what the detector cannot give."""
    out = det.outputs(images)
    recon, maps = out.get("recon"), out.get("map")
    if maps is None and recon is not None:
        maps = (np.asarray(recon, np.float32) - images.astype(np.float32) / 255.0) ** 2
    return recon, maps


def _tsne_sample(ok: pd.DataFrame, n_max: int, seed: int) -> np.ndarray:
    """Row labels of at most ``n_max`` images, each class kept in proportion."""
    if len(ok) <= n_max:
        return ok.index.to_numpy()
    rng = np.random.default_rng(seed)
    keep = []
    for _, group in ok.groupby("label"):
        n = max(1, int(round(n_max * len(group) / len(ok))))
        keep.append(rng.choice(group.index.to_numpy(), min(n, len(group)), replace=False))
    return np.sort(np.concatenate(keep))


def build_report(model, data, out_dir, *, examples: int = 4, max_tsne: int = 1000, seed: int = 0,
                 cache_dir=None, progress: bool = False, device: str = "auto", title: str | None = None,
                 command: str | None = None) -> Report:
    """Evaluate ``model`` (a fitted detector, a bundle folder or a shipped model name) on labelled ``data``
    (an ImageSet at the model's size, a manifest DataFrame, or a dataset path) and write ``report.html``,
    every figure as PNG, and evaluate's scores/metrics/table files under ``out_dir``."""
    from cxrad.frontends.report import figures as F
    from cxrad.frontends.report.page import render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    det = load_detector(model, device)
    images = _load_data(data, det, cache_dir, progress)
    if len(images) == 0:
        raise ValueError("no readable images to report on")
    result = evaluate_model(det, images, out, cache_dir=cache_dir, progress=progress, pictures=("features",))
    table = result.pop("scores")
    features = result.pop("pictures").get("features")
    position = np.full(len(table), -1)  # each row's position in images.images (-1: unreadable)
    position[table_rows(images)] = np.arange(len(images))
    table.index = position
    ok = table[table["error"] == ""]
    y, s = ok["label"].to_numpy(int), ok["score"].to_numpy(float)
    notes: list[str] = []
    figs: dict[str, Path] = {}
    has_both = (y == 0).any() and (y == 1).any()

    tables = dict(result["tables"])
    tables["recall_auroc"] = threshold_table(det, y, s, result)
    atomic_write_text(out / "recall_auroc.csv", csv_text(tables["recall_auroc"]))

    # training history
    history = getattr(det, "history_", None) or {}
    if any(len(v) for v in history.values() if isinstance(v, (list, tuple))):
        figs["loss_curves"] = F.loss_curves(history, out / "loss_curves.png")
    else:
        notes.append("this model recorded no training history, so there are no loss curves")

    # examples: most and least anomalous of each class, with one heatmap scale for all of them
    picks = {(cls, end): rows for cls in (0, 1) for end, rows in _pick_examples(ok, cls, examples).items()}
    shown = {key: np.asarray(images.images[rows.index.to_numpy()]) for key, rows in picks.items() if len(rows)}
    made = {key: _maps(det, imgs) for key, imgs in shown.items()}
    all_maps = [m for _, m in made.values() if m is not None]
    map_max = float(np.percentile(np.concatenate([np.ravel(m) for m in all_maps]), 99.5)) if all_maps else None
    if made and all(r is None for r, _ in made.values()):
        notes.append(f"the {det.kind} detector has no reconstruction; the examples show its anomaly map"
                     if all_maps else f"the {det.kind} detector gives neither reconstructions nor anomaly maps")
    for (cls, end), rows in picks.items():
        name = f"examples_{F.CLASS_NAMES[cls]}_{end}"
        if not len(rows):
            notes.append(f"no {F.CLASS_NAMES[cls]} images, so no {end}-anomalous {F.CLASS_NAMES[cls]} examples")
            continue
        recon, maps = made[(cls, end)]
        figs[name] = F.examples(shown[(cls, end)], [_example_title(r) for _, r in rows.iterrows()],
                                out / f"{name}.png", reconstructions=recon, maps=maps, map_max=map_max,
                                title=f"{end.capitalize()} anomalous {F.CLASS_NAMES[cls]} images")

    # score densities with every threshold: the score's own, and the components' (e.g. the CAE's pair)
    columns = {"score": ok["score"].to_numpy(float)}
    columns.update({c: ok[c].to_numpy(float) for c in det.components if c in ok})
    lines = {"score": dict(det.thresholds_)}
    if hasattr(det, "component_thresholds"):  # e.g. the CAE's error-above / density-below pair per threshold
        for rule, t in det.thresholds_.items():
            for key, value in det.component_thresholds(t).items():
                comp = next((c for c in det.components if key.startswith(c)), None)
                if comp:
                    lines.setdefault(comp, {})[rule] = float(value)
    figs["score_densities"] = F.score_densities(y, columns, lines, out / "score_densities.png",
                                                active=det.threshold_rule_)

    if has_both:
        points = {r["threshold_rule"]: {"sensitivity": r["recall"], "specificity": r["specificity"],
                                        "precision": r["precision"]} for _, r in tables["recall_auroc"].iterrows()}
        figs["roc_pr"] = F.roc_pr(y, s, result["auroc"], result["auroc_ci"], result["auprc"], out / "roc_pr.png",
                                  points=points, active=det.threshold_rule_)
    else:
        notes.append("ROC and precision-recall curves need both normal and abnormal images")

    # t-SNE of the detector's features
    idx = _tsne_sample(ok, max_tsne, seed) if max_tsne > 0 else np.zeros(0, int)
    if max_tsne <= 0:
        notes.append("t-SNE map skipped (--max-tsne 0)")
    elif len(idx) < 5:
        notes.append(f"t-SNE map skipped: only {len(idx)} images")
    else:
        feats = None if features is None else features[idx]
        if feats is None:
            notes.append(f"the {det.kind} detector exposes no features, so there is no t-SNE map")
        else:
            sub = ok.loc[idx]
            groups = sub["source"].astype(str).to_numpy() if "source" in sub else None
            figs["tsne"] = F.tsne_map(feats, sub["label"].to_numpy(int), out / "tsne.png", groups=groups,
                                      seed=seed, title=f"t-SNE of {det.kind} features ({len(idx)} images)")

    figs["confusion_matrix"] = F.confusion_matrix(
        result["confusion_matrix"], out / "confusion_matrix.png",
        title=f"At the {det.threshold_rule_} threshold ({result['threshold']:.3g})")

    if result.get("n_errors"):
        notes.append(f"{result['n_errors']} image(s) could not be read; see scores.csv (error column)")
    html = render(det=det, result=result, tables=tables, figures=figs, notes=notes, n_examples=examples,
                  title=title, command=command)
    atomic_write_text(out / "report.html", html)
    return Report(out / "report.html", figs, notes, result, tables)
