"""The model families graphprune knows, one folder each (``graphprune/families/<name>/``); ``FAMILIES`` lists the
``FAMILY`` record of every folder, found on the disk, so adding a family is adding a folder.

Importing this package imports the records only (``record.Family``); their "module:attribute" references load
on use (``record.resolve``).
"""

from __future__ import annotations

import importlib
import pkgutil

from .record import Family, resolve

FAMILIES: tuple[Family, ...] = tuple(
    importlib.import_module(f"{__name__}.{folder.name}").FAMILY
    for folder in sorted(pkgutil.iter_modules(__path__), key=lambda folder: folder.name)
    if folder.ispkg
)


def family_named(name: str) -> Family | None:
    """The record whose ``name`` is ``name`` (an adapter's name, as manifests and reports hold it); None if none."""
    return next((family for family in FAMILIES if family.name == name), None)


def family_of_class(class_name: str) -> Family | None:
    """The record that accepts the transformers class ``class_name``; None if none."""
    return next((family for family in FAMILIES if class_name in family.model_classes), None)


__all__ = ["FAMILIES", "Family", "family_named", "family_of_class", "resolve"]
