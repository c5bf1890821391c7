"""Adapters: the nodes of a pipeline, each wrapping one model family behind typed ports."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Adapter", "Port", "input_ports", "output_ports"]


@dataclass(frozen=True)
class Port:
    """A named, typed input or output of an adapter."""

    name: str
    type: Any
    required: bool = True

    def describe(self) -> str:
        return f"{self.name} ({type_name(self.type)}{'' if self.required else ', optional'})"


def type_name(tp: Any) -> str:
    """A short readable name for a port type (``list[Detections]`` rather than a repr)."""
    if tp is Any:
        return "Any"
    origin = typing.get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", repr(tp))
    args = ", ".join(type_name(a) for a in typing.get_args(tp))
    return f"{getattr(origin, '__name__', repr(origin))}[{args}]"


class Adapter:
    """Base class of pipeline nodes.

    * Input ports come from the annotated keyword parameters of :meth:`run` (a parameter with a default is
      optional); output ports are declared in the class attribute ``outputs`` (port name → type).
    * ``__init__`` stays light: it only records parameters (so a pipeline can be built, checked and
      serialised without loading any model). Heavy state is loaded by :meth:`warm_up`, which :meth:`run`
      implementations call lazily; ``warm_up`` must be idempotent.
    * :meth:`get_params` returns the parameters needed to rebuild the adapter (YAML round-trip).
    """

    outputs: ClassVar[dict[str, Any]] = {}
    registry_name: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self._params = dict(params)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters that rebuild this adapter."""
        return dict(self._params)

    def warm_up(self) -> None:
        """Load heavy state (models). Idempotent. The default does nothing."""

    #: Subclasses define ``run(self, <port>: <type>, ...) -> dict[str, Any]``; its parameters are the input ports.
    run: Callable[..., dict[str, Any]]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def input_ports(adapter: type[Adapter] | Adapter) -> dict[str, Port]:
    """Input ports of an adapter, read from its ``run`` signature."""
    cls = adapter if isinstance(adapter, type) else type(adapter)
    if not callable(getattr(cls, "run", None)):
        raise TypeError(f"adapter {cls.__name__} defines no run() method")
    signature = inspect.signature(cls.run)
    hints = typing.get_type_hints(cls.run)
    ports: dict[str, Port] = {}
    for name, param in signature.parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        ports[name] = Port(name, hints.get(name, Any), required=param.default is inspect.Parameter.empty)
    return ports


def output_ports(adapter: type[Adapter] | Adapter) -> dict[str, Port]:
    """Output ports of an adapter, read from its ``outputs`` declaration."""
    cls = adapter if isinstance(adapter, type) else type(adapter)
    return {name: Port(name, tp) for name, tp in cls.outputs.items()}
