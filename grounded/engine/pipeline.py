"""A small pipeline engine: adapters as nodes of a networkx graph, edges between typed ports."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx

from grounded.engine.adapter import Adapter, Port, input_ports, output_ports, type_name
from grounded.runtime.memory import reuse_freed_memory

__all__ = ["Pipeline", "PipelineConnectionError", "PipelineError", "types_compatible"]


class PipelineError(Exception):
    """A pipeline that cannot be built or run as described."""


class PipelineConnectionError(PipelineError):
    """A connection names a missing node or port, or joins incompatible types."""


def types_compatible(sender: Any, receiver: Any) -> bool:
    """Whether a value of port type ``sender`` may feed a port of type ``receiver``."""
    if sender is Any or receiver is Any or sender == receiver:
        return True
    if typing.get_origin(receiver) in (typing.Union, types.UnionType):
        return any(types_compatible(sender, arm) for arm in typing.get_args(receiver))
    if typing.get_origin(sender) in (typing.Union, types.UnionType):
        return all(types_compatible(arm, receiver) for arm in typing.get_args(sender))
    s_origin, r_origin = typing.get_origin(sender), typing.get_origin(receiver)
    if s_origin is None and r_origin is None:
        return isinstance(sender, type) and isinstance(receiver, type) and issubclass(sender, receiver)
    if s_origin is None or r_origin is None or s_origin != r_origin:
        return False
    s_args, r_args = typing.get_args(sender), typing.get_args(receiver)
    return len(s_args) == len(r_args) and all(
        types_compatible(s, r) for s, r in zip(s_args, r_args, strict=True)
    )


def _split(address: str) -> tuple[str, str]:
    node, sep, port = address.partition(".")
    if not sep or not node or not port:
        raise PipelineConnectionError(f"expected 'node.port', got {address!r}")
    return node, port


class Pipeline:
    """Adapters joined by typed edges, run in topological order.

    Build it with :meth:`add` and :meth:`connect`; name the pipeline's own inputs (each fans out to one or
    more node input ports) with :meth:`expose_input` and its results with :meth:`expose_output`. Every error
    in the wiring is raised while building, not while running.
    """

    def __init__(self, name: str = "pipeline") -> None:
        self.name = name
        self.graph: nx.MultiDiGraph = nx.MultiDiGraph()
        self.inputs: dict[str, list[tuple[str, str]]] = {}
        self.outputs: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ building
    def add(self, name: str, adapter: Adapter) -> None:
        """Add a node."""
        if not isinstance(adapter, Adapter):
            raise PipelineError(f"node {name!r} must be an Adapter instance, got {type(adapter).__name__}")
        if "." in name or not name:
            raise PipelineError(f"node name {name!r} must be non-empty and contain no '.'")
        if name in self.graph:
            raise PipelineError(f"a node named {name!r} already exists")
        self.graph.add_node(name, adapter=adapter)

    def adapter(self, name: str) -> Adapter:
        """The adapter of node ``name``."""
        if name not in self.graph:
            raise PipelineError(f"no node named {name!r}; nodes: {', '.join(self.graph.nodes) or 'none'}")
        return typing.cast(Adapter, self.graph.nodes[name]["adapter"])

    def _port(self, address: str, kind: str) -> Port:
        node, port = _split(address)
        if node not in self.graph:
            raise PipelineConnectionError(
                f"no node named {node!r} in {address!r}; nodes: {', '.join(self.graph.nodes) or 'none'}"
            )
        adapter = self.adapter(node)
        ports = input_ports(adapter) if kind == "input" else output_ports(adapter)
        if port not in ports:
            listing = ", ".join(p.describe() for p in ports.values()) or "none"
            raise PipelineConnectionError(
                f"node {node!r} ({type(adapter).__name__}) has no {kind} port {port!r}; its {kind}s: {listing}"
            )
        return ports[port]

    def _feeders(self, node: str, port: str) -> list[str]:
        fed = [
            f"{u}.{d['sender']}" for u, _, d in self.graph.in_edges(node, data=True) if d["receiver"] == port
        ]
        fed += [f"input '{name}'" for name, targets in self.inputs.items() if (node, port) in targets]
        return fed

    def connect(self, sender: str, receiver: str) -> None:
        """Connect output ``"node.port"`` to input ``"node.port"``; checks names, types and cycles."""
        out_port = self._port(sender, "output")
        in_port = self._port(receiver, "input")
        if not types_compatible(out_port.type, in_port.type):
            raise PipelineConnectionError(
                f"cannot connect {sender} ({type_name(out_port.type)}) to {receiver} ({type_name(in_port.type)})"
            )
        s_node, r_node = _split(sender)[0], _split(receiver)[0]
        existing = self._feeders(r_node, in_port.name)
        if existing:
            raise PipelineConnectionError(f"{receiver} is already fed by {existing[0]}")
        self.graph.add_edge(s_node, r_node, sender=out_port.name, receiver=in_port.name)
        if not nx.is_directed_acyclic_graph(self.graph):
            self.graph.remove_edge(s_node, r_node, key=max(self.graph[s_node][r_node]))
            raise PipelineConnectionError(f"connecting {sender} to {receiver} would make a cycle")

    def expose_input(self, name: str, targets: Sequence[str]) -> None:
        """Name a pipeline input that feeds the given node input ports."""
        if name in self.inputs:
            raise PipelineError(f"pipeline input {name!r} is already defined")
        resolved = []
        for target in targets:
            port = self._port(target, "input")
            node = _split(target)[0]
            existing = self._feeders(node, port.name)
            if existing:
                raise PipelineConnectionError(f"{target} is already fed by {existing[0]}")
            resolved.append((node, port.name))
        self.inputs[name] = resolved

    def expose_output(self, name: str, source: str) -> None:
        """Name a pipeline result taken from a node output port."""
        self._port(source, "output")
        node, port = _split(source)
        self.outputs[name] = (node, port)

    def validate(self) -> None:
        """Check that every required input port is fed exactly once."""
        missing = []
        for node in self.graph.nodes:
            for port in input_ports(self.adapter(node)).values():
                if port.required and not self._feeders(node, port.name):
                    missing.append(f"{node}.{port.name} ({type_name(port.type)})")
        if missing:
            raise PipelineConnectionError(
                "unconnected required inputs: "
                + ", ".join(missing)
                + " (connect them or expose them as inputs)"
            )
        if not self.outputs:
            raise PipelineError(f"pipeline {self.name!r} exposes no outputs")

    # ------------------------------------------------------------------ running
    def warm_up(self) -> None:
        """Load every node's heavy state."""
        for node in nx.topological_sort(self.graph):
            self.adapter(node).warm_up()

    def run(self, **inputs: Any) -> dict[str, Any]:
        """Run all nodes in topological order and return the exposed outputs."""
        self.validate()
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise PipelineError(f"unknown pipeline inputs {sorted(unknown)}; inputs: {sorted(self.inputs)}")
        node_inputs: dict[str, dict[str, Any]] = {node: {} for node in self.graph.nodes}
        for name, targets in self.inputs.items():
            if name not in inputs:
                required = [f"{n}.{p}" for n, p in targets if input_ports(self.adapter(n))[p].required]
                if required:
                    raise PipelineError(f"missing pipeline input {name!r} (feeds {', '.join(required)})")
                continue
            for node, port in targets:
                node_inputs[node][port] = inputs[name]
        results: dict[str, Mapping[str, Any]] = {}
        with reuse_freed_memory():  # the stages' large CPU temporaries reuse each other's pages
            for node in nx.topological_sort(self.graph):
                for upstream, _, data in self.graph.in_edges(node, data=True):
                    node_inputs[node][data["receiver"]] = results[upstream][data["sender"]]
                adapter = self.adapter(node)
                produced = adapter.run(**node_inputs[node])
                declared = set(output_ports(adapter))
                if set(produced) != declared:
                    raise PipelineError(
                        f"node {node!r} returned outputs {sorted(produced)} but declares {sorted(declared)}"
                    )
                results[node] = produced
        return {name: results[node][port] for name, (node, port) in self.outputs.items()}

    # ------------------------------------------------------------------ description
    def to_dict(self) -> dict[str, Any]:
        """A plain description (the YAML schema) of this pipeline."""
        return {
            "name": self.name,
            "nodes": {
                node: {"type": self.adapter(node).registry_name, "params": self.adapter(node).get_params()}
                for node in self.graph.nodes
            },
            "edges": [f"{u}.{d['sender']} -> {v}.{d['receiver']}" for u, v, d in self.graph.edges(data=True)],
            "inputs": {name: [f"{n}.{p}" for n, p in targets] for name, targets in self.inputs.items()},
            "outputs": {name: f"{n}.{p}" for name, (n, p) in self.outputs.items()},
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pipeline):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        a["edges"], b["edges"] = sorted(a["edges"]), sorted(b["edges"])
        return a == b

    __hash__ = None  # type: ignore[assignment]
