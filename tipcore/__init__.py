"""tipcore: one federated round, the TIP defense and its baselines, and the DLG-family attacks.

The engine never imports streamlit; the app in ``app/`` talks to it through this package's public API.
"""

__version__ = "0.1.0"
