"""Typed config base: dataclasses that round-trip the official JSON files exactly.

The official checkpoint's config.json files carry many fields we never read (training hints,
historical flags). A user's folder must survive `from_pretrained` -> `save_pretrained` unchanged,
so every config keeps the keys it does not know in `extra` and writes them back on save.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, ClassVar, TypeVar

from typing_extensions import Self

T = TypeVar("T", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Base class for typed configs. Subclasses are dataclasses; unknown keys go to `extra`."""

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    # Checkpoint configs set this: fields a loaded file did not name are not written back while they
    # keep their default, so `from_dict(d).to_dict() == d` holds for files that omit optional keys.
    # Run configs (synthesis, training) leave it off, so their saved form is the full resolved config.
    OMIT_ABSENT_DEFAULTS: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field. Subclasses override."""

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def _convert_nested(cls, known: dict[str, Any]) -> dict[str, Any]:
        """Hook for subclasses: turn nested dicts into typed configs before construction."""
        return known

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        names = cls.field_names()
        known = {k: copy.deepcopy(v) for k, v in data.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in names}
        try:
            obj = cls(**cls._convert_nested(known), extra=extra)
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"{cls.__name__}: {exc}") from exc
        # Remembered for OMIT_ABSENT_DEFAULTS (not a dataclass field: stays out of repr/eq).
        object.__setattr__(obj, "_absent_fields", frozenset(names - data.keys()))
        return obj

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(self.extra)
        absent: frozenset[str] = (
            getattr(self, "_absent_fields", frozenset()) if self.OMIT_ABSENT_DEFAULTS else frozenset()
        )
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in absent and _has_default(f) and value == _default_of(f):
                continue
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = copy.deepcopy(value)
        return dict(sorted(out.items()))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> Self:
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, ensure_ascii=False)
            fh.write("\n")


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
