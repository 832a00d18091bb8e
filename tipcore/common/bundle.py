"""Where the bundled files are: ``assets/`` (gallery, digits, checkpoints, showcase) and the explorer ``app/``.

The one lookup every module uses (no torch, no streamlit). ``ROOT`` is the folder that holds ``assets/`` and
``app/`` side by side:

- a checkout, or an editable install (``pip install -e .``): the repository root, the parent of ``tipcore/``;
- an installed wheel (``pip install .``): ``tipcore/_bundled/`` inside the installed package, where
  pyproject.toml's ``package-dir`` puts copies of the repository's ``assets/`` and ``app/``.

A checkout has no ``tipcore/_bundled/`` (builds write to ``build/``), so the two cases cannot be confused.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tipcore/
BUNDLED_DIR = PACKAGE_DIR / "_bundled"  # the name is also in pyproject.toml ([tool.setuptools] package-dir)


def bundle_root() -> Path:
    """The folder holding ``assets/`` and ``app/``: the installed bundle when there is one, else the checkout."""
    return BUNDLED_DIR if BUNDLED_DIR.is_dir() else PACKAGE_DIR.parent


ROOT = bundle_root()
ASSETS_DIR = ROOT / "assets"
APP_DIR = ROOT / "app"
APP_MAIN = APP_DIR / "main.py"  # what `streamlit run` starts (`python -m tipcore explorer` does it for you)
