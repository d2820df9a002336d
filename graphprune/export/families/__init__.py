"""The exportable families, one module each; importing this package registers every one of them
(``family.register_family``), so adding a family is adding a module here."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
