"""The screening dashboard: ``cxrad app`` (Streamlit). ``logic`` holds everything testable without Streamlit."""
