"""Greedy generation with ONNX Runtime from the files ``graphprune.export.onnx`` wrote, as HF ``generate`` does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..methods import n_keep
from ..models import UnsupportedModelError
from .manifest import Manifest

FAMILIES = ("llava",)


def _numpy(value, dtype=None) -> np.ndarray | None:
    if value is None:
        return None
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(dtype) if dtype is not None else array


class OrtGenerator:
    """Runs an export (vision → embed → prefill → decode steps) in ONNX Runtime; ``generate`` is greedy.

    ``providers`` are ONNX Runtime execution providers, e.g. ``["TensorrtExecutionProvider",
    "CUDAExecutionProvider"]`` with ``onnxruntime-gpu``; default: CPU.
    """

    def __init__(self, out_dir: str | Path, providers: list | None = None):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("OrtGenerator needs onnxruntime: pip install graphprune[onnx]") from error
        self.folder = Path(out_dir)
        self.manifest = Manifest.read(self.folder)
        if self.manifest.family not in FAMILIES:
            raise UnsupportedModelError(
                f"OrtGenerator runs exports of {', '.join(FAMILIES)}; {self.folder} holds {self.manifest.family!r}"
            )
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {
            name: onnxruntime.InferenceSession(str(self.folder / entry["file"]), providers=providers)
            for name, entry in self.manifest.graphs.items()
        }
        self.dtype = np.dtype(self.manifest.dtype if self.manifest.dtype != "bfloat16" else "float32")

    def _run(self, graph: str, values: dict) -> dict:
        """Run ``graph`` on the entries of ``values`` that it takes; its outputs by name."""
        session = self.sessions[graph]
        feeds = {spec.name: values[spec.name] for spec in session.get_inputs()}
        names = [spec.name for spec in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def _prefill(self, input_ids, pixel_values, attention_mask) -> tuple[np.ndarray, dict]:
        """The prompt's next-token logits, and the decode state: mask, cache and pruned-cache positions."""
        model, budget = self.manifest.model, self.manifest.visual_budget
        input_ids = _numpy(input_ids, np.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length]; got shape {input_ids.shape}")
        mask = np.ones_like(input_ids) if attention_mask is None else _numpy(attention_mask, np.int64)
        visual_counts = (input_ids == model["image_token_id"]).sum(-1)
        if visual_counts.max() > budget["max_visual"]:
            raise ValueError(
                f"a sample holds {visual_counts.max()} visual tokens; this export takes at most {budget['max_visual']} "
                f"({budget['max_images']} images): export again with a larger max_images"
            )
        if pixel_values is None:
            features = np.zeros((0, model["hidden_size"]), self.dtype)
        else:
            features = self._run("vision", {"pixel_values": _numpy(pixel_values, self.dtype)})["image_features"]
            features = features.reshape(-1, features.shape[-1])
        values = self._run("embed", {"input_ids": input_ids, "image_features": features})
        values |= {"attention_mask": mask, "position_ids": np.maximum(mask.cumsum(-1) - 1, 0)}
        method = self.manifest.method
        if method is not None:
            keep = np.array([n_keep(method["keep"], int(count)) for count in visual_counts])
            values["graphprune_visual_mask"] = values.pop("visual_mask")
            values["graphprune_slots"] = np.arange((mask.sum(-1) - (visual_counts - keep)).max())
        out = self._run("prefill", values)
        state = {"attention_mask": mask, "past": {f"past{name[7:]}": v for name, v in out.items() if "present" in name}}
        if method is not None:
            state["graphprune_cache_index"] = out["graphprune_keep_index"]
            state["graphprune_cache_valid"] = out["graphprune_slot_valid"]
        return out["logits"], state

    def _decode(self, tokens: np.ndarray, state: dict) -> np.ndarray:
        """One step for ``tokens [B, 1]``; updates ``state`` in place and returns the logits."""
        empty = np.zeros((0, self.manifest.model["hidden_size"]), self.dtype)
        embeds = self._run("embed", {"input_ids": tokens, "image_features": empty})["inputs_embeds"]
        past_length = state["attention_mask"].shape[1]
        mask = np.concatenate([state["attention_mask"], np.ones_like(tokens)], axis=1)
        values = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": mask.sum(-1, keepdims=True) - 1}
        values |= state["past"]
        if self.manifest.method is not None:
            values["graphprune_cache_index"] = state["graphprune_cache_index"]
            values["graphprune_cache_valid"] = state["graphprune_cache_valid"]
        out = self._run("decode", values)
        state["attention_mask"] = mask
        state["past"] = {f"past{name[7:]}": v for name, v in out.items() if "present" in name}
        if self.manifest.method is not None:
            new_position = np.full_like(tokens, past_length)
            state["graphprune_cache_index"] = np.concatenate([state["graphprune_cache_index"], new_position], axis=1)
            state["graphprune_cache_valid"] = np.concatenate(
                [state["graphprune_cache_valid"], np.ones_like(tokens, dtype=bool)], axis=1
            )
        return out["logits"]

    def prefill_logits(self, input_ids, pixel_values=None, attention_mask=None) -> torch.Tensor:
        """The next-token logits after the prompt, ``[batch, vocab]`` (every sample's last real position)."""
        return torch.from_numpy(self._prefill(input_ids, pixel_values, attention_mask)[0])

    def generate(self, input_ids, pixel_values=None, attention_mask=None, max_new_tokens: int = 20) -> torch.Tensor:
        """Greedy decoding: the prompt ids followed by up to ``max_new_tokens`` new ids, as HF ``generate`` returns.

        Inputs as the model's HF processor makes them (left padding for batches). Samples that end
        with the model's EOS token are padded with ``pad_token_id`` until every sample has ended.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        model = self.manifest.model
        eos = model.get("eos_token_id")
        eos = np.array([] if eos is None else [eos] if isinstance(eos, int) else eos, dtype=np.int64)
        ids = _numpy(input_ids, np.int64)
        logits, state = self._prefill(ids, pixel_values, attention_mask)
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
