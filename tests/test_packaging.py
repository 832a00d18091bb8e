"""`pip install .` works: the wheel carries the app and the assets, tipcore finds them through one lookup
(tipcore/common/bundle.py), and `tipcore explorer` starts the installed app."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from browser_support import free_port, stop_server, wait_until_healthy
from tipcore import cli
from tipcore.common import bundle

REPO = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
STARTUP_S = 300  # the server's first health answer on a loaded machine: a limit, not a measurement
RUN_S = 600


def test_every_engine_package_is_listed_for_the_wheel():
    """pyproject.toml lists the packages (find cannot add the mapped app/ and assets/): a new subpackage of
    tipcore/ must be listed too, or the wheel silently lacks it."""
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tipcore").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert "tipcore.attacks.matchers" in on_disk  # the scan works
    listed = set(SETUPTOOLS["packages"])
    assert on_disk <= listed, sorted(on_disk - listed)
    assert SETUPTOOLS["package-dir"] == {"tipcore._bundled.app": "app", "tipcore._bundled.assets": "assets"}
    assert bundle.BUNDLED_DIR.name == "_bundled"  # the lookup's name for the folder the mapping fills


def test_a_checkout_finds_its_own_assets_and_app_and_an_install_its_bundled_copy(tmp_path, monkeypatch):
    from tipcore.explorer import showcase
    from tipcore.federation import data, models

    if bundle.BUNDLED_DIR.is_dir():
        pytest.skip("these tests run against an installed wheel, not the checkout")
    assert bundle.ROOT == REPO and bundle.APP_MAIN == REPO / "app" / "main.py"
    assert data.ASSETS_DIR == REPO / "assets"
    assert models.CHECKPOINT_DIR == REPO / "assets" / "checkpoints"
    assert showcase.SHOWCASE_DIR == REPO / "assets" / "showcase"
    assert (bundle.APP_DIR / ".streamlit" / "config.toml").is_file()  # Streamlit reads it beside main.py
    installed = tmp_path / "_bundled"
    installed.mkdir()
    monkeypatch.setattr(bundle, "BUNDLED_DIR", installed)
    assert bundle.bundle_root() == installed


def test_streamlit_reads_the_apps_settings_from_any_working_folder(tmp_path):
    """app/.streamlit/config.toml sits beside main.py, where Streamlit looks for a script's own settings: they
    apply whatever the working folder (a project-level .streamlit/ would be read only from the repository root)."""
    probe = textwrap.dedent(f"""
        from streamlit import config
        config._main_script_path = {str(bundle.APP_MAIN)!r}
        config.get_config_options(force_reparse=True)
        print("SETTINGS", config.get_option("server.maxUploadSize"), config.get_option("client.toolbarMode"),
              config.get_option("server.fileWatcherType"))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env["HOME"] = str(tmp_path)  # no ~/.streamlit of the user's
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=RUN_S)
    assert "SETTINGS 20 viewer none" in proc.stdout, proc.stdout + proc.stderr


def test_explorer_runs_streamlit_on_the_apps_main_and_passes_options_on(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(cli, "_GIVEN_OMP_POLICY", None)  # main() set the batch policy, the user did not
    monkeypatch.setenv("OMP_WAIT_POLICY", cli.BATCH_OPENMP_POLICY)
    assert cli.main(["explorer", "--server.port", "8502", "--server.headless=true"]) == 0
    (path, argv, env), = calls
    assert path == sys.executable and argv[0] == sys.executable
    assert argv[argv.index("-m") + 1:] == ["streamlit", "run", str(bundle.APP_MAIN), "--server.port", "8502",
                                           "--server.headless=true"]
    assert "OMP_WAIT_POLICY" not in env  # app/main.py sets PASSIVE for the server and its workers
    monkeypatch.setattr(cli, "_GIVEN_OMP_POLICY", "ACTIVE")
    assert cli.main(["explorer"]) == 0
    assert calls[1][1][-1] == str(bundle.APP_MAIN) and calls[1][2]["OMP_WAIT_POLICY"] == "ACTIVE"
    # Other commands still refuse what they do not know.
    assert cli.main(["fl", "--server.port", "8502"]) == cli.EXIT_USAGE


def test_explorer_loads_no_torch_before_streamlit_takes_over(tmp_path):
    probe = textwrap.dedent("""
        import os, sys
        os.execve = lambda path, argv, env: print("TORCH", "torch" in sys.modules)
        from tipcore.cli import main
        main(["explorer"])
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=RUN_S)
    assert "TORCH False" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ a real install


def copy_sources(dst: Path) -> None:
    """The checkout's files as a clone with the working changes would have them (tracked and new, not ignored):
    the build runs on this copy because an in-tree build writes build/ and tipcore.egg-info into the tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode != 0 or not listed.stdout:
        pytest.skip("not a git checkout: the sources to build from are unknown")
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():  # a tracked file deleted in the working tree is not shipped
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)


def make_venv(where: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (torch, streamlit, pip, setuptools) but not its
    tipcore. `venv --system-site-packages` made from inside a venv would see the base interpreter's packages,
    not this venv's; a .pth line adds this interpreter's site-packages folders instead, and folders added by a
    .pth line get no .pth processing of their own, so the editable install's finder stays off."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith(("STREAMLIT_", "PIP_"))}
    env.update(HOME=str(home), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", TIP_THREADS="1",
               MPLCONFIGDIR=str(home / "mpl"), TORCH_HOME=str(home / "torch"),
               TIP_CACHE_DIR=str(home / "cache"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    return env


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=RUN_S, **kwargs)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_a_non_editable_install_runs_an_attack_and_the_explorer_from_another_folder(tmp_path):
    src, dist, elsewhere, home = (tmp_path / name for name in ("src", "dist", "elsewhere", "home"))
    for folder in (src, elsewhere, home):
        folder.mkdir()
    copy_sources(src)

    # The wheel, built offline with the setuptools already installed (no index, no build isolation).
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", dist, src], env=clean_env(home))
    wheel, = dist.glob("tipcore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_assets = {f"tipcore/_bundled/{p.relative_to(REPO).as_posix()}" for p in (REPO / "assets").rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts}
    assert "tipcore/_bundled/assets/samples/index.json" in shipped_assets and shipped_assets <= names
    app_files = {f"tipcore/_bundled/{p.relative_to(REPO).as_posix()}" for p in (REPO / "app").rglob("*")
                 if p.is_file() and p.suffix in (".py", ".toml") and "__pycache__" not in p.parts}
    assert {"tipcore/_bundled/app/main.py", "tipcore/_bundled/app/views/live.py",
            "tipcore/_bundled/app/.streamlit/config.toml"} <= app_files <= names
    assert not [n for n in names if n.split("/")[0] in ("tests", "docs", "bench", "scripts", "examples")]

    venv_dir = tmp_path / "venv"
    python = make_venv(venv_dir)
    env = clean_env(home)
    # --ignore-installed: this interpreter's own (editable) tipcore is visible through the .pth line; the
    # wheel goes into the new venv beside it, nothing is uninstalled.
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", wheel],
        env=env, cwd=elsewhere)

    # The venv's tipcore is the one imported, and it finds its bundled copy, not the checkout.
    where = run([python, "-c", "import tipcore, tipcore.common.bundle as b; print(tipcore.__file__); print(b.ROOT)"],
                env=env, cwd=elsewhere).stdout.split()
    venv_real = venv_dir.resolve()
    assert Path(where[0]).resolve().is_relative_to(venv_real), where
    assert Path(where[1]).resolve() == Path(where[0]).resolve().parent / "_bundled", where

    # One tiny attack on a gallery image with the bundled digits weights and TIP (Grad-CAM), from elsewhere.
    run([python, "-m", "tipcore", "attack", "--model", "lenet", "--weights", "digits", "--image-id", "cifar10-00",
         "--defense", "tip", "--attack", "idlg", "--iters", "2", "--seed", "0", "--quiet", "--out", "run"],
        env=env, cwd=elsewhere)
    result = json.loads((elsewhere / "run" / "result.json").read_text())
    assert "cifar10-00" in json.dumps(result)
    assert list((elsewhere / "run").glob("*.png"))

    # The installed app draws its first page (the punchline, from the bundled showcase) without an exception.
    probe = ("from streamlit.testing.v1 import AppTest; from tipcore.common import bundle; "
             "at = AppTest.from_file(str(bundle.APP_MAIN), default_timeout=300).run(); "
             "print('EXCEPTIONS', [str(getattr(e, 'message', e)) for e in at.exception]); "
             "print('TEXT', ' '.join(m.value for m in at.markdown))")
    page = run([python, "-c", probe], env=env, cwd=elsewhere).stdout
    assert "EXCEPTIONS []" in page and "No defense" in page, page[-3000:]

    # The explorer, through the console script, until its health endpoint answers.
    script = venv_dir / ("Scripts" if os.name == "nt" else "bin") / "tipcore"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "explorer.log").open("w+b")
    proc = subprocess.Popen([str(script), "explorer", "--server.headless", "true", "--server.address",
                             "127.0.0.1", "--server.port", str(port)], cwd=elsewhere, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, url, log, STARTUP_S, what="the explorer")
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        if cmdline.exists():  # the console script became the server (exec), serving the installed app
            argv = cmdline.read_bytes().decode().split("\0")
            main = Path(argv[argv.index("run") + 1]).resolve()
            assert main.is_relative_to(venv_real) and main.parts[-4:] == ("tipcore", "_bundled", "app", "main.py")
    finally:
        stop_server(proc, 60)
        log.close()
