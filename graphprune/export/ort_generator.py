"""Greedy generation with ONNX Runtime from the files ``graphprune.export.onnx`` wrote, as HF ``generate`` does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..padding import refuse_right_padding
from .family import as_numpy, export_family
from .integrity import damaged, problems, unverifiable
from .manifest import FILE, Manifest
from .shared_weights import SharedInitializers


def _few(names: list[str]) -> str:
    return "[" + ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "") + "]"


class OrtGenerator:
    """Runs an export (vision → embed → prefill → decode steps; Mllama also masks) in ONNX Runtime; greedy.

    Positions are formed on the host as HF ``generate`` forms them (Qwen2-VL: M-RoPE from the
    image and video grids); each new token continues from the last prompt position. The export's weights
    file is mapped into memory once and shared by all the sessions.

    ``providers`` are ONNX Runtime execution providers, e.g. ``["TensorrtExecutionProvider",
    "CUDAExecutionProvider"]`` with ``onnxruntime-gpu``; default: CPU.

    The sizes of the files are checked against the manifest before any session is made; with ``verify`` every
    graph file's and weight tensor's checksum too (reads every byte; ``graphprune verify PATH`` does the same).
    """

    def __init__(self, out_dir: str | Path, providers: list | None = None, verify: bool = False):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("OrtGenerator needs onnxruntime: pip install graphprune[onnx]") from error
        self.folder = Path(out_dir)
        self.manifest = Manifest.read(self.folder)
        if self.manifest.format != "onnx":
            raise ValueError(
                f"graphprune's OrtGenerator runs ONNX exports; {self.folder} holds a {self.manifest.format} export"
            )
        self.family = export_family(
            self.manifest.family,
            f"graphprune's OrtGenerator cannot run {self.folder}: it holds {self.manifest.family!r}",
        )
        missing = [graph for graph in self.family.graphs if graph not in self.manifest.graphs]
        if missing:
            raise ValueError(
                f"graphprune cannot run {self.folder}: its {FILE} lists no {missing} graph, which a "
                f"{self.manifest.family} export has; export the model again"
            )
        self._check_files(verify)
        providers = providers or ["CPUExecutionProvider"]
        self.weights = SharedInitializers(onnxruntime)  # the sessions use its buffers: it lives as long as they do
        self.sessions = {name: self._session(name, self.weights, providers) for name in self.manifest.graphs}
        self.dtype = np.dtype(self.manifest.dtype if self.manifest.dtype != "bfloat16" else "float32")

    def _check_files(self, verify: bool) -> None:
        """A one-line error naming the first missing or damaged file (with ``verify``, or tensor) of the export."""
        reason = unverifiable(self.folder, self.manifest)
        if verify and reason:
            raise ValueError(reason)
        for graph, entry in self.manifest.graphs.items():
            if not (self.folder / entry["file"]).is_file():
                raise FileNotFoundError(
                    f"graphprune cannot run {self.folder}: {entry['file']} (the {graph!r} graph in {FILE}) is missing"
                )
        found = problems(self.folder, self.manifest, checksums=verify)
        if found:
            raise damaged(self.folder, found)

    def _session(self, graph: str, shared: SharedInitializers, providers: list):
        """``graph``'s ONNX Runtime session on the weights ``shared`` by all the sessions (each loaded once);
        its file must take and give the names that the manifest lists."""
        path = self.folder / self.manifest.graphs[graph]["file"]
        session = shared.session(path, providers)
        listed = (self.manifest.input_names(graph), self.manifest.output_names(graph))
        found = ([spec.name for spec in session.get_inputs()], [spec.name for spec in session.get_outputs()])
        for side, expected, actual in zip(("inputs", "outputs"), listed, found, strict=True):
            if sorted(actual) != sorted(expected):
                lacks, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
                raise ValueError(
                    f"graphprune cannot run {self.folder}: {path.name} is not the {graph!r} graph that {FILE} "
                    f"lists (its {side} lack {_few(lacks)} and have {_few(extra)} besides); export the model again"
                )
        return session

    def run(self, graph: str, values: dict) -> dict:
        """Run ``graph`` on the entries of ``values`` that it takes; its outputs by name."""
        session = self.sessions[graph]
        feeds = {spec.name: values[spec.name] for spec in session.get_inputs()}
        names = [spec.name for spec in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def empty(self, graph: str, name: str) -> np.ndarray:
        """No rows of ``graph``'s input ``name``: a size of 0 on its axis 0, its other axes as the file declares."""
        shape = next(spec.shape for spec in self.sessions[graph].get_inputs() if spec.name == name)
        return np.zeros((0, *shape[1:]), self.dtype)

    def _prompt(self, input_ids, attention_mask, images: dict) -> tuple[dict, dict]:
        """The prefill graph's inputs for a prompt (from the vision, embed and mask graphs and the host),
        and the inputs that stay fixed while decoding (Mllama's vision features)."""
        input_ids = as_numpy(input_ids, np.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length]; got shape {input_ids.shape}")
        mask = np.ones_like(input_ids) if attention_mask is None else as_numpy(attention_mask, np.int64)
        refuse_right_padding(mask)  # every prefill graph (the unpruned baseline's too) puts the last real token last
        values, fixed = self.family.host_inputs(self, input_ids, mask, images)
        values.setdefault("position_ids", np.maximum(mask.cumsum(-1) - 1, 0))
        values["attention_mask"] = mask
        return values, fixed

    def _prefill(self, input_ids, attention_mask, images: dict) -> tuple[np.ndarray, dict]:
        """The prompt's next-token logits, and the decode state: mask, cache, pruned-cache positions, fixed inputs."""
        values, fixed = self._prompt(input_ids, attention_mask, images)
        out = self.run("prefill", values)
        mask = values["attention_mask"]
        state = {"attention_mask": mask, "past": {f"past{name[7:]}": v for name, v in out.items() if "present" in name}}
        state |= {"fixed": fixed, "position_ids": values["position_ids"][..., -1:]}
        if self.manifest.method is not None:
            state["graphprune_cache_index"] = out["graphprune_keep_index"]
            state["graphprune_cache_valid"] = out["graphprune_slot_valid"]
        return out["logits"], state

    def prefill_inputs(self, input_ids, pixel_values=None, attention_mask=None, **images) -> dict[str, np.ndarray]:
        """What ``prefill.onnx`` gets for a prompt, by input name (e.g. to time or profile that graph alone)."""
        values, _ = self._prompt(input_ids, attention_mask, {"pixel_values": pixel_values, **images})
        return {spec.name: values[spec.name] for spec in self.sessions["prefill"].get_inputs()}

    def _decode(self, tokens: np.ndarray, state: dict) -> np.ndarray:
        """One step for ``tokens [B, 1]``; updates ``state`` in place and returns the logits."""
        names = [spec.name for spec in self.sessions["embed"].get_inputs() if spec.name != "input_ids"]
        features = {name: self.empty("embed", name) for name in names}
        embeds = self.run("embed", {"input_ids": tokens, **features})["inputs_embeds"]
        past_length = state["attention_mask"].shape[1]
        mask = np.concatenate([state["attention_mask"], np.ones_like(tokens)], axis=1)
        state["position_ids"] = state["position_ids"] + 1
        values = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": state["position_ids"]}
        values |= state["past"] | state["fixed"]
        if self.manifest.method is not None:
            values["graphprune_cache_index"] = state["graphprune_cache_index"]
            values["graphprune_cache_valid"] = state["graphprune_cache_valid"]
        out = self.run("decode", values)
        state["attention_mask"] = mask
        state["past"] = {f"past{name[7:]}": v for name, v in out.items() if "present" in name}
        if self.manifest.method is not None:
            self.family.after_step(state, tokens, past_length)
        return out["logits"]

    def prefill_logits(self, input_ids, pixel_values=None, attention_mask=None, **images) -> torch.Tensor:
        """The next-token logits after the prompt, ``[batch, vocab]`` (every sample's last real position).

        ``images``: Mllama's ``aspect_ratio_ids``, ``aspect_ratio_mask`` and ``cross_attention_mask``;
        Qwen2-VL's ``image_grid_thw``, ``pixel_values_videos``, ``video_grid_thw`` and ``mm_token_type_ids``.
        """
        return torch.from_numpy(self._prefill(input_ids, attention_mask, {"pixel_values": pixel_values, **images})[0])

    def generate(
        self, input_ids, pixel_values=None, attention_mask=None, max_new_tokens: int = 20, **images
    ) -> torch.Tensor:
        """Greedy decoding: the prompt ids followed by up to ``max_new_tokens`` new ids, as HF ``generate`` returns.

        Inputs as the model's HF processor makes them (left padding for batches; ``images``: Mllama's
        ``aspect_ratio_ids``, ``aspect_ratio_mask`` and ``cross_attention_mask``; Qwen2-VL's grids,
        video pixels and ``mm_token_type_ids``). Samples that end
        with the model's EOS token are padded with ``pad_token_id`` until every sample has ended.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        model = self.manifest.model
        eos = model.get("eos_token_id")
        eos = np.array([] if eos is None else [eos] if isinstance(eos, int) else eos, dtype=np.int64)
        ids = as_numpy(input_ids, np.int64)
        logits, state = self._prefill(ids, attention_mask, {"pixel_values": pixel_values, **images})
        unfinished = np.ones(ids.shape[0], dtype=bool)
        for step in range(max_new_tokens):
            tokens = logits.argmax(-1)
            tokens = np.where(unfinished, tokens, model["pad_token_id"] if model["pad_token_id"] is not None else 0)
            ids = np.concatenate([ids, tokens[:, None]], axis=1)
            unfinished &= ~np.isin(tokens, eos)
            if not unfinished.any() or step == max_new_tokens - 1:
                break
            logits = self._decode(tokens[:, None], state)
        return torch.from_numpy(ids)
