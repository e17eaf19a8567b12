"""The "Worklist" page of ``cxrad app``: a screening node's films by score, with the heatmap of the film
chosen. Layout only: the work is in ``cxrad.frontends.app.worklist``."""
from __future__ import annotations

import streamlit as st

from cxrad.errors import UserError
from cxrad.frontends.app import logic, worklist

st.title("Worklist")
st.warning(logic.RESEARCH_NOTE, icon=":material/warning:")
url = worklist.node_database_url()
if url is None:
    st.info("No screening node is connected: start the dashboard with `cxrad app --node-state STATE` (the "
            "folder of `cxrad serve --state`) or `--node-db URL`.")
    st.stop()
try:
    db = worklist.open_database(url)
except (UserError, OSError, ValueError) as exc:
    st.error(f"Cannot read the node's database: {exc}")
    st.stop()
except Exception as exc:  # a database that is not there or not reachable: one line, no traceback
    st.error(f"Cannot read the node's database ({type(exc).__name__}).")
    st.stop()

st.sidebar.header("Filters")
choice = st.sidebar.radio("Films", list(worklist.VERDICTS), key="verdict")
titles = worklist.source_titles(db)
source = st.sidebar.selectbox("Sent by (calling AE title)", ["any", *titles], key="source")
use_dates = st.sidebar.checkbox("Only films received between", key="use_dates")
since = until = None
if use_dates:
    since = st.sidebar.date_input("from (UTC)", key="since")
    until = st.sidebar.date_input("to (UTC)", key="until")
page_size = st.sidebar.selectbox("Films per page", [25, 50, 100, 250], index=2, key="page_size")
total, _ = worklist.worklist_table(db, worklist.VERDICTS[choice], since, until,
                                   None if source == "any" else source, limit=1)
pages = max(1, -(-total // page_size))
page = st.sidebar.number_input("Page", 1, pages, 1, key="page") if pages > 1 else 1
total, table = worklist.worklist_table(db, worklist.VERDICTS[choice], since, until,
                                       None if source == "any" else source, limit=page_size,
                                       offset=(page - 1) * page_size)
st.subheader(f"{total} film(s), highest score first" + (f" (page {page} of {pages})" if pages > 1 else ""))
if not total:
    st.caption("Nothing yet: films the node receives appear here once scored.")
    st.stop()
event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="films",
                     column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                                    "percentile": st.column_config.NumberColumn(format="%.0f"),
                                    "received_at": st.column_config.DatetimeColumn("received (UTC)")})
rows = event.selection.rows if event is not None else []
row = table.iloc[rows[0] if rows else 0]
left, right = st.columns([1, 2])
png = worklist.heatmap(db, row["id"])
if png is not None:
    left.image(png, caption="Anomaly heatmap over the model's input", width="stretch")
else:
    left.info("No heatmap for this film" + (" (it could not be scored)." if row["verdict"] == "error" else "."))
right.markdown(f"**Verdict:** {row['verdict']}")
if row["verdict"] != "error":
    right.metric("Anomaly score", f"{row['score']:.4g}")
    right.metric("Percentile among normals", f"{row['percentile']:.0f}")
else:
    right.error(f"Not scored: {row['error']}")
right.caption(f"Film {row['id']} · SOP Instance UID {row['sop_instance_uid'] or '(an image upload)'}")
