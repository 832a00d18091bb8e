"""The engine side of the app (no streamlit): previews, the showcase assets, the TIP grid, worker processes and the result cache."""
