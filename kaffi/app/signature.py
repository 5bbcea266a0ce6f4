"""Task arguments: from a Python call to Faktory's JSON array and back.

Faktory carries a job's arguments as one positional JSON array, so any worker in any
language sees a plain list. :class:`TaskSignature` owns the three steps around it:

1. *Binding* (``encode``): positional and keyword arguments are placed in parameter order.
   Trailing parameters the caller left out are not sent (the worker uses the defaults);
   a parameter skipped in the middle is sent with its default value.
2. *Validation and serialisation* (``encode``): the bound values are checked against the
   type hints with pydantic and turned into JSON-compatible values (datetime, date, UUID,
   Decimal, enums, pydantic models, dataclasses ...). Problems raise
   :class:`~kaffi.errors.ValidationError` naming the task, the parameter and what is wrong,
   before anything is sent.
3. *Conversion back* (``decode``), in the worker: the array is checked against the
   signature and converted to the annotated types; problems raise
   :class:`~kaffi.errors.ArgumentsError`.

A signature that cannot travel as an array (``**kwargs``, keyword-only parameters without
a default) is refused when the task is declared, with :class:`~kaffi.errors.ConfigurationError`.

*Refused types* are the extension point for objects that must never travel, whatever
pydantic could make of them: :func:`refuse_argument_type` registers a class and the advice
to give instead (``kaffi.contrib.django`` registers Django's ``Model``: "pass its primary
key"). A value of such a class is refused at enqueue time, a parameter annotated with it
when the task is declared. This module imports no framework to do so.

The pydantic validators are built once per task and array length, never per call: the
enqueue path is measured against other clients. This module does no I/O.
"""

from __future__ import annotations

import enum
import inspect
import math
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ConfigDict, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticSerializationError

from kaffi.errors import ArgumentsError, ConfigurationError, ValidationError

__all__ = ["Parameter", "TaskSignature", "refuse_argument_type", "refused_types"]

_EMPTY = inspect.Parameter.empty
# NaN and infinities are not JSON; Faktory would refuse the whole job. A float typed as
# such is refused by the validator; one that travels inside ``Any``, a pydantic model or a
# dataclass is kept as a float by the serializer ("constants", never a silent null) and
# found by :func:`_non_finite` afterwards.
_ADAPTER_CONFIG = ConfigDict(
    allow_inf_nan=False, arbitrary_types_allowed=False, ser_json_inf_nan="constants"
)
#: Annotations whose serialised value can never hold a non-finite float (a plain float is
#: refused by the validator), so the enqueue path skips the scan for them.
_FINITE_TYPES: frozenset[Any] = frozenset(
    {int, str, bool, float, bytes, datetime, date, time, timedelta, uuid.UUID, Decimal}
)


#: Classes whose instances are never sent as arguments -> the advice their error gives.
_refused: dict[type, str] = {}
#: The same classes as a tuple for ``isinstance``; empty (one falsy check per call) unless
#: an integration registered some.
_refused_types: tuple[type, ...] = ()


def refuse_argument_type(cls: type, advice: str | None) -> None:
    """Refuse instances of ``cls`` (and its subclasses) as task arguments.

    A value of ``cls`` passed to ``.delay()`` raises :class:`~kaffi.errors.ValidationError`
    naming the task, the argument and ``advice``, and nothing is sent; a task with a
    parameter annotated with ``cls`` (also inside ``list[...]``, ``X | None`` ...) is
    refused when it is declared, with :class:`~kaffi.errors.ConfigurationError`.
    Registering a class again replaces its advice; ``advice=None`` removes it.

    Integrations call this for objects that belong to one process, such as ORM rows,
    which a worker (possibly in another language) could not use. Only the arguments
    themselves are checked on every call (one ``isinstance`` each); inside a list or
    dict, a refused value is named when something there cannot become JSON (as a model
    instance never can), not searched for on every call.
    """
    global _refused_types
    if not isinstance(cls, type):
        raise ConfigurationError(f"refuse_argument_type() needs a class, got {cls!r}")
    if advice is None:
        _refused.pop(cls, None)
        _refused_types = tuple(_refused)
        return
    if not isinstance(advice, str) or not advice.strip():
        raise ConfigurationError(
            f"refuse_argument_type({cls.__qualname__}) needs the advice to give, as text"
        )
    _refused[cls] = advice.strip()
    _refused_types = tuple(_refused)


def refused_types() -> dict[type, str]:
    """The classes refused as arguments (see :func:`refuse_argument_type`) and their advice."""
    return dict(_refused)


def _refusal(value: Any) -> tuple[type, str] | None:
    """The registered class ``value`` is an instance of, and its advice; None if none."""
    for cls, advice in _refused.items():
        if isinstance(value, cls):
            return cls, advice
    return None


def _find_refused(value: Any, depth: int = 0) -> tuple[list[Any], Any, str] | None:
    """The path to the first refused instance in ``value`` (through lists, tuples, sets
    and dict values), the instance and its advice; None if there is none."""
    found = _refusal(value)
    if found is not None:
        return [], value, found[1]
    if depth > 20:  # deeper than any argument worth sending; a cycle, perhaps
        return None
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (set, frozenset)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = _find_refused(item, depth + 1)
        if inner is not None:
            inner[0].insert(0, key)
            return inner
    return None


def _refused_in_annotation(annotation: Any) -> tuple[type, str] | None:
    """The refused class an annotation names (itself or among its type arguments)."""
    if isinstance(annotation, type):
        for cls, advice in _refused.items():
            if issubclass(annotation, cls):
                return annotation, advice
    for arg in typing.get_args(annotation):
        found = _refused_in_annotation(arg)
        if found is not None:
            return found
    return None


class Parameter:
    """One parameter as it travels: its name, kind, type hint and default."""

    __slots__ = ("annotation", "default", "keyword_only", "name", "positional_only")

    def __init__(self, param: inspect.Parameter, annotation: Any) -> None:
        self.name = param.name
        self.default = param.default
        self.annotation = annotation
        self.positional_only = param.kind is inspect.Parameter.POSITIONAL_ONLY
        self.keyword_only = param.kind is inspect.Parameter.KEYWORD_ONLY

    @property
    def has_default(self) -> bool:
        """Whether the parameter has a default (so a call may leave it out)."""
        return self.default is not _EMPTY

    def __repr__(self) -> str:
        return f"<Parameter {self.name}>"


class _Encoder:
    """The pydantic validator and serializer for one array length, and which positions
    may carry a non-finite float past them (``scan``)."""

    __slots__ = ("scan", "serializer", "validator")

    def __init__(self, types: Sequence[Any]) -> None:
        shape: Any = tuple.__class_getitem__(tuple(types)) if types else tuple[()]
        adapter: TypeAdapter[Any] = TypeAdapter(shape, config=_ADAPTER_CONFIG)
        self.scan = tuple(i for i, t in enumerate(types) if not _always_finite(t))
        # The core validator/serializer directly: TypeAdapter's wrappers cost a few
        # microseconds per call on the hot enqueue path.
        self.validator = adapter.validator
        self.serializer = adapter.serializer


class TaskSignature:
    """How one task's arguments are bound, validated, serialised and converted back."""

    def __init__(
        self,
        fn: Callable[..., Any],
        task_name: str,
        localns: Mapping[str, Any] | None = None,
    ) -> None:
        self.task_name = task_name
        self._fn = fn
        # The names visible where the task was declared: a type defined inside a function
        # (a test, say) is not in the module's globals that string annotations resolve in.
        self._localns = dict(localns) if localns else None
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"task {task_name!r}: cannot read the signature of {fn!r}: {exc}"
            ) from None
        self._raw = sig
        positional: list[inspect.Parameter] = []
        keyword_only: list[inspect.Parameter] = []
        varargs: inspect.Parameter | None = None
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                raise ConfigurationError(
                    f"task {task_name!r}: **{p.name} cannot be sent: Faktory carries arguments"
                    " as a positional JSON array, so every argument needs its own parameter"
                )
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                if p.default is _EMPTY:
                    raise ConfigurationError(
                        f"task {task_name!r}: keyword-only parameter {p.name!r} has no default"
                        " and cannot be sent: Faktory carries arguments as a positional JSON"
                        f" array; make {p.name!r} a regular parameter or give it a default"
                    )
                keyword_only.append(p)
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                varargs = p
            else:
                positional.append(p)
        self._params_raw = positional, keyword_only, varargs
        self._hints: dict[str, Any] | None = None
        self._encoders: dict[int, _Encoder] = {}
        self._varargs_encoder: _Encoder | None = None
        self._build(positional, keyword_only, varargs, self._resolve_hints(strict=False))

    # -- setting up ------------------------------------------------------------------------

    def _resolve_hints(self, *, strict: bool) -> dict[str, Any] | None:
        """The evaluated type hints, or None while a forward reference cannot be resolved
        yet (a model defined further down the module): it is tried again on first use."""
        try:
            hints = typing.get_type_hints(self._fn, localns=self._localns, include_extras=True)
            self._localns = None
            return hints
        except NameError as exc:
            if strict:
                raise ConfigurationError(
                    f"task {self.task_name!r}: cannot resolve its type hints: {exc}; a type"
                    " used in a task's annotations must be importable from its module"
                ) from None
            return None
        except TypeError:
            # Callable objects and partials have no __annotations__ of their own.
            return {
                p.name: p.annotation
                for p in self._raw.parameters.values()
                if p.annotation is not _EMPTY and not isinstance(p.annotation, str)
            }

    def _build(
        self,
        positional: list[inspect.Parameter],
        keyword_only: list[inspect.Parameter],
        varargs: inspect.Parameter | None,
        hints: dict[str, Any] | None,
    ) -> None:
        self._hints = hints
        known = hints or {}

        def make(p: inspect.Parameter) -> Parameter:
            annotation = known.get(p.name, Any)
            if p.default is None and annotation is not Any:
                # ``x: int = None`` is common; the default itself must stay sendable.
                annotation = _optional(annotation)
            return Parameter(p, annotation)

        self.positional = [make(p) for p in positional]
        self.keyword_only = [make(p) for p in keyword_only]
        self.varargs = make(varargs) if varargs is not None else None
        # The array holds the positional parameters, then either the *args values or (when
        # there is no *args) the keyword-only parameters, in declaration order.
        self.slots = self.positional + ([] if self.varargs else self.keyword_only)
        self.required = sum(1 for p in self.positional if not p.has_default)
        self._index = {p.name: i for i, p in enumerate(self.slots)}
        self._keyword_only_names = {p.name for p in self.keyword_only}
        self._max = len(self.slots)
        self._n_positional = len(self.positional)
        self._encoders = {}
        self._varargs_encoder = None
        if _refused and hints is not None:
            self._check_annotations()
        if hints is not None:
            # The common call (every parameter given) is ready before the first job.
            self._encoder(self._max)

    def _check_annotations(self) -> None:
        params = self.positional + self.keyword_only + ([self.varargs] if self.varargs else [])
        for param in params:
            found = _refused_in_annotation(param.annotation)
            if found is not None:
                cls, advice = found
                raise ConfigurationError(
                    f"task {self.task_name!r}: parameter {param.name!r} is annotated with"
                    f" {cls.__module__}.{cls.__qualname__}, which cannot be sent as a job"
                    f" argument: {advice}"
                )

    def _ensure_hints(self) -> None:
        if self._hints is None:
            self._build(*self._params_raw, self._resolve_hints(strict=True))

    def _encoder(self, length: int) -> _Encoder:
        encoder = self._encoders.get(length)
        if encoder is None:
            self._ensure_hints()
            encoder = _Encoder([p.annotation for p in self.slots[:length]])
            self._encoders[length] = encoder
        return encoder

    def _extra_encoder(self) -> _Encoder:
        if self._varargs_encoder is None:
            self._ensure_hints()
            assert self.varargs is not None
            self._varargs_encoder = _Encoder([self.varargs.annotation])
        return self._varargs_encoder

    @property
    def names(self) -> list[str]:
        """The parameter names in array order (``*args`` last)."""
        names = [p.name for p in self.slots]
        if self.varargs is not None:
            names.append("*" + self.varargs.name)
        return names

    # -- enqueue side ----------------------------------------------------------------------

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """Place a call's arguments in array order: ``(slot values, *args values)``."""
        n_args = len(args)
        if not kwargs and self.required <= n_args <= self._n_positional:
            return list(args), []
        extra: list[Any] = []
        if n_args > self._n_positional:
            if self.varargs is None:
                raise self._call_error(
                    None,
                    f"takes {self._n_positional} positional argument"
                    f"{'' if self._n_positional == 1 else 's'} but {n_args} were given",
                )
            extra = list(args[self._n_positional :])
        values: list[Any] = list(args[: self._n_positional])
        given = [True] * len(values)
        for name, value in kwargs.items():
            index = self._index.get(name)
            if index is None:
                if name in self._keyword_only_names:
                    raise self._call_error(
                        name,
                        "is keyword-only after *"
                        f"{self.varargs.name if self.varargs else 'args'} and cannot be sent in"
                        " Faktory's positional array; the worker always uses its default",
                    )
                raise self._call_error(name, "is not a parameter of this task")
            param = self.slots[index]
            if param.positional_only:
                raise self._call_error(name, "is positional-only; pass it by position")
            if index < len(values) and given[index]:
                raise self._call_error(name, "was given both by position and by keyword")
            if index >= len(values):
                grow = index + 1 - len(values)
                values.extend([_EMPTY] * grow)
                given.extend([False] * grow)
            values[index] = value
            given[index] = True
        for index, value in enumerate(values):
            if value is _EMPTY:
                param = self.slots[index]
                if not param.has_default:
                    raise self._call_error(param.name, "is required but was not given")
                values[index] = param.default
        if len(values) < self.required:
            missing = [p.name for p in self.slots[len(values) : self.required]]
            raise self._call_error(
                missing[0],
                "is required but was not given"
                + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""),
            )
        return values, extra

    def encode(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        """Bind, validate and serialise a call into the JSON-compatible array to send."""
        values, extra = self.bind(args, kwargs)
        if _refused_types:
            self._refuse(values, 0)
            self._refuse(extra, len(values))
        encoder = self._encoder(len(values))
        try:
            out: list[Any] = encoder.serializer.to_python(
                encoder.validator.validate_python(tuple(values)), mode="json"
            )
        except PydanticValidationError as exc:
            raise self._validation_error(exc, offset=0) from None
        except (PydanticSerializationError, UnicodeDecodeError) as exc:
            raise self._serialisation_error(values, 0, exc) from None
        for index in encoder.scan:
            self._check_finite(out[index], index)
        if extra:
            extra_encoder = self._extra_encoder()
            for i, value in enumerate(extra):
                try:
                    out.extend(
                        extra_encoder.serializer.to_python(
                            extra_encoder.validator.validate_python((value,)), mode="json"
                        )
                    )
                except PydanticValidationError as exc:
                    raise self._validation_error(exc, offset=len(values) + i) from None
                except (PydanticSerializationError, UnicodeDecodeError) as exc:
                    raise self._serialisation_error([value], len(values) + i, exc) from None
                if extra_encoder.scan:
                    self._check_finite(out[-1], len(values) + i)
        return out

    def encode_json(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes | None:
        """:meth:`encode`'s array as compact JSON bytes, serialised straight from the
        validated values (no Python list in between): the ``.delay()`` fast path.

        Bad arguments raise exactly as :meth:`encode` does. None means "use encode()":
        a ``*args`` tail, a value the serializer refuses, or a ``NaN``/``Infinity`` token
        that encode() must either report or show to be inside a string.
        """
        values: Sequence[Any]
        if not kwargs and type(args) is tuple and self.required <= len(args) <= self._n_positional:
            # A plain positional call (bind's own shortcut), without copying the tuple.
            values = args
        else:
            values, extra = self.bind(args, kwargs)
            if extra:
                return None
            values = tuple(values)
        if _refused_types:
            self._refuse(values, 0)
        encoder = self._encoders.get(len(values)) or self._encoder(len(values))
        try:
            data: bytes = encoder.serializer.to_json(encoder.validator.validate_python(values))
        except PydanticValidationError as exc:
            raise self._validation_error(exc, offset=0) from None
        except (PydanticSerializationError, UnicodeDecodeError):
            # bytes that are not UTF-8 raise the latter; encode() reports either clearly.
            return None
        if encoder.scan and (data.find(b"NaN") >= 0 or data.find(b"Infinity") >= 0):
            return None
        return data

    def _refuse(self, values: Sequence[Any], offset: int) -> None:
        """Raise for the first value of a refused class (see :func:`refuse_argument_type`)."""
        for i, value in enumerate(values):
            if isinstance(value, _refused_types):
                raise self._refused_error([], value, offset + i)

    def _refused_error(self, path: list[Any], value: Any, index: int) -> ValidationError:
        found = _refusal(value)
        advice = found[1] if found is not None else ""
        name = self._label(index)
        inner = "".join(f"[{part!r}]" for part in path)
        kind = type(value)
        return ValidationError(
            f"task {self.task_name!r}: argument {name!r}{inner} is a"
            f" {kind.__module__}.{kind.__qualname__} ({_short(value)}), which cannot be sent"
            f" as a job argument: {advice}; nothing was sent",
            field=name,
        )

    def _check_finite(self, value: Any, index: int) -> None:
        path = _non_finite(value)
        if path is not None:
            name = self._label(index)
            inner = "".join(f"[{part!r}]" for part in path[0])
            raise ValidationError(
                f"task {self.task_name!r}: argument {name!r}{inner} cannot become JSON"
                f" ({path[1]!r} is not a finite number); nothing was sent",
                field=name,
            )

    def _label(self, index: int) -> str:
        if index < len(self.slots):
            return self.slots[index].name
        name = self.varargs.name if self.varargs else "args"
        return f"*{name}[{index - len(self.slots)}]"

    def _call_error(self, name: str | None, problem: str) -> ValidationError:
        what = f"argument {name!r} " if name else ""
        return ValidationError(
            f"task {self.task_name!r}: {what}{problem}; nothing was sent", field=name
        )

    def _validation_error(self, exc: PydanticValidationError, *, offset: int) -> ValidationError:
        problems = []
        first: str | None = None
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            index = offset + (loc[0] if loc and isinstance(loc[0], int) else 0)
            if _refused:
                found = _find_refused(err["input"])
                if found is not None:
                    return self._refused_error(list(loc[1:]) + found[0], found[1], index)
            name = self._label(index)
            first = first or name
            inner = "".join(f"[{part!r}]" for part in loc[1:])
            problems.append(f"argument {name!r}{inner}: {err['msg']} (got {_short(err['input'])})")
        return ValidationError(
            f"task {self.task_name!r}: " + "; ".join(problems) + "; nothing was sent", field=first
        )

    def _serialisation_error(
        self,
        values: Sequence[Any],
        offset: int,
        exc: PydanticSerializationError | UnicodeDecodeError,
    ) -> ValidationError:
        # The serializer does not say which element failed: find it, on this rare path only.
        for i, value in enumerate(values):
            found = _find_refused(value) if _refused else None
            if found is not None:
                return self._refused_error(found[0], found[1], offset + i)
            try:
                TypeAdapter(Any).dump_python(value, mode="json")
            except (PydanticSerializationError, UnicodeDecodeError):
                name = self._label(offset + i)
                return ValidationError(
                    f"task {self.task_name!r}: argument {name!r} cannot become JSON"
                    f" ({_short(value)} of type {type(value).__qualname__}): {exc};"
                    " nothing was sent",
                    field=name,
                )
        return ValidationError(
            f"task {self.task_name!r}: the arguments cannot become JSON: {exc}; nothing was sent"
        )

    # -- worker side -----------------------------------------------------------------------

    def decode(self, args: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check a job's array against the signature and convert it back to the annotated
        types: ``(positional arguments, keyword arguments)`` for the call."""
        count = len(args)
        if count < self.required:
            missing = ", ".join(repr(p.name) for p in self.slots[count : self.required])
            raise ArgumentsError(
                f"task {self.task_name!r}: job has {count} argument{'' if count == 1 else 's'}"
                f" but the task requires {self.required}: missing {missing}"
            )
        n_slots = min(count, self._max)
        if count > self._max and self.varargs is None:
            raise ArgumentsError(
                f"task {self.task_name!r}: job has {count} arguments but the task takes at"
                f" most {self._max} ({', '.join(self.names) or 'none'})"
            )
        encoder = self._encoder(n_slots)
        try:
            converted = list(encoder.validator.validate_python(tuple(args[:n_slots])))
        except PydanticValidationError as exc:
            raise self._arguments_error(exc, offset=0) from None
        if count > n_slots:
            extra_encoder = self._extra_encoder()
            for i, value in enumerate(args[n_slots:]):
                try:
                    converted.extend(extra_encoder.validator.validate_python((value,)))
                except PydanticValidationError as exc:
                    raise self._arguments_error(exc, offset=n_slots + i) from None
        if n_slots > self._n_positional:
            # Trailing slots past the positional ones are keyword-only parameters.
            kwargs = {
                p.name: converted[i]
                for i, p in enumerate(self.slots[self._n_positional : n_slots], self._n_positional)
            }
            return converted[: self._n_positional], kwargs
        return converted, {}

    def _arguments_error(self, exc: PydanticValidationError, *, offset: int) -> ArgumentsError:
        problems = []
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            index = offset + (loc[0] if loc and isinstance(loc[0], int) else 0)
            inner = "".join(f"[{part!r}]" for part in loc[1:])
            problems.append(
                f"argument {self._label(index)!r}{inner}: {err['msg']} (got {_short(err['input'])})"
            )
        return ArgumentsError(f"task {self.task_name!r}: " + "; ".join(problems))

    def check(self) -> None:
        """Resolve the type hints now, raising if they cannot be (used before a worker
        starts, so a bad annotation fails at start-up rather than on the first job)."""
        self._ensure_hints()
        self._encoder(self._max)

    def __repr__(self) -> str:
        return f"<TaskSignature {self.task_name}({', '.join(self.names)})>"


def _always_finite(annotation: Any) -> bool:
    """True when a value of this type, once serialised, cannot hold NaN or an infinity."""
    try:
        if annotation in _FINITE_TYPES or annotation is None or annotation is type(None):
            return True
    except TypeError:  # an unhashable annotation object: scan to be safe
        return False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return all(not isinstance(m.value, float) for m in annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _always_finite(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return all(_always_finite(arg) for arg in typing.get_args(annotation))
    return False


def _non_finite(value: Any) -> tuple[list[Any], float] | None:
    """The path to the first NaN or infinity in a JSON-compatible value, and the value."""
    if isinstance(value, float):
        return ([], value) if not math.isfinite(value) else None
    if isinstance(value, list):
        items: Iterable[tuple[Any, Any]] = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    for key, item in items:
        found = _non_finite(item)
        if found is not None:
            found[0].insert(0, key)
            return found
    return None


def _optional(annotation: Any) -> Any:
    try:
        return annotation | None
    except TypeError:
        return typing.Optional[annotation]  # noqa: UP045 - a runtime type form, not a hint


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
