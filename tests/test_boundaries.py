"""Layer boundaries by AST: tipcore never imports streamlit; app/ never imports torch, torchvision, pytorch_grad_cam."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE_FORBIDDEN = {"streamlit"}
APP_FORBIDDEN = {"torch", "torchvision", "pytorch_grad_cam"}
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def imported_modules(source: str, filename: str = "<string>") -> set[str]:
    """Absolute module names a file imports: import statements anywhere (functions, try blocks included)
    and importlib.import_module / __import__ calls with a literal name. Relative imports stay in-package."""
    tree = ast.parse(source, filename=filename)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in DYNAMIC_IMPORTERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def violations(path: Path, forbidden: set[str]) -> list[str]:
    mods = imported_modules(path.read_text(encoding="utf-8"), str(path))
    return sorted(m for m in mods if m.split(".")[0] in forbidden)


def python_files(folder: str) -> list[Path]:
    base = ROOT / folder
    return sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts) if base.is_dir() else []


def test_the_import_walker_sees_every_form():
    src = (
        "import os\nimport streamlit as st\nfrom torch import nn\nfrom . import sibling\n"
        "def f():\n    import torchvision.models\n"
        "try:\n    from pytorch_grad_cam.utils import x\nexcept ImportError:\n    pass\n"
        "import importlib\nm = importlib.import_module('torch.fft')\nn = __import__('streamlit')\n"
    )
    mods = imported_modules(src)
    tops = {m.split(".")[0] for m in mods}
    assert {"os", "streamlit", "torch", "torchvision", "pytorch_grad_cam", "importlib"} <= tops
    assert "sibling" not in tops  # relative imports are in-package
    assert not {m.split(".")[0] for m in imported_modules("from tipcore import fl\nimport numpy")} & APP_FORBIDDEN


def test_engine_never_imports_streamlit():
    files = python_files("tipcore")
    names = {str(p.relative_to(ROOT)) for p in files}
    assert len(files) >= 20, f"expected the whole engine, found {len(files)} files"
    assert {"tipcore/federation/fl.py", "tipcore/defenses/tip.py", "tipcore/attacks/base.py", "tipcore/pipeline/experiment.py"} <= names
    bad = {str(p.relative_to(ROOT)): v for p in files if (v := violations(p, ENGINE_FORBIDDEN))}
    assert not bad, f"tipcore must not import streamlit: {bad}"


def test_app_never_imports_torch_or_grad_cam():
    files = python_files("app")
    if not files:
        pytest.skip("app/ has no Python files yet")
    bad = {str(p.relative_to(ROOT)): v for p in files if (v := violations(p, APP_FORBIDDEN))}
    assert not bad, f"app/ must reach torch only through tipcore: {bad}"


def test_every_checked_file_parses():
    for path in python_files("tipcore") + python_files("app"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
