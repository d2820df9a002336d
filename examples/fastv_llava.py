"""FastV on a LLaVA model: optimise, generate, explain, restore.

Runs as is on a tiny random-weight LLaVA built in-process. For a real checkpoint, replace the two
``tiny`` lines with ``LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")``
and inputs from its ``AutoProcessor``; the graphprune calls are the same.
"""

import torch

import graphprune as gp
from graphprune.testing import llava_inputs, tiny_llava

model = tiny_llava()
inputs = llava_inputs(model, [(6, 1, 4), (3, 2, 2)])  # two left-padded samples, 16 and 32 visual tokens

gp.optimize(model, gp.FastV(k=2, keep=0.5))
with torch.no_grad():
    ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
print("generated:", ids[:, inputs["input_ids"].shape[1] :].tolist())
print(gp.explain(model, **inputs))
gp.restore(model)
