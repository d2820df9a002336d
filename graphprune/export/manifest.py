"""``manifest.json``: what an export holds, so that a runtime needs no PyTorch model to run it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "manifest.json"
FORMATS = ("onnx", "torch_tensorrt")


@dataclass(frozen=True)
class Manifest:
    """An export's files and their signatures, the method and its parameters, and the model facts a runtime needs.

    ``graphs`` maps a graph name to ``{"file", "inputs", "outputs", "dynamic_axes"}``; every input and
    output is ``{"name", "dtype", "shape"}`` where a string in ``shape`` is a dynamic axis.
    ``method`` is None for an unpruned export (``prune=False``).
    """

    format: str
    family: str
    method: dict | None
    first_pruned_layer: int | None
    visual_budget: dict
    model: dict
    dtype: str
    opset: int
    graphprune_version: str
    graphs: dict[str, dict]

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"manifest format must be one of {FORMATS}; got {self.format!r}")
        if not self.graphs:
            raise ValueError("a manifest lists at least one graph")
        for name, graph in self.graphs.items():
            missing = {"file", "inputs", "outputs", "dynamic_axes"} - set(graph)
            if missing:
                raise ValueError(f"manifest graph {name!r} lacks {sorted(missing)}")
        if (self.method is None) != (self.first_pruned_layer is None):
            raise ValueError("a manifest has both a method and its first pruned layer, or neither (unpruned)")

    def input_names(self, graph: str) -> list[str]:
        return [spec["name"] for spec in self.graphs[graph]["inputs"]]

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass a folder written by graphprune.export.onnx")
        return cls(**json.loads(path.read_text()))
