"""The ``TENSORRT.md`` sections on Jetson: which JetPack's TensorRT takes the export, and which Jetson holds each
family at 7B.

JetPack versions (NVIDIA's JetPack pages): 5.1.x ships TensorRT 8.5.2, 6.1 and 6.2 ship TensorRT 10.3, 7.x
(Jetson Thor, CUDA 13) a newer 10.x. Parameter counts: ``benchmarks/export_sizes.py`` (the published
configs built on the meta device); an export stores each weight once, so its size is the parameter bytes.
"""

from __future__ import annotations

from .trt_tables import TABLES

PARAMETERS_7B = {  # benchmarks/export_sizes.py, transformers 5.23
    "LLaVA-1.5-7B": 7_063_427_072,
    "LLaVA-NeXT-7B (Vicuna)": 7_063_431_168,
    "LLaVA-NeXT-7B (Mistral)": 7_566_747_648,
    "Video-LLaVA-7B": 7_366_279_168,
    "Qwen2-VL-7B": 8_291_375_616,
    "Llama-3.2-11B-Vision": 10_670_220_835,
}
JETSONS_GB = {"Orin Nano 8 GB": 8, "Orin NX 16 GB": 16, "AGX Orin 32 GB": 32, "AGX Orin 64 GB": 64}
HEADROOM_GB = 4  # the OS and CUDA context, a 4k-token KV cache and the TensorRT workspace share the memory


def _holds(weights_gb: float) -> str:
    return ", ".join(name for name, memory in JETSONS_GB.items() if weights_gb + HEADROOM_GB <= memory) or "none"


def jetson_sections(fit: dict[str, dict[str, list[str]]]) -> str:
    """Markdown: per TensorRT version, whether this export's graphs pass its parser rules (``fit`` as
    ``trt_parser.export_fit`` gives it), then the export size of each family at 7B and the Jetsons that hold it."""
    rows = []
    for version, graphs in fit.items():
        problems = [f"{graph}: {problem}" for graph, found in graphs.items() for problem in found]
        verdict = "yes" if not problems else f"no, {len(problems)} problem(s), first: {problems[0]}"
        rows.append(f"| {version} | {TABLES[version]['ships']} | {verdict} |")
    sizes = [
        f"| {name} | {count / 1e9:.2f} B | {2 * count / 1e9:.1f} GB | {4 * count / 1e9:.1f} GB "
        f"| {_holds(2 * count / 1e9)} | {_holds(4 * count / 1e9)} |"
        for name, count in PARAMETERS_7B.items()
    ]
    table = "\n".join(rows)
    return f"""
## Which JetPack this export fits

Each graph was checked against onnx-tensorrt's operator table of each TensorRT version (operators, the
data types each takes, constant inputs; `graphprune.export.tensorrt_support(model, trt_version)`):

| TensorRT | JetPack | every graph passes |
|---|---|---|
{table}

## Export sizes at 7B and which Jetson holds them

Bytes on disk = parameter bytes (each weight stored once, graphs add kilobytes); counted with
`benchmarks/export_sizes.py` from the published configs. "Holds": the fp16 (fp32) weights plus
{HEADROOM_GB} GB for the OS, CUDA, a 4k-token KV cache and TensorRT's workspace fit the Jetson's memory,
which CPU and GPU share. Building an engine with `trtexec` needs more than running it. graphprune exports
fp16 and fp32 only: int8 and int4 weights are not applicable. Jetson Thor (128 GB) holds all of them.
"Holds" counts the weights once, as `OrtGenerator` holds them on the CPU; TensorRT engines built from
`prefill.onnx` and `decode.onnx` each embed the decoder's weights, so two engines need about twice the
decoder (see "Weights" above): on a 32 GB AGX Orin a 7B fp16 model fits ONNX Runtime, not two engines.

| model | parameters | fp16 | fp32 | holds in fp16 | holds in fp32 |
|---|---|---|---|---|---|
{chr(10).join(sizes)}
"""
