"""Greedy generation with ONNX Runtime from the files ``graphprune.export.onnx`` wrote, as HF ``generate`` does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..methods import n_keep
from ..models import UnsupportedModelError
from ..padding import refuse_right_padding
from .manifest import FILE, Manifest
from .qwen2_vl import mrope_positions, token_types, video_intervals, vision_segments

FAMILIES = {  # the graphs each family's export holds
    "llava": ("vision", "embed", "prefill", "decode"),
    "mllama": ("vision", "masks", "embed", "prefill", "decode"),
    "qwen2-vl": ("vision", "embed", "prefill", "decode"),
    "video-llava": ("vision", "video", "embed", "prefill", "decode"),
}
QWEN2_VL_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "mm_token_type_ids",
)
# (kind, graph, pixel input) per tower of the LLaVA-style families
LLAVA_TOWERS = (("image", "vision", "pixel_values"),)
VIDEO_LLAVA_TOWERS = (("image", "vision", "pixel_values_images"), ("video", "video", "pixel_values_videos"))
MLLAMA_IMAGE_INPUTS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


def _numpy(value, dtype=None) -> np.ndarray | None:
    if value is None:
        return None
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(dtype) if dtype is not None else array


def _few(names: list[str]) -> str:
    return "[" + ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "") + "]"


def _refuse_extra(images: dict, accepted: tuple[str, ...], family: str) -> None:
    """A clear error for visual inputs that ``family``'s export does not take."""
    extra = sorted(name for name, value in images.items() if value is not None and name not in accepted)
    if extra:
        accepts = ", ".join(("input_ids", "attention_mask", *accepted))
        raise ValueError(f"a {family} export takes {accepts}; got also {extra}")


class OrtGenerator:
    """Runs an export (vision → embed → prefill → decode steps; Mllama also masks) in ONNX Runtime; greedy.

    Positions are formed on the host as HF ``generate`` forms them (Qwen2-VL: M-RoPE from the
    image and video grids); each new token continues from the last prompt position.

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
        if self.manifest.format != "onnx":
            raise ValueError(
                f"graphprune's OrtGenerator runs ONNX exports; {self.folder} holds a {self.manifest.format} export"
            )
        if self.manifest.family not in FAMILIES:
            raise UnsupportedModelError(
                f"OrtGenerator runs exports of {', '.join(FAMILIES)}; {self.folder} holds {self.manifest.family!r}"
            )
        missing = [graph for graph in FAMILIES[self.manifest.family] if graph not in self.manifest.graphs]
        if missing:
            raise ValueError(
                f"graphprune cannot run {self.folder}: its {FILE} lists no {missing} graph, which a "
                f"{self.manifest.family} export has; export the model again"
            )
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {name: self._session(name, onnxruntime, providers) for name in self.manifest.graphs}
        self.dtype = np.dtype(self.manifest.dtype if self.manifest.dtype != "bfloat16" else "float32")

    def _session(self, graph: str, onnxruntime, providers: list):
        """``graph``'s ONNX Runtime session; its file must take and give the names that the manifest lists."""
        path = self.folder / self.manifest.graphs[graph]["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"graphprune cannot run {self.folder}: {path.name} (the {graph!r} graph in {FILE}) is missing"
            )
        session = onnxruntime.InferenceSession(str(path), providers=providers)
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

    def _run(self, graph: str, values: dict) -> dict:
        """Run ``graph`` on the entries of ``values`` that it takes; its outputs by name."""
        session = self.sessions[graph]
        feeds = {spec.name: values[spec.name] for spec in session.get_inputs()}
        names = [spec.name for spec in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def _prompt(self, input_ids, attention_mask, images: dict) -> tuple[dict, dict]:
        """The prefill graph's inputs for a prompt (from the vision, embed and mask graphs and the host),
        and the inputs that stay fixed while decoding (Mllama's vision features)."""
        input_ids = _numpy(input_ids, np.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length]; got shape {input_ids.shape}")
        mask = np.ones_like(input_ids) if attention_mask is None else _numpy(attention_mask, np.int64)
        refuse_right_padding(mask)  # every prefill graph (the unpruned baseline's too) puts the last real token last
        family_inputs = {
            "mllama": self._mllama_inputs,
            "qwen2-vl": self._qwen2_vl_inputs,
            "video-llava": self._video_llava_inputs,
        }.get(self.manifest.family, self._llava_inputs)
        values, fixed = family_inputs(input_ids, mask, images)
        values.setdefault("position_ids", np.maximum(mask.cumsum(-1) - 1, 0))
        values["attention_mask"] = mask
        return values, fixed

    def _prefill(self, input_ids, attention_mask, images: dict) -> tuple[np.ndarray, dict]:
        """The prompt's next-token logits, and the decode state: mask, cache, pruned-cache positions, fixed inputs."""
        values, fixed = self._prompt(input_ids, attention_mask, images)
        out = self._run("prefill", values)
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

    def _llava_inputs(self, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """LLaVA's prefill inputs (embeddings with the image features placed, visual mask, slots); nothing fixed."""
        return self._tower_inputs(input_ids, mask, images, "LLaVA", LLAVA_TOWERS), {}

    def _video_llava_inputs(self, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Video-LLaVA's prefill inputs: embeddings with the image and video features placed (image and
        video towers), visual mask and slots; nothing fixed."""
        return self._tower_inputs(input_ids, mask, images, "Video-LLaVA", VIDEO_LLAVA_TOWERS), {}

    def _tower_inputs(self, input_ids, mask, images: dict, family: str, towers: tuple) -> dict:
        """Embeddings with each tower's features placed at its tokens, visual mask and slots (FastV).

        ``towers``: ``(kind, graph, pixel input)`` per kind of visual input; ``{graph}.onnx`` maps the
        pixels to ``[n, tokens, hidden]`` features, placed at ``{kind}_token_id`` tokens."""
        _refuse_extra(images, tuple(pixels for _, _, pixels in towers), family)
        self._check_budget(input_ids)
        features = {}
        for kind, graph, pixels in towers:
            rows = np.zeros((0, self.manifest.model["hidden_size"]), self.dtype)
            if images.get(pixels) is not None:
                rows = self._run(graph, {pixels: _numpy(images[pixels], self.dtype)})[f"{kind}_features"]
                rows = rows.reshape(-1, rows.shape[-1])
            features[f"{kind}_features"] = self._placeable(input_ids, kind, rows, pixels)
        return self._fastv_inputs(input_ids, mask, features)

    def _placeable(self, input_ids, kind: str, rows: np.ndarray, source: str) -> np.ndarray:
        """``rows``, checked to be one feature per ``kind`` token of ``input_ids`` (HF refuses a mismatch too)."""
        tokens = int((input_ids == self.manifest.model[f"{kind}_token_id"]).sum())
        if len(rows) != tokens:
            raise ValueError(
                f"{source} gives {len(rows)} {kind} features for {tokens} {kind} tokens in input_ids; "
                "pass what the processor made for this prompt"
            )
        return rows

    def _qwen2_vl_inputs(self, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Qwen2-VL's (and Qwen2.5-VL's) prefill inputs: embeddings with the image and video features placed
        (one vision run per image or video frame group), M-RoPE positions, visual mask and slots; nothing fixed."""
        _refuse_extra(images, QWEN2_VL_INPUTS, "Qwen2-VL")
        model = self.manifest.model
        self._check_budget(input_ids)
        features, grids = {}, {}
        for kind, pixels in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            grids[kind] = _numpy(images.get(f"{kind}_grid_thw"), np.int64)
            rows = self._segment_features(kind, _numpy(images.get(pixels)), grids[kind])
            features[f"{kind}_features"] = self._placeable(input_ids, kind, rows, f"{kind}_grid_thw")
        types = images.get("mm_token_type_ids")
        types = token_types(input_ids, model["image_token_id"], model["video_token_id"]) if types is None else types
        empty = np.zeros((0, 3), np.int64)
        values = self._fastv_inputs(input_ids, mask, features)
        values["position_ids"] = mrope_positions(
            _numpy(types, np.int64),
            mask,
            empty if grids["image"] is None else grids["image"],
            empty if grids["video"] is None else grids["video"],
            model["spatial_merge_size"],
            video_intervals(
                model.get("tokens_per_second"),
                _numpy(images.get("second_per_grid_ts"), np.float32),
                0 if grids["video"] is None else len(grids["video"]),
                model.get("video_seconds"),
            ),
        )
        return values, {}

    def _segment_features(self, kind: str, pixel_rows: np.ndarray | None, grids: np.ndarray | None) -> np.ndarray:
        """Qwen2-VL's features of every image (or video), in order: one vision run per segment."""
        model, pixels = self.manifest.model, "pixel_values" if kind == "image" else "pixel_values_videos"
        if (pixel_rows is None) != (grids is None):
            raise ValueError(f"pass {pixels} and {kind}_grid_thw together, as the processor makes them")
        if grids is None:
            return np.zeros((0, model["hidden_size"]), self.dtype)
        if len(pixel_rows) != grids.prod(-1).sum():
            raise ValueError(
                f"{pixels} has {len(pixel_rows)} patch rows; {kind}_grid_thw describes {grids.prod(-1).sum()}"
            )
        segments = vision_segments(
            pixel_rows.astype(self.dtype), grids, model["spatial_merge_size"], model.get("vision_window")
        )
        return np.concatenate([self._run("vision", feeds)["image_features"] for feeds in segments])

    def _visual_counts(self, input_ids) -> np.ndarray:
        model = self.manifest.model
        return np.isin(input_ids, [model[name] for name in ("image_token_id", "video_token_id") if name in model]).sum(
            -1
        )

    def _check_budget(self, input_ids) -> None:
        """No sample holds more visual tokens than the export's budget (its top-k K was made for that)."""
        budget = self.manifest.visual_budget
        most = self._visual_counts(input_ids).max()
        if most > budget["max_visual"]:
            images = budget.get("max_images")
            limit = f"{budget['max_visual']}" + (f" ({images} images)" if images else "")
            raise ValueError(
                f"a sample holds {most} visual tokens; this export takes at most {limit}: "
                f"export again with a larger {'max_images' if images else 'max_visual_tokens'}"
            )

    def _fastv_inputs(self, input_ids, mask, features: dict) -> dict:
        """Embeddings and, for FastV (arXiv 2403.06764), the visual mask and the pruned length's slots."""
        values = self._run("embed", {"input_ids": input_ids, **features})
        method = self.manifest.method
        if method is not None:
            visual_counts = self._visual_counts(input_ids)
            keep = np.array([n_keep(method["keep"], int(count)) for count in visual_counts])
            values["graphprune_visual_mask"] = values.pop("visual_mask")
            values["graphprune_slots"] = np.arange((mask.sum(-1) - (visual_counts - keep)).max())
        return values

    def _mllama_inputs(self, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Mllama's prefill inputs (CrossAttentionTrim, arXiv 2504.00557): embeddings, vision features, the
        decoder's cross-attention masks, the trimmed slots; fixed decode inputs: the masks of a new token,
        whose processor mask row repeats the prompt's last one (as HF ``generate`` extends it)."""
        if any(images.get(name) is None for name in MLLAMA_IMAGE_INPUTS):
            raise ValueError(
                f"a Mllama export runs prompts with images: pass {', '.join(MLLAMA_IMAGE_INPUTS)} as the processor "
                "makes them (text-only prompts skip the cross-attention layers: run the PyTorch model)"
            )
        budget = self.manifest.visual_budget
        processor_mask = _numpy(images["cross_attention_mask"], np.int64)
        if processor_mask.shape[2] > budget["max_images"]:
            raise ValueError(
                f"the inputs hold {processor_mask.shape[2]} image slots per sample; this export takes at most "
                f"{budget['max_images']}: export again with a larger max_images"
            )
        vision = {"pixel_values": _numpy(images["pixel_values"], self.dtype)}
        vision |= {name: _numpy(images[name], np.int64) for name in ("aspect_ratio_ids", "aspect_ratio_mask")}
        values = self._run("embed", {"input_ids": input_ids})
        values |= self._run("vision", vision)
        values |= self._masks(processor_mask)
        fixed = self._masks(processor_mask[:, -1:])
        method = self.manifest.method
        if method is not None:
            seen = ((processor_mask == 1) & (mask[:, :, None, None] == 1)).any(axis=1)  # [B, images, tiles]
            valid = seen.sum(axis=(1, 2)) * budget["features_per_tile"]
            values["graphprune_slots"] = np.arange(max(n_keep(method["keep"], int(n)) for n in valid))
        return values, fixed

    def _masks(self, processor_mask: np.ndarray) -> dict:
        out = self._run("masks", {"cross_attention_mask": processor_mask})
        return {
            "cross_attention_mask": out["decoder_cross_attention_mask"],
            "full_text_row_masked_out_mask": out["full_text_row_masked_out_mask"],
        }

    def _decode(self, tokens: np.ndarray, state: dict) -> np.ndarray:
        """One step for ``tokens [B, 1]``; updates ``state`` in place and returns the logits."""
        empty = np.zeros((0, self.manifest.model["hidden_size"]), self.dtype)
        features = {spec.name: empty for spec in self.sessions["embed"].get_inputs() if spec.name != "input_ids"}
        embeds = self._run("embed", {"input_ids": tokens, **features})["inputs_embeds"]
        past_length = state["attention_mask"].shape[1]
        mask = np.concatenate([state["attention_mask"], np.ones_like(tokens)], axis=1)
        state["position_ids"] = state["position_ids"] + 1
        values = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": state["position_ids"]}
        values |= state["past"] | state["fixed"]
        if self.manifest.method is not None:
            values["graphprune_cache_index"] = state["graphprune_cache_index"]
            values["graphprune_cache_valid"] = state["graphprune_cache_valid"]
        out = self._run("decode", values)
        state["attention_mask"] = mask
        state["past"] = {f"past{name[7:]}": v for name, v in out.items() if "present" in name}
        if self.manifest.method is not None and self.manifest.method["name"] == "FastV":  # a trimmed cache is fixed
            new_position = np.full_like(tokens, past_length)
            state["graphprune_cache_index"] = np.concatenate([state["graphprune_cache_index"], new_position], axis=1)
            state["graphprune_cache_valid"] = np.concatenate(
                [state["graphprune_cache_valid"], np.ones_like(tokens, dtype=bool)], axis=1
            )
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
        ids = _numpy(input_ids, np.int64)
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
