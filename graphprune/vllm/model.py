"""What every vLLM model with FastV or DART adds to vLLM's own class: a ``PrunedDecoder`` on its decoder, wrapped around
each forward. A family's ``vllm.py`` (``graphprune/families/<name>/``) subclasses ``(FastVModel, vLLM's model
class)`` and names its visual token ids."""

from __future__ import annotations

from . import runner
from .config import method_of
from .gather import PrunedDecoder


class FastVModel:
    """Mixin before a vLLM multimodal model class whose decoder is ``language_model.model`` (or ``decoder_path``)."""

    requires_raw_input_tokens = True  # the runner passes input_ids beside the merged embeddings: visual positions
    visual_token_fields: tuple[str, ...] = ()  # hf_config attributes holding the visual token ids
    decoder_path = "language_model.model"  # the decoder (``.layers``) under the model

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        visual = self.visual_token_ids(vllm_config)
        decoder = self.get_submodule(self.decoder_path)
        self.fastv = PrunedDecoder(decoder, method_of(vllm_config), visual, vllm_config)
        runner.install()

    def visual_token_ids(self, vllm_config) -> tuple[int, ...]:
        """The ids at the positions FastV ranks in the prompts vLLM's processor makes: ``visual_token_fields``."""
        config = vllm_config.model_config.hf_config
        return tuple(getattr(config, field) for field in self.visual_token_fields)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        with self.fastv.step(input_ids):
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
