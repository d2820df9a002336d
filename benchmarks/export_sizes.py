"""Parameter counts and export sizes at 7B for every export family, from the published models' configs.

Each model is built on the meta device (no weights, no download) from the numbers of its Hugging Face
``config.json`` written out below, and its parameters counted: an export stores each weight once
(vision tower, projector, embeddings, decoder, LM head), so its bytes on disk are the parameter bytes
plus graph overhead (kilobytes). Prints the table that ``graphprune/export/jetson.py`` holds.

    python benchmarks/export_sizes.py
"""

from __future__ import annotations

import torch
import transformers as tf

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
CLIP_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14)
VOCAB = dict(vocab_size=32064, tie_word_embeddings=False)  # the llava-hf and Video-LLaVA-hf checkpoints


def configs() -> dict:
    llama = tf.LlamaConfig(**LLAMA_7B, num_key_value_heads=32, **VOCAB)
    mistral = tf.MistralConfig(**{**LLAMA_7B, "intermediate_size": 14336}, num_key_value_heads=8, **VOCAB)
    return {
        "LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf)": (
            tf.LlavaForConditionalGeneration,
            tf.LlavaConfig(text_config=llama, vision_config=tf.CLIPVisionConfig(**CLIP_L, image_size=336)),
        ),
        "LLaVA-NeXT-7B Vicuna (llava-hf/llava-v1.6-vicuna-7b-hf)": (
            tf.LlavaNextForConditionalGeneration,
            tf.LlavaNextConfig(text_config=llama, vision_config=tf.CLIPVisionConfig(**CLIP_L, image_size=336)),
        ),
        "LLaVA-NeXT-7B Mistral (llava-hf/llava-v1.6-mistral-7b-hf)": (
            tf.LlavaNextForConditionalGeneration,
            tf.LlavaNextConfig(text_config=mistral, vision_config=tf.CLIPVisionConfig(**CLIP_L, image_size=336)),
        ),
        "Video-LLaVA-7B (LanguageBind/Video-LLaVA-7B-hf)": (
            tf.VideoLlavaForConditionalGeneration,
            tf.VideoLlavaConfig(text_config=llama, vision_config=tf.CLIPVisionConfig(**CLIP_L, image_size=224)),
        ),
        "Qwen2-VL-7B (Qwen/Qwen2-VL-7B-Instruct)": (
            tf.Qwen2VLForConditionalGeneration,
            tf.Qwen2VLConfig(
                text_config=dict(
                    hidden_size=3584,
                    intermediate_size=18944,
                    num_hidden_layers=28,
                    num_attention_heads=28,
                    num_key_value_heads=4,
                    vocab_size=152064,
                    tie_word_embeddings=False,
                ),
                vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4),
                tie_word_embeddings=False,
            ),
        ),
        "Llama-3.2-11B-Vision (meta-llama/Llama-3.2-11B-Vision)": (
            tf.MllamaForConditionalGeneration,
            tf.MllamaConfig(
                text_config=dict(
                    hidden_size=4096,
                    intermediate_size=14336,
                    num_hidden_layers=40,
                    num_attention_heads=32,
                    num_key_value_heads=8,
                    vocab_size=128256,
                    cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
                    tie_word_embeddings=False,
                ),
                vision_config=dict(
                    hidden_size=1280,
                    intermediate_size=5120,
                    num_hidden_layers=32,
                    num_global_layers=8,
                    attention_heads=16,
                    image_size=560,
                    patch_size=14,
                    max_num_tiles=4,
                    vision_output_dim=7680,
                    intermediate_layers_indices=[3, 7, 15, 23, 30],
                ),
            ),
        ),
    }


def main() -> None:
    print("| model | parameters | fp16 bytes | fp32 bytes |")
    print("|---|---|---|---|")
    for name, (cls, config) in configs().items():
        with torch.device("meta"):
            model = cls(config)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params:,} | {2 * params / 1e9:.2f} GB | {4 * params / 1e9:.2f} GB |")


if __name__ == "__main__":
    main()
