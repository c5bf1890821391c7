"""Adapters: the nodes of a pipeline, each wrapping one model family behind typed ports."""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, ClassVar

__all__ = ["Adapter", "Port", "input_ports", "output_ports", "temporary_params"]


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


def yaml_value(value: Any) -> Any:
    """A parameter value as YAML writes and reads it back: paths as strings, tuples as lists, numpy scalars
    as Python numbers."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {k: yaml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_value(v) for v in value]
    return value


def _record(adapter: Adapter, params: Mapping[str, Any]) -> None:
    """Record constructor parameters not recorded yet (an outer constructor's values win), and make each one
    an attribute unless the class defines that name itself (a property or method)."""
    recorded: dict[str, Any] = adapter.__dict__.setdefault("_params", {})
    for name, value in params.items():
        if name in recorded:
            continue
        recorded[name] = yaml_value(value)
        if not hasattr(type(adapter), name):
            setattr(adapter, name, recorded[name])


def _recording_init(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an adapter's ``__init__`` so that its bound arguments (defaults included) are recorded first."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Adapter, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        params: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                params.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{type(self).__name__} takes keyword parameters only, got {value!r}")
            else:
                params[name] = value
        _record(self, params)
        init(self, *args, **kwargs)

    __init__.__dict__["_records_params"] = True
    return __init__


class Adapter:
    """Base class of pipeline nodes.

    * Input ports come from the annotated keyword parameters of :meth:`run` (a parameter with a default is
      optional); output ports are declared in the class attribute ``outputs`` (port name → type).
    * Parameters are the arguments of ``__init__``: the base records every one of them (defaults included) for
      :meth:`get_params` (the YAML round trip) and makes each an attribute of the same name, unless the
      class defines that name itself. ``__init__`` itself only validates: it stays light, so a pipeline can
      be built, checked and serialised without loading any model. Heavy state is loaded by :meth:`warm_up`,
      which :meth:`run` implementations call lazily; ``warm_up`` must be idempotent.
    """

    outputs: ClassVar[dict[str, Any]] = {}
    registry_name: ClassVar[str] = ""
    _params: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_params", False):
            cls.__init__ = _recording_init(init)  # type: ignore[method-assign]

    def __init__(self, **params: Any) -> None:
        """``params``: parameters of an adapter without its own ``__init__`` (or passed up explicitly)."""
        _record(self, params)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters that rebuild this adapter."""
        return dict(self._params)

    def warm_up(self) -> None:
        """Load heavy state (models). Idempotent. The default does nothing."""

    #: Subclasses define ``run(self, <port>: <type>, ...) -> dict[str, Any]``; its parameters are the input ports.
    run: Callable[..., dict[str, Any]]

    if TYPE_CHECKING:  # parameters become attributes at run time; the type checker sees them as Any

        def __getattr__(self, name: str) -> Any: ...

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


@contextlib.contextmanager
def temporary_params(
    adapter: Adapter, params: Mapping[str, Any], error: Callable[[str], Exception] = ValueError
) -> Iterator[None]:
    """``adapter`` with ``params`` set for the block (one request's thresholds, say), restored afterwards.

    The values are checked first by building the adapter's class with them (its ``__init__`` validates and
    loads nothing); a bad value raises ``error(message)`` before anything changes. Callers serialise access to
    the adapter while the block runs.
    """
    if not params:
        yield
        return
    try:
        type(adapter)(**{**adapter.get_params(), **params})
    except (TypeError, ValueError) as exc:
        raise error(str(exc)) from None
    old = {k: getattr(adapter, k) for k in params}
    for k, v in params.items():
        setattr(adapter, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(adapter, k, v)
