"""One weights file for every graph of an export: each initializer is written once, deduplicated by content,
and every graph refers to it as ONNX external data (``location``, ``offset``, ``length``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .progress import byte_progress

FILE = "weights.bin"
INLINE_BYTES = 1024  # smaller initializers (shapes, scalars) stay inside their graph, as onnx's own threshold
ALIGN_BYTES, ALIGN_FROM = 1 << 16, 1 << 20  # tensors of 1 MiB or more start at 64 KiB: ONNX Runtime maps them


class SharedWeights:
    """Appends the initializers of the graphs given to ``add`` to ``folder / FILE``, each distinct one once;
    ``tensors`` records each (its first initializer's name, offset, length, sha256) for the manifest."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / FILE
        self.file = self.path.open("wb")
        self.offsets: dict[tuple, tuple[int, int]] = {}  # (dtype, shape, digest) -> (offset, length)
        self.tensors: list[dict] = []

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def add(self, model) -> None:
        """Point every initializer of ``model`` (an ``onnx_ir.Model``) of ``INLINE_BYTES`` or more at the file,
        writing the ones it does not hold yet, under a bar of the bytes done if that takes over a second."""
        import onnx_ir as ir

        values = [v for v in model.graph.initializers.values() if v.const_value is not None]
        values = [v for v in values if v.const_value.nbytes >= INLINE_BYTES]
        with byte_progress("weights file", sum(v.const_value.nbytes for v in values)) as bar:
            for value in values:
                tensor = value.const_value
                data = tensor.tobytes()
                key = (tensor.dtype, tuple(tensor.shape), hashlib.sha256(data).digest())
                if key not in self.offsets:
                    self.offsets[key] = (self._append(data), len(data))
                    record = {"name": value.name, "offset": self.offsets[key][0], "length": len(data)}
                    self.tensors.append(record | {"sha256": key[2].hex()})
                offset, length = self.offsets[key]
                value.const_value = ir.ExternalTensor(
                    FILE, offset, length, tensor.dtype, shape=tensor.shape, name=value.name, base_dir=self.path.parent
                )
                bar.update(length)

    def _append(self, data: bytes) -> int:
        offset = self.file.tell()
        if len(data) >= ALIGN_FROM and offset % ALIGN_BYTES:
            offset += ALIGN_BYTES - offset % ALIGN_BYTES
            self.file.seek(offset)
        self.file.write(data)
        return offset


class SharedInitializers:
    """ONNX Runtime sessions for the graphs of one export that share its weights: each external-data file is
    mapped into memory once and each of its tensors becomes one ``OrtValue`` on that mapping, given to every
    session that uses it (``SessionOptions.add_initializer``: ONNX Runtime uses the buffer, no copy on CPU).
    Prepacking is off, as it would keep a second, packed copy of every MatMul weight per session."""

    def __init__(self, onnxruntime):
        self.ort = onnxruntime
        self.files: dict[Path, np.ndarray] = {}
        self.values: dict[tuple, object] = {}  # (file, offset, dtype, shape) -> OrtValue

    def session(self, path: Path, providers: list | None = None, options=None):
        """An ``InferenceSession`` for the ONNX file ``path`` on the shared weights."""
        options = options or self.ort.SessionOptions()
        options.add_session_config_entry("session.disable_prepacking", "1")
        for name, (location, offset, length, dtype, shape) in external_initializers(path).items():
            file = Path(path).parent / location
            if dtype.kind not in "fiub" or Path(location).name != location or not file.is_file():
                continue  # bfloat16, a file elsewhere or none: ONNX Runtime reads (or refuses) it itself
            key = (file.resolve(), offset, dtype.str, shape)
            if key not in self.values:
                if file.stat().st_size < offset + length:  # an export older than the manifest's sizes gets here
                    raise ValueError(
                        f"graphprune cannot run {file.parent}: {location} has {file.stat().st_size} bytes, but "
                        f"{Path(path).name} reads up to byte {offset + length} of it (cut short, e.g. by an "
                        "interrupted copy); copy the export again or export the model again"
                    )
                if key[0] not in self.files:
                    self.files[key[0]] = np.memmap(file, dtype=np.uint8, mode="r")
                data = self.files[key[0]][offset : offset + length]
                if length != np.prod(shape, dtype=np.int64) * dtype.itemsize:
                    continue  # ONNX Runtime refuses the graph itself
                self.values[key] = self.ort.OrtValue.ortvalue_from_numpy(data.view(dtype).reshape(shape))
            options.add_initializer(name, self.values[key])
        return self.ort.InferenceSession(str(path), options, providers=providers)


def external_initializers(path: Path) -> dict[str, tuple[str, int, int, np.dtype, tuple[int, ...]]]:
    """The initializers of the ONNX file ``path`` kept in an external file: ``{name: (location, offset, length,
    dtype, shape)}`` (the file's weights are not read)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    found = {}
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        offset, length = int(info.get("offset", 0)), int(info["length"])
        found[tensor.name] = (info["location"], offset, length, dtype, tuple(tensor.dims))
    return found
