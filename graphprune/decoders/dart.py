"""DART's registration: FastV's decoder stand-in, decode pass, budget, report and FLOPs with DART's prefill pass."""

from __future__ import annotations

import dataclasses

from ..methods import DART
from ..passes import dart
from ..registry import register_method
from .fastv import HANDLER as FASTV_HANDLER

HANDLER = register_method(dataclasses.replace(FASTV_HANDLER, method=DART, prefill_pass=dart))
