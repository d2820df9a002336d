"""What the FastV families' exports share (arXiv 2403.06764): the host-side decoder inputs for ONNX Runtime
(embeddings with the visual features placed, visual mask, the pruned length's slots), the growing pruned
cache index, the decoder's TensorRT axes and the ``TENSORRT.md`` notes."""

from __future__ import annotations

import numpy as np

from ..methods import n_keep, n_slots
from .family import ExportFamily, as_numpy
from .manifest import Manifest

OPT_TEXT = 64  # text tokens of the TensorRT opt prompt (at most max_text)
DEMO_LAYERS = 4  # the decoder layers of the FastV families' demo models (FastV's k must be below)


class FastVFamily(ExportFamily):
    """A family whose decoder runs FastV; ``towers``: ``(kind, graph, pixel input)`` per kind of visual input
    whose ``{graph}.onnx`` maps pixels to ``[n, tokens, hidden]`` features placed at ``{kind}_token_id`` tokens;
    ``title``: the family's name in messages."""

    towers: tuple[tuple[str, str, str], ...] = ()
    title: str

    @classmethod
    def host_inputs(cls, runner, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Embeddings with each tower's features placed at its tokens, visual mask and slots; nothing fixed."""
        cls.refuse_extra(images, tuple(pixels for _, _, pixels in cls.towers))
        cls.check_budget(runner.manifest, input_ids)
        features = {}
        for kind, graph, pixels in cls.towers:
            rows = np.zeros((0, runner.manifest.model["hidden_size"]), runner.dtype)
            if images.get(pixels) is not None:
                rows = runner.run(graph, {pixels: as_numpy(images[pixels], runner.dtype)})[f"{kind}_features"]
                rows = rows.reshape(-1, rows.shape[-1])
            features[f"{kind}_features"] = cls.placeable(runner.manifest, input_ids, kind, rows, pixels)
        return cls.fastv_inputs(runner, input_ids, mask, features), {}

    @classmethod
    def refuse_extra(cls, images: dict, accepted: tuple[str, ...]) -> None:
        """A clear error for visual inputs that the family's export does not take."""
        extra = sorted(name for name, value in images.items() if value is not None and name not in accepted)
        if extra:
            accepts = ", ".join(("input_ids", "attention_mask", *accepted))
            raise ValueError(
                f"graphprune: a {cls.title} export takes {accepts}; got also {extra}: leave them out, or run the "
                "model in PyTorch (graphprune.optimize), which takes them"
            )

    @staticmethod
    def placeable(manifest: Manifest, input_ids, kind: str, rows: np.ndarray, source: str) -> np.ndarray:
        """``rows``, checked to be one feature per ``kind`` token of ``input_ids`` (HF refuses a mismatch too)."""
        tokens = int((input_ids == manifest.model[f"{kind}_token_id"]).sum())
        if len(rows) != tokens:
            raise ValueError(
                f"{source} gives {len(rows)} {kind} features for {tokens} {kind} tokens in input_ids; "
                "pass what the processor made for this prompt"
            )
        return rows

    @staticmethod
    def visual_counts(manifest: Manifest, input_ids) -> np.ndarray:
        """The visual tokens (image and video placeholders) of each sample."""
        ids = [manifest.model[name] for name in ("image_token_id", "video_token_id") if name in manifest.model]
        return np.isin(input_ids, ids).sum(-1)

    @classmethod
    def check_budget(cls, manifest: Manifest, input_ids) -> None:
        """No sample holds more visual tokens than the export's budget (its top-k K was made for that)."""
        budget = manifest.visual_budget
        most = cls.visual_counts(manifest, input_ids).max()
        if most > budget["max_visual"]:
            images = budget.get("max_images")
            limit = f"{budget['max_visual']}" + (f" ({images} images)" if images else "")
            raise ValueError(
                f"a sample holds {most} visual tokens; this export takes at most {limit}: "
                f"export again with a larger {cls.budget}"
            )

    @classmethod
    def fastv_inputs(cls, runner, input_ids, mask, features: dict) -> dict:
        """Embeddings and, when pruned, the visual mask and the pruned length's slots."""
        values = runner.run("embed", {"input_ids": input_ids, **features})
        method = runner.manifest.method
        if method is not None:
            visual_counts = cls.visual_counts(runner.manifest, input_ids)
            values["graphprune_visual_mask"] = values.pop("visual_mask")
            values["graphprune_slots"] = np.arange(n_slots(method["keep"], mask.sum(-1), visual_counts))
        return values

    @classmethod
    def after_step(cls, state: dict, tokens: np.ndarray, past_length: int) -> None:
        """The pruned layers' cache grows by the new tokens: their original positions, valid."""
        new_position = np.full_like(tokens, past_length)
        state["graphprune_cache_index"] = np.concatenate([state["graphprune_cache_index"], new_position], axis=1)
        state["graphprune_cache_valid"] = np.concatenate(
            [state["graphprune_cache_valid"], np.ones_like(tokens, dtype=bool)], axis=1
        )

    @staticmethod
    def text_axes(manifest: Manifest, max_batch: int, max_text: int, max_new_tokens: int, opt_visual: int) -> dict:
        """The decoder axes: a prompt of at most the visual budget plus ``max_text`` tokens; ``opt_visual``
        visual tokens at opt."""
        max_sequence = manifest.visual_budget["max_visual"] + max_text
        opt_sequence = opt_visual + min(OPT_TEXT, max_text)
        dropped = opt_visual - n_keep(manifest.method["keep"], opt_visual) if manifest.method else 0
        max_total = max_sequence + max_new_tokens
        return {
            "batch": (1, 1, max_batch),
            "sequence": (1, opt_sequence, max_sequence),
            "pruned_sequence": (1, opt_sequence - dropped, max_sequence),
            "new_tokens": (1, 1, 1),
            "past": (1, opt_sequence, max_total - 1),
            "pruned_past": (1, opt_sequence - dropped, max_total - 1),
            "total": (2, opt_sequence + 1, max_total),
        }

    @classmethod
    def recipe_notes(cls, manifest: Manifest) -> tuple[str, str, str]:
        budget, method = manifest.visual_budget, manifest.method
        pruning = (
            f"{' '.join(f'{key}={value}' for key, value in method.items())}: the ranking (TopK with a constant "
            f"K={budget['top_k']}, sorted) and gather nodes sit inside prefill.onnx after layer {method['k'] - 1}."
            if method
            else "none (an unpruned baseline export)."
        )
        visual = (
            f"at most {budget['max_images']} image(s) of {budget['tokens_per_image']} visual tokens per sample"
            if "max_images" in budget
            else f"at most {budget['max_visual']} visual tokens (images and video frames) per sample"
        )
        cache = (
            f" Layers >= {manifest.first_pruned_layer} hold the shorter, pruned cache; `graphprune_cache_index` and\n"
            "`graphprune_cache_valid` (the prefill's `graphprune_keep_index` / `graphprune_slot_valid`, grown by\n"
            "one position per step) say which original positions it holds."
            if method
            else ""
        )
        return pruning, visual, cache
