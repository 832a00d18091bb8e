"""The Streamlit explorer for tipcore: `streamlit run app/main.py`.

The app never imports torch: it calls tipcore's public API, which hands back numpy arrays and dataclasses.
"""
