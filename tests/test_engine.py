"""The pipeline engine: typed ports, build-time checks, running, YAML round-trip, registry."""

from typing import Any, ClassVar

import pytest
import yaml

from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import (
    Adapter,
    Pipeline,
    PipelineConnectionError,
    PipelineError,
    UnknownAdapterError,
    available_adapters,
    dump_pipeline,
    get_adapter,
    input_ports,
    load_pipeline,
    output_ports,
    pipeline_from_dict,
    register_adapter,
    types_compatible,
)
from grounded.engine import registry as registry_module


class Words(Adapter):
    outputs: ClassVar[dict[str, Any]] = {"words": list[str]}

    def run(self, text: str) -> dict[str, Any]:
        return {"words": text.split()}


class Upper(Adapter):
    outputs: ClassVar[dict[str, Any]] = {"words": list[str]}

    def run(self, words: list[str], suffix: str = "") -> dict[str, Any]:
        return {"words": [w.upper() + suffix for w in words]}


class Join(Adapter):
    outputs: ClassVar[dict[str, Any]] = {"text": str}

    def __init__(self, sep: str = " ") -> None:
        super().__init__(sep=sep)
        self.sep = sep

    def run(self, left: list[str], right: list[str]) -> dict[str, Any]:
        return {"text": self.sep.join(left + right)}


class Count(Adapter):
    outputs: ClassVar[dict[str, Any]] = {"n": int}

    def run(self, words: list[int]) -> dict[str, Any]:
        return {"n": len(words)}


def test_ports_come_from_run_signature_and_outputs_declaration():
    ins = input_ports(Upper)
    assert list(ins) == ["words", "suffix"]
    assert ins["words"].type == list[str] and ins["words"].required
    assert not ins["suffix"].required
    assert output_ports(Upper)["words"].type == list[str]


def test_type_compatibility():
    assert types_compatible(list[str], list[str])
    assert not types_compatible(list[str], list[int])
    assert types_compatible(list[Detections], Any)
    assert types_compatible(Prompt, Prompt | list[Prompt])
    assert types_compatible(list[Prompt], Prompt | list[Prompt])
    assert not types_compatible(list[Detections], Prompt | list[Prompt])
    assert types_compatible(bool, int)


def _diamond() -> Pipeline:
    p = Pipeline("diamond")
    p.add("split", Words())
    p.add("up", Upper())
    p.add("join", Join(sep="+"))
    p.connect("split.words", "up.words")
    p.connect("split.words", "join.left")
    p.connect("up.words", "join.right")
    p.expose_input("text", ["split.text"])
    p.expose_output("text", "join.text")
    return p


def test_pipeline_runs_in_topological_order():
    assert _diamond().run(text="a b") == {"text": "a+b+A+B"}


def test_bad_port_name_fails_at_build_time_and_lists_ports():
    p = _diamond()
    p.add("count", Count())
    with pytest.raises(PipelineConnectionError) as err:
        p.connect("up.wrds", "count.words")
    assert "has no output port 'wrds'" in str(err.value) and "words (list[str])" in str(err.value)
    with pytest.raises(
        PipelineConnectionError, match=r"its inputs: words \(list\[str\]\), suffix \(str, optional\)"
    ):
        p.connect("split.words", "up.nothing")
    with pytest.raises(PipelineConnectionError, match="no node named 'nope'"):
        p.connect("nope.words", "count.words")


def test_type_mismatch_cycle_and_double_feed_fail_at_build_time():
    p = _diamond()
    p.add("count", Count())
    with pytest.raises(PipelineConnectionError, match=r"list\[str\].*list\[int\]"):
        p.connect("up.words", "count.words")
    with pytest.raises(PipelineConnectionError, match="already fed"):
        p.connect("split.words", "up.words")
    q = Pipeline()
    q.add("a", Upper())
    q.add("b", Upper())
    q.connect("a.words", "b.words")
    with pytest.raises(PipelineConnectionError, match="cycle"):
        q.connect("b.words", "a.words")
    assert q.graph.number_of_edges() == 1


def test_unfed_required_input_is_reported():
    p = Pipeline()
    p.add("up", Upper())
    p.expose_output("w", "up.words")
    with pytest.raises(
        PipelineConnectionError, match=r"unconnected required inputs: up.words \(list\[str\]\)"
    ):
        p.validate()


def test_run_checks_inputs():
    p = _diamond()
    with pytest.raises(PipelineError, match="missing pipeline input 'text'"):
        p.run()
    with pytest.raises(PipelineError, match="unknown pipeline inputs"):
        p.run(text="a", other=1)


@pytest.fixture()
def toy_registry(monkeypatch):
    available_adapters()  # the built-ins stay registered after the copy is dropped
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    for name, cls in (("toy_words", Words), ("toy_upper", Upper), ("toy_join", Join)):
        register_adapter(name)(cls)
    yield


def test_yaml_pipeline_equals_the_one_built_in_python(toy_registry, tmp_path):
    text = """
name: diamond
nodes:
  split: {type: toy_words}
  up: {type: toy_upper}
  join: {type: toy_join, params: {sep: "+"}}
edges:
  - split.words -> up.words
  - split.words -> join.left
  - up.words -> join.right
inputs:
  text: [split.text]
outputs:
  text: join.text
"""
    path = tmp_path / "diamond.yaml"
    path.write_text(text)
    loaded = load_pipeline(path)
    assert loaded == _diamond()
    assert loaded.run(text="x y") == {"text": "x+y+X+Y"}
    # dump -> load gives the same pipeline again
    again = pipeline_from_dict(yaml.safe_load(dump_pipeline(loaded)))
    assert again == loaded
    assert pipeline_from_dict(yaml.safe_load(text), overrides={"join": {"sep": "-"}}).run(text="a") == {
        "text": "a-A"
    }


def test_yaml_may_only_name_registered_adapters(toy_registry):
    spec = {"nodes": {"x": {"type": "os.system", "params": {}}}, "outputs": {}}
    with pytest.raises(UnknownAdapterError, match="unknown adapter type 'os.system'.*toy_upper"):
        pipeline_from_dict(spec)
    with pytest.raises(PipelineError, match="unknown pipeline keys"):
        pipeline_from_dict({"nodes": {"x": {"type": "toy_upper"}}, "imports": ["os"]})
    with pytest.raises(PipelineError, match="node 'j' \\(toy_join\\)"):
        pipeline_from_dict({"nodes": {"j": {"type": "toy_join", "params": {"bogus": 1}}}})


def test_shared_params_go_only_to_adapters_that_take_them(toy_registry):
    spec = {
        "nodes": {"split": {"type": "toy_words"}, "join": {"type": "toy_join"}},
        "edges": ["split.words -> join.left", "split.words -> join.right"],
        "inputs": {"text": "split.text"},
        "outputs": {"text": "join.text"},
    }
    p = pipeline_from_dict(spec, shared={"sep": "|"})
    assert p.adapter("join").get_params() == {"sep": "|"}
    assert p.adapter("split").get_params() == {}
    assert p.run(text="a b") == {"text": "a|b|a|b"}


def test_builtin_adapters_and_pipelines_are_registered():
    names = available_adapters()
    assert {"grounding_dino", "sam", "sam_hq"} <= set(names)
    assert input_ports(get_adapter("sam"))["images"].type == list[LoadedImage]
    for bundled in ("grounded_sam", "grounded_hq_sam"):
        p = load_pipeline(bundled)
        assert set(p.inputs) == {"images", "prompt"} and set(p.outputs) == {"detections"}
    assert load_pipeline("grounded_hq_sam").adapter("segmenter").registry_name == "sam_hq"


def test_third_party_adapters_register_through_entry_points(monkeypatch):
    class FakeEntryPoint:
        name = "plugin_upper"
        value = "plugin:Upper"

        def load(self):
            return Upper

    available_adapters()
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    monkeypatch.setattr(registry_module, "_loaded_entry_points", False)
    monkeypatch.setattr(
        registry_module,
        "entry_points",
        lambda group: [FakeEntryPoint()] if group == "grounded.adapters" else [],
    )
    assert get_adapter("plugin_upper") is Upper


def test_a_broken_plugin_does_not_break_the_builtins(monkeypatch, caplog):
    class NotAnAdapter:
        pass

    class BadEntryPoint:
        name = "bad_plugin"
        value = "plugin:NotAnAdapter"

        def load(self):
            return NotAnAdapter

    available_adapters()
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    monkeypatch.setattr(registry_module, "_loaded_entry_points", False)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [BadEntryPoint()])
    names = available_adapters()
    assert "sam" in names and "bad_plugin" not in names
    assert "could not load grounded adapter 'bad_plugin'" in caplog.text


def test_a_missing_pipeline_path_never_falls_back_to_a_bundled_one(tmp_path):
    with pytest.raises(PipelineError, match="no pipeline file"):
        load_pipeline(tmp_path / "configs" / "grounded_sam.yaml")
    assert load_pipeline("pipelines/grounded_sam.yaml") == load_pipeline("grounded_sam")
