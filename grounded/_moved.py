"""Old module paths from before the layered layout (``grounded.images``, ``grounded.ram``, ...) keep
importing, as the new modules themselves, with a ``DeprecationWarning`` that names the new path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

#: old module -> new module (a package's submodules move with it)
MOVED: dict[str, str] = {
    "grounded.annotate_ray": "grounded.tasks.annotate_ray",
    "grounded.benchmark": "grounded.tasks.bench",
    "grounded.boxes": "grounded.core.boxes",
    "grounded.checkpoints": "grounded.models.checkpoints",
    "grounded.cli_annotate": "grounded.tasks.annotate",
    "grounded.cli_edit": "grounded.tasks.edit",
    "grounded.cli_granularity": "grounded.tasks.granularity",
    "grounded.compat": "grounded.runtime.compat",
    "grounded.cpu_memory": "grounded.runtime.memory",
    "grounded.datasets_export": "grounded.tasks.datasets",
    "grounded.denormals": "grounded.runtime.denormals",
    "grounded.detections": "grounded.core.detections",
    "grounded.editing": "grounded.core.inpaint_windows",
    "grounded.evaluation.cli": "grounded.cli.evaluate",
    "grounded.export": "grounded.tasks.export",
    "grounded.fastpath": "grounded.runtime.fast_kernels",
    "grounded.granularity": "grounded.core.levels",
    "grounded.granularity_auto": "grounded.tasks.everything",
    "grounded.images": "grounded.core.images",
    "grounded.manifest": "grounded.tasks.manifest",
    "grounded.maskops": "grounded.core.maskops",
    "grounded.ontology": "grounded.core.ontology",
    "grounded.phrases": "grounded.core.phrases",
    "grounded.phrases_nlp": "grounded.core.noun_phrases",
    "grounded.prompts": "grounded.core.prompts",
    "grounded.ram": "grounded.models.ram",
    "grounded.rle": "grounded.core.rle",
    "grounded.semantic_sam": "grounded.models.semantic_sam",
    "grounded.sources": "grounded.models.sources",
    "grounded.testing": "grounded.models.testing",
    "grounded.tinyvit": "grounded.models.tinyvit",
}


def new_name(old: str) -> str | None:
    """Where ``old`` lives now, or ``None`` if it did not move."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix) :]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} has moved to {self.target}; import it from there", DeprecationWarning, stacklevel=2
        )
        module = importlib.import_module(self.target)  # the module itself: one copy, whatever the path
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run; give the module back its own spec (the import system set the alias's)."""
        module.__spec__ = self._spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        moved = new_name(fullname) if fullname.startswith("grounded.") else None
        return None if moved is None else importlib.util.spec_from_loader(fullname, _Alias(moved))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), ahead of the path finder."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
