"""``scripts/gpu_check.sh`` from a clean copy of the tree (its tracked files) in a fresh
environment shaped like the GPU machines': a Python holding torch, numpy, cuda-python, NVRTC's
library and pip (with their own requirements) and nothing of bincam's — symbolic links to those
distributions of this environment, through a ``.pth`` file of a new venv. The wheels of
``scripts/gpu_check_wheels.txt`` are downloaded by ``scripts/gpu_check_wheels.sh`` (PyPI) and
installed by the script with ``--no-index`` (pip's index and config blocked): here, without a
GPU, every step up to the GPU must work and the script must stop at "no CUDA GPU", non-zero. An
import the wheel list lacks fails this test (the control run shows the environment lacks it)."""

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the GPU machines' Python holds of what the check needs (device notes: torch, CuPy,
# cuda-python with NVRTC); everything else comes as wheels
GPU_IMAGE = ("torch", "numpy", "cuda-python", "nvidia-cuda-nvrtc", "pip")


def _closure(names):
    """The distributions ``names`` need (their requirements without extras, recursively)."""
    from packaging.requirements import Requirement

    seen, todo = {}, list(names)
    while todo:
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _gpu_image_python(tmp_path) -> Path:
    """A new venv seeing only ``GPU_IMAGE``'s closure of this environment's packages."""
    site = tmp_path / "gpu-image-site"
    site.mkdir()
    for dist in _closure(GPU_IMAGE).values():
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists() and top != "__pycache__":
                (site / top).symlink_to(source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True)
    (Path(purelib.stdout.strip()) / "gpu_image.pth").write_text(f"{site}\n")
    return python


def _clean_copy(tmp_path) -> Path:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to copy")
    tree = tmp_path / "tree"
    for name in filter(None, listed.decode().split("\0")):
        source, target = ROOT / name, tree / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return tree


def _offline_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "BINCAM_"))}
    env.update(PIP_NO_INDEX="1", PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def test_gpu_check_script_runs_offline_from_a_clean_tree_up_to_the_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run scripts/gpu_check.sh itself")
    pytest.importorskip("cuda.bindings.nvrtc")
    download = subprocess.run(["bash", "scripts/gpu_check_wheels.sh"], cwd=ROOT,
                              env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                              text=True, timeout=300)
    if download.returncode and not os.environ.get("CI"):
        pytest.skip(f"the wheels could not be downloaded (no PyPI?): {download.stderr[-300:]}")
    assert download.returncode == 0, download.stderr
    tree = _clean_copy(tmp_path)
    shutil.copytree(ROOT / ".whl", tree / ".whl")  # the ignored folder that travels with it
    python = _gpu_image_python(tmp_path)
    env = _offline_env(BINCAM_GPU_PYTHON=str(python), BINCAM_CACHE=str(tmp_path / "cache"))

    # the control: the environment itself lacks bincam's requirements
    control = subprocess.run([str(python), str(tree / "scripts/gpu_check_preflight.py")],
                             env={**env, "PYTHONPATH": str(tree / "toolkit")},
                             capture_output=True, text=True, timeout=300)
    assert control.returncode == 1 and "ModuleNotFoundError" in control.stdout, control.stdout

    proc = subprocess.run(["bash", str(tree / "scripts/gpu_check.sh"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert proc.returncode == 3, out
    assert "ModuleNotFoundError" not in out and "Traceback" not in out, out
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok", "ok", "FAIL"], out
    assert "installed offline (--no-index)" in lines[1]
    assert f"bincam from {tree / 'toolkit' / 'bincam'}" in lines[2]
    assert lines[3].startswith("ok   NVRTC") and "compiled for sm_90" in lines[3]
    assert lines[4].startswith("FAIL no CUDA GPU")
    assert not (tmp_path / "out").exists()  # nothing written before the GPU check runs
