"""The engine's layout: one concern per subpackage, imports only downward, and the architecture map true."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tipcore"
# From the bottom up: a module may import its own layer and the layers below it, never one above.
LAYERS = ("common", "federation", "signals", "defenses", "attacks", "pipeline", "studies", "explorer", "flower")
TOP = {"__init__.py", "__main__.py", "cli.py"}  # the public API and the command line sit above every layer


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def imports_of(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tipcore"):
            if node.module == "tipcore":
                found += [f"tipcore.{a.name}" for a in node.names if a.name != "__version__"]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tipcore")]
    return found


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("tipcore", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        out.append((name, path))
    return out


def test_every_module_lives_in_a_layer_except_the_api_and_the_cli():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP)
    assert loose == [], f"modules outside a layer: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


def test_imports_only_run_downward():
    upward = [f"{name} -> {target}" for name, path in modules() for target in imports_of(path)
              if layer_of(target) > layer_of(name)]
    assert upward == []


def test_every_layer_says_what_it_holds():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and len(doc) > 30, layer


def test_the_architecture_map_names_every_layer_and_only_files_that_exist():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for layer in LAYERS:
        assert f"tipcore/{layer}/" in text, layer
    for path in set(re.findall(r"tipcore/[\w/]+\.py", text)):
        assert (ROOT / path).exists(), path
