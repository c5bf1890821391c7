"""The layout is the architecture: layers import only downward (import-linter's contracts in pyproject.toml),
every subpackage sits in a layer, old module paths still import, and the CLI starts without heavy imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib

import grounded

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "torchvision",
    "transformers",
    "diffusers",
    "supervision",
    "ray",
    "scipy",
    "pycocotools",
    "cv2",
)


def _lint_imports() -> str:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test dependency (pip install -e '.[test]')"
    return exe


def test_layers_import_only_downward_and_packages_have_no_cycles():
    proc = subprocess.run(
        [_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_every_subpackage_and_top_module_sits_in_a_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip(" ()") for layer in layers for name in layer.split("|")}
    package = Path(grounded.__file__).parent
    found = {f"grounded.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    found |= {f"grounded.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    unplaced = found - named - {"grounded.pipelines"}  # pipelines/ holds YAML files only
    assert not unplaced, (
        f"place these in a layer of [tool.importlinter] in pyproject.toml: {sorted(unplaced)}"
    )


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("grounded.images", "grounded.core.images", "load_image"),
        ("grounded.granularity_auto", "grounded.tasks.everything", "segment_everything"),
        ("grounded.ram.loading", "grounded.models.ram.loading", "load_ram"),
        ("grounded.semantic_sam", "grounded.models.semantic_sam", "SemanticSamModel"),
        ("grounded.runtime", "grounded.runtime.device", "pick_device"),
    ],
)
def test_old_module_paths_import_the_moved_modules_with_a_warning(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)  # one copy of the module, not two
    if old != "grounded.runtime":  # a package now: its old names resolve without a new module
        assert any(new in str(w.message) for w in caught if issubclass(w.category, DeprecationWarning))


def test_import_grounded_loads_no_model_library():
    code = f"import sys, grounded; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_help_loads_no_heavy_module():
    code = (
        "import contextlib, io, sys\n"
        "import grounded.cli as cli\n"
        "commands = cli.command_names()\n"
        "for argv in [['--help']] + [[c, '--help'] for c in commands]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        cli.main(argv)\n"
        f"print(len(commands), sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, heavy = out.strip().split(" ", 1)
    assert int(count) >= 10 and heavy == "[]"
