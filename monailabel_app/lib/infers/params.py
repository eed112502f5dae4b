# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Per-request options of the anomaly infer tasks: declaration, parsing and validation.

Each option is declared once (:class:`Option`); the declaration gives the value shown in MONAI Label's options panel
(3D Slicer renders numbers as text fields, booleans as check boxes and lists as combo boxes) and the parser that turns
what a client sends back into a validated Python value. Slicer sends numbers typed by the panel's default, strings for
anything else, so parsers accept numeric strings and comma-separated lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai_diffad.methods import MethodOption

__all__ = ["FRAMEWORK_KEYS", "InvalidInferRequest", "Option", "parse_options"]

#: Request keys that MONAI Label itself, its REST endpoint, batch inference or the Slicer/client plugins put into an
#: infer request; they are handled by the framework and always accepted.
FRAMEWORK_KEYS: frozenset[str] = frozenset(
    {
        "model", "image", "image_path", "device", "client_id", "description", "logging", "timeout",
        "save_label", "label_tag", "label", "label_info", "session", "session_id", "model_filename",
        "result_extension", "result_dtype", "result_compress", "result_write_to_file", "skip_writer",
        "cache_transforms", "cache_transforms_in_memory", "cache_transforms_ttl",
        "images", "labels", "max_batch_size", "multi_gpu", "gpus", "max_workers",
    }
)  # fmt: skip

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class InvalidInferRequest(ValueError):
    """A request the server cannot run as asked (bad option value, unknown option, unusable image): a client error."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidInferRequest(f"'{name}' must be a number, got {value!r}.")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InvalidInferRequest(f"'{name}' must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InvalidInferRequest(f"'{name}' must be finite, got {value!r}.")
    return number


def _integer(name: str, value: Any) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise InvalidInferRequest(f"'{name}' must be an integer, got {value!r}.")
    return int(number)


@dataclasses.dataclass(frozen=True)
class Option(MethodOption):
    """One request option: a method setting (:class:`monai_diffad.methods.MethodOption`: ``name``, ``kind``,
    ``default``, ``help``, ``low``, ``high``, ``target``) that the app parses and validates, or one of its own.

    Args:
        choices: allowed values of a ``"choice"`` option; the first is shown first in Slicer's combo box.
    """

    choices: tuple[str, ...] = ()

    def with_default(self, default: Any) -> Option:
        """A copy with another default, validated like a request value."""
        return dataclasses.replace(self, default=self.parse(default))

    def _check_bounds(self, value: float) -> None:
        if self.low is not None and value < self.low:
            raise InvalidInferRequest(f"'{self.name}' must be >= {self.low:g}, got {value:g}. {self.help}")
        if self.high is not None and value > self.high:
            raise InvalidInferRequest(f"'{self.name}' must be <= {self.high:g}, got {value:g}. {self.help}")

    def parse(self, value: Any) -> Any:
        """Validate a client value and return it as the option's Python type.

        Raises:
            InvalidInferRequest: the value has the wrong type or is out of range.
        """
        if self.kind == "int":
            parsed: Any = _integer(self.name, value)
            self._check_bounds(parsed)
        elif self.kind == "float":
            parsed = _number(self.name, value)
            self._check_bounds(parsed)
        elif self.kind == "optional_float":
            if value is None or (isinstance(value, str) and not value.strip()):
                return None
            parsed = _number(self.name, value)
            self._check_bounds(parsed)
        elif self.kind == "int_list":
            if isinstance(value, str):
                items: Iterable[Any] = [v for v in value.replace(";", ",").split(",") if v.strip()]
            elif isinstance(value, Sequence):
                items = value
            else:
                items = [value]
            parsed = tuple(_integer(self.name, v) for v in items)
            for v in parsed:
                self._check_bounds(v)
        elif self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in _TRUE | _FALSE:
                raise InvalidInferRequest(f"'{self.name}' must be true or false, got {value!r}.")
            parsed = text in _TRUE
        elif self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidInferRequest(f"'{self.name}' must be one of {list(self.choices)}, got {value!r}.")
            parsed = value
        else:
            raise ValueError(f"Option '{self.name}' has an unknown kind '{self.kind}'.")
        return parsed

    def panel_value(self) -> Any:
        """The default as MONAI Label's options panel should show it (Slicer types its widgets from this value)."""
        if self.kind == "int_list":
            return ",".join(str(v) for v in self.default)
        if self.kind == "choice":
            # Slicer shows a list as a combo box and preselects its first entry: put the default first
            return [self.default] + [c for c in self.choices if c != self.default]
        return self.default


def parse_options(
    request: Mapping[str, Any], options: Sequence[Option], extra_allowed: Iterable[str] = ()
) -> dict[str, Any]:
    """Validate a request against the declared options.

    Args:
        request: the infer request (framework keys and option values mixed, as MONAI Label passes them).
        options: the task's declared options.
        extra_allowed: further keys the task accepts without parsing them here.

    Returns:
        ``{name: value}`` for every declared option: the parsed request value, or the default.

    Raises:
        InvalidInferRequest: unknown keys, or invalid values (all problems are reported in one message).
    """
    known = {o.name for o in options} | set(FRAMEWORK_KEYS) | set(extra_allowed)
    unknown = sorted(k for k in request if k not in known and not str(k).startswith("_"))
    problems = []
    if unknown:
        problems.append(f"unknown option(s) {unknown}; this model accepts {sorted(o.name for o in options)}.")
    values: dict[str, Any] = {}
    for option in options:
        try:
            values[option.name] = option.parse(request[option.name]) if option.name in request else option.default
        except InvalidInferRequest as e:
            problems.append(str(e))
    if problems:
        raise InvalidInferRequest(" ".join(problems))
    return values
