"""The package people install: the wheel built from the tracked files carries the views and renders one.

The wheel is built (`python -m build`: sdist, then the wheel from the sdist) from a copy of `git ls-files`,
so an untracked prebuilt bundle in the working tree cannot leak in; the build itself runs npm (hatch_build.py).
It is installed in a fresh virtualenv (torch first from the CPU wheel, as tools/install_torch.py does, then
the wheel with its dependencies and JupyterLab), outside any source tree, and a JupyterLab from that venv
shows a LensView of a tiny model to Chromium. Timings go to tests/artifacts/wheel-timings.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .browser.conftest import ARTIFACTS, make_notebook, start_server

pytestmark = [pytest.mark.wheel, pytest.mark.browser]

KERNEL_IDLE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === "connected" && k.status === "idle";
}"""
ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The Eiffel Tower is located in the city of"
TIMINGS: dict[str, float] = {}


def _version(root: Path) -> str:
    text = (root / "workbench" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on the path or this venv active."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(extra)
    return env


def _run(cmd: list[str], what: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    TIMINGS[what] = round(time.monotonic() - t0, 1)
    assert proc.returncode == 0, (
        f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def _copy_tracked(dest: Path) -> Path:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (the wheel test copies the tracked files)")
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # tracked but deleted in the working tree: not part of the copy
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    assert not (dest / "workbench" / "static").exists(), "the bundle is git-ignored and must not be tracked"
    return dest


def _make_venv(root: Path, src: Path) -> None:
    """A fresh virtualenv (no system site-packages) with torch's CPU build from the machine's wheel cache."""
    t0 = time.monotonic()
    _run([sys.executable, "-m", "venv", str(root)], "venv", 120)
    py, env = str(root / "bin" / "python"), _venv_env(root)
    # torch first, as tools/install_torch.py does (its CPU version, so pip never pulls a CUDA build), but
    # without byte-compiling torch's files at install time (a throwaway venv; ~20 s on a busy machine)
    cpu = re.search(
        r'^CPU_VERSION = "([^"]+)"', (src / "tools" / "install_torch.py").read_text(), re.M
    ).group(1)
    cmd = [py, "-m", "pip", "install", "-q", "--no-compile", f"torch=={cpu}+cpu"]
    if shutil.which("nvidia-smi") or subprocess.run(cmd, env=env, cwd=root, timeout=600).returncode != 0:
        _run([py, str(src / "tools" / "install_torch.py")], "install torch", 600, env=env, cwd=root)
    TIMINGS["venv + torch (during the build)"] = round(time.monotonic() - t0, 1)


def _venv_env(root: Path) -> dict[str, str]:
    return _clean_env(VIRTUAL_ENV=str(root), PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tracked files copied into a temp dir, and a fresh venv being made meanwhile (in a thread)."""
    work = tmp_path_factory.mktemp("wheel")
    src = _copy_tracked(work / "src")
    with ThreadPoolExecutor(1) as pool:
        making = pool.submit(_make_venv, work / "venv", src)
        yield {"work": work, "src": src, "venv": making}
        making.cancel()


@pytest.fixture(scope="module")
def built(work) -> dict[str, Path]:
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to build the wheel (the build runs npm ci && npm run build)")
    pytest.importorskip("build")
    dist = work["work"] / "dist"
    _run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(work["src"])],
        "build sdist+wheel",
        600,
        env=_clean_env(),
    )
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    return {**work, "wheel": wheel, "sdist": sdist}


def test_wheel_and_sdist_carry_the_bundle(built):
    version = _version(ROOT)
    assert built["wheel"].name == f"interp_workbench-{version}-py3-none-any.whl"
    with zipfile.ZipFile(built["wheel"]) as z:
        names = set(z.namelist())
        assert "workbench/static/widget.js" in names
        assert z.getinfo("workbench/static/widget.js").file_size > 10_000
        # the prebuilt JupyterLab extension, installed where JupyterLab finds it (no build step for users)
        ext = (
            f"interp_workbench-{version}.data/data/share/jupyter/labextensions/interp-workbench/package.json"
        )
        assert ext in names, sorted(n for n in names if "labextensions" in n)[:5]
        meta = z.read(f"interp_workbench-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in meta  # the version has one source: workbench/__init__.py
    assert "workbench/__init__.py" in names and "workbench/widgets/lens.py" in names
    assert "workbench/data/ioi.json" in names and "workbench/data/facts.json" in names  # wb.datasets
    tasks = (
        "antonyms",
        "country_capital",
        "uppercase",
        "past_tense",
        "english_french",
        "singular_plural",
        "capitalize",
    )
    assert all(f"workbench/data/tasks/{t}.json" in names for t in tasks)  # wb.datasets.task
    assert not [n for n in names if n.startswith(("tests/", "js/", "notebooks/"))]

    with tarfile.open(built["sdist"]) as t:
        top = f"interp_workbench-{version}/"
        snames = {n.removeprefix(top) for n in t.getnames()}
    # the sdist builds the wheel again: JS sources, lock file, the hook, and the prebuilt bundle
    for need in (
        "js/package.json",
        "js/package-lock.json",
        "js/build.mjs",
        "js/src/index.ts",
        "hatch_build.py",
        "labextension/package.json",
        "labextension/src/index.ts",
    ):
        assert need in snames, need
    assert "workbench/static/widget.js" in snames
    assert not [n for n in snames if "node_modules" in n]


def test_build_without_npm_fails_clearly(tmp_path):
    """No npm and no prebuilt bundle: the build stops with a message saying what to install."""
    pytest.importorskip("hatchling")
    src = _copy_tracked(tmp_path / "src")
    bindir = Path(sys.executable).parent  # python and its tools, but no node or npm
    env = _clean_env(PATH=str(bindir))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "needs Node.js 18+ and npm" in out and "pip install interp-workbench" in out, out[-3000:]


@pytest.fixture(scope="module")
def venv(built) -> dict[str, Path]:
    """The fresh venv with the wheel (and its dependencies) and JupyterLab installed; no source tree."""
    built["venv"].result()
    root = built["work"] / "venv"
    py, env = root / "bin" / "python", _venv_env(root)
    _run(
        [str(py), "-m", "pip", "install", "-q", "--no-compile", str(built["wheel"]), "jupyterlab>=4"],
        "install wheel + jupyterlab",
        900,
        env=env,
        cwd=root,
    )
    return {"root": root, "python": py, "env": env}


def test_installed_wheel_renders_a_view(built, venv, browser_context):
    py, env, vroot = venv["python"], venv["env"], venv["root"]
    probe = (
        "import json, sys, workbench, importlib.metadata as md; from pathlib import Path; "
        "p = Path(workbench.__file__).resolve().parent; "
        "print(json.dumps({'pkg': str(p), 'bundle': (p / 'static' / 'widget.js').is_file(), "
        "'version': workbench.__version__, 'dist': md.version('interp-workbench'), 'path': sys.path}))"
    )
    info = json.loads(_run([str(py), "-c", probe], "import", 120, env=env, cwd=vroot).stdout)
    pkg = Path(info["pkg"])
    assert pkg.is_relative_to(vroot) and "site-packages" in pkg.parts, pkg
    assert not pkg.is_relative_to(ROOT) and not pkg.is_relative_to(built["src"]), pkg
    assert not any(p and Path(p).resolve() in (ROOT, built["src"]) for p in info["path"]), info["path"]
    assert info["bundle"], f"no workbench/static/widget.js in the installed package at {pkg}"
    assert info["version"] == info["dist"] == _version(ROOT)

    notebook = make_notebook(
        [
            "import json, pathlib, sys\n"
            "import workbench as wb\n"
            "from workbench.testing import tiny_model\n"
            "_ = pathlib.Path('kernel.json').write_text(json.dumps({'file': wb.__file__, 'exe': sys.executable}))\n"
            'model = tiny_model("llama")',
            f"lv = wb.LensView(model, {PROMPT!r})\nlv",
        ]
    )
    t0 = time.monotonic()
    server_env = dict(env, JUPYTER_DATA_DIR=str(vroot / "jupyter-data"), OMP_NUM_THREADS="1")
    server_env.pop("JUPYTER_PATH", None)
    server = start_server("lab", notebook, "wheel.ipynb", python=str(py), env=server_env)
    page = browser_context.new_page()
    try:
        page.goto(server.url("wheel.ipynb"))
        page.wait_for_function(
            "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000
        )
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        # the kernel is connected and idle (a fresh venv starts its first kernel slowly; run-all before
        # that runs nothing)
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        # fire and forget: the command's promise settles only when every cell has run
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        view = page.locator("[data-testid=wb-view][data-kind=lens]").first
        view.wait_for(timeout=180_000)
        view.locator(
            "[data-testid=wb-status][data-state=done], [data-testid=wb-status][data-state=idle]"
        ).wait_for(timeout=120_000)
        kernel = json.loads((server.root / "kernel.json").read_text())
        assert Path(kernel["exe"]).is_relative_to(vroot), kernel  # the kernel runs in the fresh venv
        assert Path(kernel["file"]).resolve().is_relative_to(vroot), kernel
        assert view.locator("[data-testid=wb-error]").is_hidden()
        hm = view.locator("[data-testid=wb-heatmap][data-role=lens]")
        assert hm.get_attribute("data-rows") == "3"  # the tiny llama's layers
        assert int(hm.get_attribute("data-cols")) == 9  # the prompt's tokens (the tiny tokenizer adds no BOS)
        page.wait_for_function(
            "el => { const d = el.getContext('2d').getImageData(0, 0, el.width, el.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n > 0.5 * el.width * el.height; }",
            arg=hm.element_handle(),
            timeout=30_000,
        )
        pixels = hm.evaluate(
            "el => { const d = el.getContext('2d').getImageData(0, 0, el.width, el.height).data; const s = new Set();"
            " let n = 0; for (let i = 0; i < d.length; i += 4) { if (d[i + 3] > 0) n++;"
            " s.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); }"
            " return {w: el.width, h: el.height, painted: n, colours: s.size}; }"
        )
        assert pixels["w"] > 0 and pixels["painted"] > 0.5 * pixels["w"] * pixels["h"], pixels
        assert pixels["colours"] >= 5, pixels  # a heatmap, not a blank or one-colour box
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        view.scroll_into_view_if_needed()
        view.screenshot(path=str(ARTIFACTS / "wheel-lens-view.png"))
    finally:
        TIMINGS["jupyterlab + render"] = round(time.monotonic() - t0, 1)
        page.close()
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "wheel-timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")
