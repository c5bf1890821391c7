"""The adapter base: parameters recorded from ``__init__`` (defaults too), attributes, YAML round trip,
lazy model loading shared by the model adapters, and the registry importing built-ins by name."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from grounded.engine import BUILTIN_ADAPTERS, Adapter, dump_pipeline, get_adapter, pipeline_from_dict
from grounded.engine import registry as registry_module


class Base(Adapter):
    outputs: ClassVar[dict[str, Any]] = {"out": int}

    def __init__(self, size: int = 3, path: str | Path = "a", names: tuple[str, ...] = ("x",)) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        super().__init__()
        self.calls = 0

    def run(self, n: int) -> dict[str, Any]:
        return {"out": n * self.size}


class Child(Base):
    def __init__(self, size: int = 5, **kwargs: Any) -> None:
        super().__init__(size=size, **kwargs)


class WithProperty(Adapter):
    def __init__(self, model: str = "m") -> None:
        super().__init__()

    @property
    def model(self) -> str:
        return "the loaded network"

    def run(self, n: int) -> dict[str, Any]:
        return {}


def test_every_init_parameter_is_recorded_with_its_default_and_becomes_an_attribute():
    a = Base(path=Path("/tmp/x"), names=("p", "q"))
    assert a.get_params() == {"size": 3, "path": "/tmp/x", "names": ["p", "q"]}  # YAML-ready values
    assert (a.size, a.path, a.names, a.calls) == (3, "/tmp/x", ["p", "q"], 0)
    assert repr(a) == "Base(size=3, path='/tmp/x', names=['p', 'q'])"


def test_a_subclass_records_its_own_defaults_and_the_base_ones():
    c = Child()
    assert c.get_params() == {"size": 5, "path": "a", "names": ["x"]}
    assert Child(size=7, path="b").get_params() == {"size": 7, "path": "b", "names": ["x"]}
    assert c.run(n=2) == {"out": 10}


def test_numpy_scalars_are_recorded_as_python_numbers():
    params = Base(size=np.int64(4)).get_params()
    assert params["size"] == 4 and type(params["size"]) is int


def test_validation_still_runs_and_a_property_is_never_overwritten():
    with pytest.raises(ValueError, match="size must be at least 1"):
        Base(size=0)
    w = WithProperty(model="path/to/weights")
    assert w.model == "the loaded network" and w.get_params() == {"model": "path/to/weights"}


def test_positional_arguments_are_recorded_by_name():
    assert Base(9).get_params()["size"] == 9


def test_builtin_adapters_round_trip_through_yaml():
    spec = {
        "nodes": {
            "detector": {"type": "owlv2", "params": {"model": "some/detector", "box_threshold": 0.2}},
            "segmenter": {"type": "sam_hq", "params": {"model": "some/segmenter", "max_boxes_per_call": 8}},
        },
        "edges": ["detector.detections -> segmenter.detections"],
        "inputs": {"images": ["detector.images", "segmenter.images"], "prompt": ["detector.prompt"]},
        "outputs": {"detections": "segmenter.detections"},
    }
    pipe = pipeline_from_dict(spec)
    segmenter = pipe.adapter("segmenter")
    assert segmenter.get_params()["model"] == "some/segmenter"
    assert segmenter.get_params()["multimask_output"] is False  # SAM's default, recorded through SAMHQ
    assert segmenter.max_boxes_per_call == 8
    rebuilt = pipeline_from_dict(__import__("yaml").safe_load(dump_pipeline(pipe)))
    for node in ("detector", "segmenter"):
        assert rebuilt.adapter(node).get_params() == pipe.adapter(node).get_params()


def test_model_adapters_load_nothing_until_warm_up():
    sam = get_adapter("sam")(model="/does/not/exist", device="cpu", precision="auto")
    assert sam._model is None and sam.device == "cpu"  # the parameter until warm_up resolves it
    with pytest.raises(Exception, match="does not exist"):
        sam.warm_up()
    with pytest.raises(ValueError, match="precision must be one of"):
        get_adapter("owlv2")(precision="fp8")


def test_the_builtin_table_names_exactly_what_each_module_registers():
    for name, module in BUILTIN_ADAPTERS.items():
        cls = get_adapter(name)
        assert cls.__module__ == module and cls.registry_name == name
    registered = {
        n for n, c in registry_module._REGISTRY.items() if c.__module__.startswith("grounded.adapters")
    }
    assert registered == set(BUILTIN_ADAPTERS)
    adapters = Path(importlib.import_module("grounded.adapters").__file__).parent
    modules = {
        f"grounded.adapters.{p.stem}"
        for p in adapters.glob("*.py")
        if p.stem not in ("__init__", "common", "video")  # video: the tracker interface
    }
    assert modules == set(BUILTIN_ADAPTERS.values())


def test_a_pipeline_imports_only_its_own_adapters():
    code = (
        "import sys\n"
        "from grounded.api import build_pipeline\n"
        "build_pipeline('grounded_sam')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('grounded.adapters.'))\n"
        "heavy = sorted(m for m in ('diffusers', 'ray', 'supervision') if m in sys.modules)\n"
        "print(loaded, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == (
        "['grounded.adapters.common', 'grounded.adapters.grounding_dino', 'grounded.adapters.sam'] []"
    )
