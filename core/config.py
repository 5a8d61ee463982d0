"""The one configuration mechanism: typed, read-only confs whose unknown keys are refused.

Every plug-in (extractor, matcher, retriever), estimator, verification and placement declares
its options as a :class:`Conf` subclass whose field defaults are the only defaults it has; the
named presets in ``core/defaults.py`` choose among them. As glue-factory's ``BaseModel`` merges
a caller's conf over a read-only ``default_conf`` in struct mode
(https://github.com/cvg/glue-factory, gluefactory/models/base_model.py), :meth:`Conf.make`
merges a caller's dict over the field defaults and refuses any key that is not a field, so a
typo fails loudly instead of silently running with a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import InputError


class Conf(BaseModel):
    """Base of every conf. Also a read-only mapping (``conf["key"]``, ``{**conf}``), which is
    how maps record a plug-in's conf and how callers derive a variant of one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def make(cls, conf: Mapping[str, Any] | Conf | None = None, what: str | None = None) -> Self:
        """``conf`` merged over the defaults; InputError naming any unknown or bad key. A conf of
        this class is returned as it is."""
        if isinstance(conf, cls):
            return conf
        given = conf.model_dump() if isinstance(conf, Conf) else dict(conf or {})
        what = what or cls.__name__
        unknown = sorted(set(given) - set(cls.model_fields))
        if unknown:
            raise InputError(
                f"unknown option(s) for {what}: {', '.join(unknown)}; "
                f"allowed: {', '.join(cls.model_fields) or 'none'}"
            )
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise InputError(f"bad option(s) for {what}: {error_text(exc)}") from None

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)


def error_text(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``field: message; ...``; a validator's own ValueError
    (an InputError from a nested conf, say) keeps its message as written."""
    parts = []
    for e in exc.errors():
        error = e.get("ctx", {}).get("error")
        msg = str(error) if e["type"] == "value_error" and error is not None else e["msg"]
        loc = ".".join(map(str, e["loc"]))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
