"""``manifest.json``: what an export holds, so that a runtime needs no PyTorch model to run it."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from ..methods import method_from_dict
from .family import export_families

FILE = "manifest.json"
FORMATS = ("onnx", "torch_tensorrt")
PRODUCER = "graphprune"  # the "producer" entry: how graphprune recognises its own exports (overwrite=True)
NONE = type(None)
TYPES = {  # every entry's JSON type
    "format": str,
    "family": str,
    "method": (dict, NONE),
    "first_pruned_layer": (int, NONE),
    "visual_budget": dict,
    "model": dict,
    "dtype": str,
    "opset": int,
    "graphprune_version": str,
    "graphs": dict,
    "weights": (str, NONE),
    "producer": str,
    "files": (dict, NONE),
}
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an int", NONE: "null"}
GRAPH_TYPES = {"file": str, "inputs": list, "outputs": list, "dynamic_axes": dict}
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Manifest:
    """An export's files and their signatures, the method and its parameters, and the model facts a runtime needs.

    ``graphs`` maps a graph name to ``{"file", "inputs", "outputs", "dynamic_axes"}``; every input and
    output is ``{"name", "dtype", "shape"}`` where a string in ``shape`` is a dynamic axis.
    ``method`` is None for an unpruned export (``prune=False``). ``weights`` names the file in the folder that
    holds every graph's weights once (ONNX external data), None where the graphs hold their own.
    ``producer`` is always ``"graphprune"``. ``files`` records the size and checksums of every file the runtime
    reads (``integrity.file_records``); None in a TensorRT export and in the exports of older graphprune versions.
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
    weights: str | None = None
    producer: str = PRODUCER
    files: dict | None = None

    def __post_init__(self) -> None:
        for key, kind in TYPES.items():
            if not isinstance(getattr(self, key), kind):
                raise ValueError(f"manifest entry {key!r} must be {_names(kind)}; got {getattr(self, key)!r:.60}")
        if self.format not in FORMATS:
            raise ValueError(f"manifest format must be one of {FORMATS}; got {self.format!r}")
        if self.producer != PRODUCER:
            raise ValueError(f"manifest producer must be {PRODUCER!r}; got {self.producer!r}")
        if not self.graphs:
            raise ValueError("a manifest lists at least one graph")
        for name, graph in self.graphs.items():
            if not isinstance(graph, dict):
                raise ValueError(f"manifest graph {name!r} must be an object; got {graph!r:.60}")
            missing = set(GRAPH_TYPES) - set(graph)
            if missing:
                raise ValueError(f"manifest graph {name!r} lacks {sorted(missing)}")
            for key, kind in GRAPH_TYPES.items():
                if not isinstance(graph[key], kind):
                    raise ValueError(f"manifest graph {name!r}: {key!r} must be {_names(kind)}")
            for spec in graph["inputs"] + graph["outputs"]:
                if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                    raise ValueError(f"manifest graph {name!r}: every input and output needs a name; got {spec!r:.60}")
        if (self.method is None) != (self.first_pruned_layer is None):
            raise ValueError("a manifest has both a method and its first pruned layer, or neither (unpruned)")
        if self.weights is not None and Path(self.weights).name != self.weights:
            raise ValueError(f"manifest weights must be a file name in the export folder; got {self.weights!r:.60}")
        if self.dtype not in DTYPES:
            raise ValueError(f"manifest dtype must be one of {DTYPES}; got {self.dtype!r:.60}")
        family = export_families().get(self.family)  # an unknown family is refused by what runs the export
        for entry, required in (("model", "model_keys"), ("visual_budget", "budget_keys")):
            missing = [key for key in getattr(family, required, ()) if key not in getattr(self, entry)]
            if missing:
                raise ValueError(f"manifest entry {entry!r} of a {self.family} export lacks {missing}")
        if self.method is not None:
            try:
                method_from_dict(self.method)
            except ValueError as error:
                raise ValueError(f"manifest method: {error}") from None

    def input_names(self, graph: str) -> list[str]:
        return [spec["name"] for spec in self.graphs[graph]["inputs"]]

    def output_names(self, graph: str) -> list[str]:
        return [spec["name"] for spec in self.graphs[graph]["outputs"]]

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest in ``folder``; a ``ValueError`` naming the file and what is wrong unless it is valid."""
        path = Path(folder) / FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass a folder written by graphprune.export.onnx")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"a manifest is a JSON object; got {type(data).__name__}")
            missing = sorted({f.name for f in fields(cls) if f.default is MISSING} - set(data))
            unknown = sorted(set(data) - {f.name for f in fields(cls)})
            if missing or unknown:
                raise ValueError(f"missing keys {missing}" if missing else f"unknown keys {unknown}")
            return cls(**data)
        except ValueError as error:  # json's errors are ValueErrors too
            raise ValueError(
                f"graphprune cannot read {path}: {error}; write the folder again with graphprune.export.onnx"
            ) from None


def _names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(JSON_NAMES[k] for k in kinds)
