"""``cxrad app``'s entry page: the screening page (upload films and score them here) and the worklist of a
screening node."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

here = Path(__file__).parent
page = st.navigation([st.Page(str(here / "streamlit_app.py"), title="Screen films", default=True),
                      st.Page(str(here / "worklist_page.py"), title="Worklist", url_path="worklist")])
page.run()
