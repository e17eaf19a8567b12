"""The screening dashboard page (``cxrad app`` runs it with ``streamlit run``). Layout only: the work is in
``cxrad.frontends.app.logic``."""
from __future__ import annotations

import os
import re
from pathlib import Path

import streamlit as st

from cxrad.frontends.app import logic
from cxrad.frontends.app.launch import ENV_MAX_MB, ENV_MODEL
from cxrad.errors import BundleError
from cxrad.detectors import load_detector
from cxrad.bundles import available, default_name
from cxrad.detectors.results import csv_text
from cxrad.detectors.thresholds import operating_point

PATH_OPTION = "A bundle folder (path)"
MODE_LABELS = {"stored": "Model's stored threshold", "specificity": "Target specificity",
               "sensitivity": "Target sensitivity"}


def md(text) -> str:
    """Escape Markdown in text that comes from outside (file names, error reasons quoting a file's values, bundle
    paths): nothing in it can become a link, an image fetched by the browser, or HTML."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", str(text))  # a line break could start a new Markdown block
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=@'\"])", r"\\\1", text)


@st.cache_resource(max_entries=4, show_spinner="Loading model...")
def load_model(path: str, stamp: float):
    """One detector per bundle path and modification time, shared by sessions (it is only read)."""
    return load_detector(path)


def choose_model():
    shipped, default = available(), default_name()
    wanted = os.environ.get(ENV_MODEL, "")
    options = [*shipped, PATH_OPTION]
    start = wanted if wanted in shipped else (PATH_OPTION if wanted else (default or PATH_OPTION))
    st.sidebar.header("Model")
    choice = st.sidebar.selectbox("Model", options, index=options.index(start), label_visibility="collapsed",
                                  format_func=lambda n: f"{n} (shipped default)" if n == default else
                                  (f"{n} (shipped)" if n in shipped else n))
    if choice == PATH_OPTION:
        if not shipped:
            st.sidebar.caption("This cxrad ships no model yet: give a bundle folder made by `cxrad train`.")
        text = st.sidebar.text_input("Bundle folder", value="" if wanted in shipped else wanted,
                                     placeholder="runs/model")
        if not text.strip():
            st.info("Choose a model in the sidebar: type the folder of a model bundle (`cxrad train --out`).")
            st.stop()
        path = Path(text.strip()).expanduser()
    else:
        path = shipped[choice]
    meta = path / "model.json"  # replaced last when a bundle is written: its time stamps the version
    try:  # the path as typed: an error names it so, never the server's absolute path
        det = load_model(str(path), meta.stat().st_mtime if meta.exists() else 0.0)
    except (BundleError, OSError, ValueError) as exc:
        st.error(f"Cannot load the model: {md(exc)}")
        st.stop()
    with st.sidebar.expander("Model details"):
        st.write({"kind": det.kind, "input": f"{det.image_size} px, {det.resize}",
                  "trained on": f"{det.n_train_} normal images", "normal validation images": det.n_val_,
                  "stored thresholds": {k: round(v, 4) for k, v in logic.stored_thresholds(det).items()}})
    return f"{path.resolve()}:{meta.stat().st_mtime if meta.exists() else 0}", det


def choose_operating_point(det, model_key: str, max_bytes: int):
    st.sidebar.header("Operating point")
    mode = st.sidebar.radio("Operating point", tuple(MODE_LABELS), format_func=MODE_LABELS.get,
                            label_visibility="collapsed")
    try:
        if mode == "stored":
            stored = logic.stored_thresholds(det)
            rule = st.sidebar.selectbox("Stored threshold", list(stored),
                                        format_func=lambda k: f"{k} ({stored[k]:.4g})")
            return operating_point(det, "stored", rule=rule)
        if mode == "specificity":
            start = min(max(float(det.specificity), 0.5), 0.999)
            target = st.sidebar.number_input("Target specificity", 0.5, 0.999, start, 0.01, format="%.3f")
            st.sidebar.caption(f"Quantile of {len(det.normal_scores_)} held-out normal validation scores.")
            return operating_point(det, "specificity", target=target)
        target = st.sidebar.number_input("Target sensitivity", 0.5, 0.999, 0.9, 0.01, format="%.3f")
        calib = st.sidebar.file_uploader("Calibration images known to be abnormal (not the ones to screen)",
                                         type=list(logic.SUFFIXES), accept_multiple_files=True, key="calibration")
        files = [(f.name, f.getvalue()) for f in calib or []]
        scores, bad = logic.calibration_scores(score_cached(det, model_key, files, max_bytes, "scored_calibration"))
        for r in bad:
            st.sidebar.error(f"{md(r.name)}: {md(r.error)}")
        return operating_point(det, "sensitivity", target=target, abnormal_scores=scores)
    except ValueError as exc:
        st.sidebar.error(md(exc))
        st.warning(f"No operating point: {md(exc)}")
        return None


def score_cached(det, model_key: str, files: list[tuple[str, bytes]], max_bytes: int, slot: str = "scored"):
    """Score only the files not seen with this model in this session; keep just the current ones."""
    cache = st.session_state.setdefault(slot, {})
    keys = [(model_key, name, logic.file_key(data), max_bytes) for name, data in files]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    if todo:
        with st.spinner(f"Scoring {len(todo)} file(s)..."):
            fresh = logic.score_uploads(det, [files[i] for i in todo], max_bytes)
        cache.update({keys[i]: r for i, r in zip(todo, fresh)})
    results = [cache[k] for k in keys]
    st.session_state[slot] = dict(zip(keys, results))
    return results


def show_result(r: logic.FileResult, op, det) -> None:
    with st.container(border=True):
        if r.error:
            st.markdown(f"**{md(r.name)}**")
            st.error(f"Could not score {md(r.name)}: {md(r.error)}")
            return
        head, verdict = st.columns([2, 3])
        head.markdown(f"**{md(r.name)}**")
        if r.anomalous is None:
            verdict.markdown("Verdict: (no operating point)")
        elif r.anomalous:
            verdict.markdown(":red[**Verdict: ANOMALOUS**] (score above the threshold)")
        else:
            verdict.markdown(":green[**Verdict: NORMAL**] (score at or below the threshold)")
        cols = st.columns([1, 1, 1, 1])
        cols[0].image(r.image, caption="Uploaded image", width="stretch")
        if r.heatmap is not None:
            cols[1].image(r.heatmap, caption="Anomaly heatmap", width="stretch")
        else:
            cols[1].info("This model draws no anomaly map.")
        if r.reconstruction is not None:
            cols[2].image(r.reconstruction, caption=f"Reconstruction ({det.image_size} px)",
                          width="stretch")
        cols[3].metric("Anomaly score", f"{r.score:.4g}",
                       help="Higher is more anomalous; compare it with the threshold.")
        cols[3].metric("Percentile among normals", f"{r.percentile:.0f}",
                       help=f"Percent of the model's {len(det.normal_scores_)} held-out normal validation "
                       "images that score at or below this one.")
        if op is not None:
            cols[3].metric("Threshold", f"{op.threshold:.4g}", help=op.label)


def main() -> None:
    st.set_page_config(page_title="cxrad screening dashboard", layout="wide")
    st.title("cxrad: chest X-ray anomaly screening")
    st.warning(logic.RESEARCH_NOTE, icon=":material/warning:")
    max_mb = int(os.environ.get(ENV_MAX_MB, logic.DEFAULT_MAX_UPLOAD_MB))
    max_bytes = logic.max_upload_bytes(max_mb)
    model_key, det = choose_model()
    op = choose_operating_point(det, model_key, max_bytes)

    uploads = st.file_uploader(f"Chest X-rays: PNG, JPEG, TIFF, BMP or DICOM (.dcm), up to {max_mb} MB each, "
                               f"at most {logic.MAX_FILES} at a time", type=list(logic.SUFFIXES),
                               accept_multiple_files=True, max_upload_size=max_mb, key="uploads")
    if not uploads:
        st.caption("The model learnt what normal radiographs look like; the score says how far an image is from "
                   "them, the heatmap where the model disagrees most within the image (scaled per image), and "
                   "the reconstruction what the model expected to see.")
        return
    results = score_cached(det, model_key, [(f.name, f.getvalue()) for f in uploads], max_bytes)
    if op is not None:
        logic.apply_threshold(results, op.threshold)
    else:
        for r in results:
            r.anomalous = None
    if len(results) > 1:
        table = logic.results_table(results, det.components)
        verdicts = [r.verdict for r in results]
        n_bad = verdicts.count("error")
        st.subheader(f"Results: {verdicts.count('anomalous')} anomalous, {verdicts.count('normal')} normal"
                     + (f", {n_bad} unreadable" if n_bad else "")
                     + (f" (threshold {op.threshold:.4g}, {op.label})" if op is not None else ""))
        st.dataframe(table, hide_index=True, column_config={  # the CSV keeps full precision
            "score": st.column_config.NumberColumn(format="%.4f"),
            "percentile": st.column_config.NumberColumn(format="%.0f")})
        # cells neutralised against spreadsheet formulas (a file named =HYPERLINK(...) stays text)
        st.download_button("Download results (CSV)", csv_text(table), file_name="cxrad_results.csv",
                           mime="text/csv")
    for r in results:
        show_result(r, op, det)


main()
