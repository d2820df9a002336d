"""Methods written as strings, as the command line and the sweep take them: ``"fastv:k=2,keep=0.5"``.

``NAME[:OPTION=VALUE,...]``; ``NAME`` is the method's class name in any case, with or without ``_``/``-``
(``fastv``, ``crossattentiontrim``, ``cross_attention_trim``) or the short ``trim``; several methods are separated
by ``;``. Values are read as int, then float, else kept as text; ``/`` separates a sequence (``layers=8/16/24``).
``methods.method_from_dict`` checks them.
"""

from __future__ import annotations

from dataclasses import asdict

from .methods import METHODS, Method, method_from_dict

ALIASES = {"trim": "CrossAttentionTrim"}
EXAMPLE = "fastv:k=2,keep=0.5"


def class_name(name: str) -> str | None:
    """The method class name that ``name`` means (any case, ``_``/``-`` ignored, or an alias); None if none."""
    key = name.strip().lower().replace("_", "").replace("-", "")
    names = {kind.__name__.lower(): kind.__name__ for kind in METHODS} | ALIASES
    return names.get(key)


def _value(text: str) -> int | float | str | tuple:
    if "/" in text:  # a sequence, as PDrop's layers=8/16/24
        return tuple(_value(part.strip()) for part in text.split("/"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method(text: str) -> Method:
    """The method that ``text`` (``NAME[:OPTION=VALUE,...]``) names; else a one-line ``ValueError`` saying what
    was wrong and what is accepted."""
    name, _, options = text.partition(":")
    entry: dict = {"name": class_name(name)}
    try:
        if entry["name"] is None:
            accepted = ", ".join([kind.__name__.lower() for kind in METHODS] + list(ALIASES))
            raise ValueError(f"unknown method {name.strip()!r} (methods: {accepted})")
        for option in filter(None, (part.strip() for part in options.split(","))):
            key, equals, value = option.partition("=")
            if not equals or not key.strip() or not value.strip():
                raise ValueError(f"{option!r} is not OPTION=VALUE")
            if key.strip() in entry:
                raise ValueError(f"{key.strip()!r} is given twice")
            entry[key.strip()] = _value(value.strip())
        return method_from_dict(entry)
    except ValueError as error:
        raise ValueError(
            f"graphprune: bad method string {text!r}: {error}; write NAME:OPTION=VALUE,... such as {EXAMPLE!r}"
        ) from None


def parse_methods(text: str) -> list[Method]:
    """The methods of ``text``, ``;``-separated (``"fastv:keep=0.5;fastv:keep=0.25"``); at least one."""
    parts = [part for part in (part.strip() for part in text.split(";")) if part]
    if not parts:
        raise ValueError(f"graphprune: no method in {text!r}; write NAME:OPTION=VALUE,... such as {EXAMPLE!r}")
    return [parse_method(part) for part in parts]


def method_string(method: Method) -> str:
    """``method`` written the way ``parse_method`` reads it back (every option, in field order)."""
    options = ",".join(
        f"{key}={'/'.join(map(str, value)) if isinstance(value, tuple) else value}"
        for key, value in asdict(method).items()
    )
    return f"{type(method).__name__.lower()}:{options}"
