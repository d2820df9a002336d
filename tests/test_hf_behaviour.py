"""An optimized model under ordinary HF use (SPEC "Behaviour under ordinary HF use"): deep copies, pickling,
``use_cache=False``, train mode, generation modes however configured, casting after ``optimize``."""

import copy
import io
import pickle

import pytest
import torch
from transformers import GenerationConfig

import graphprune as gp
from graphprune import optimized
from graphprune.models import adapter_for

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)

ADDED = {"forward", "generate", "__deepcopy__", "__reduce_ex__", "_graphprune"}
REFUSED_MODE = r"^graphprune does not support .*; use greedy or sampling, or graphprune.restore\(model\) first$"


@pytest.fixture
def families(llava, batch, mllama, mllama_batch):
    return {"llava": (llava, batch, gp.FastV(k=2)), "mllama": (mllama, mllama_batch, gp.CrossAttentionTrim(keep=0.5))}


@torch.no_grad()
def last_logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits[:, -1]


@torch.no_grad()
def greedy(model, inputs: dict, *args, **kwargs) -> torch.Tensor:
    return model.generate(*args, **inputs, **{"max_new_tokens": 4, "do_sample": False, **kwargs})


def _plain(model) -> bool:
    """No attribute of ``optimize`` left on the model or its decoder."""
    return not ADDED & set(vars(model)) and "forward" not in vars(adapter_for(model).decoder(model))


@pytest.mark.parametrize("family", ["llava", pytest.param("mllama", marks=pytest.mark.slow)])
def test_deepcopy_is_an_independent_optimized_model(families, family):
    model, inputs, method = families[family]
    unmodified = last_logits(model, inputs)
    with optimized(model, method):
        pruned = last_logits(model, inputs)
        assert not torch.allclose(pruned, unmodified, rtol=1e-3, atol=1e-3)  # the pruning shows in the logits
        clone = copy.deepcopy(model)
        zeroed = copy.deepcopy(model)
        gp.restore(copy.deepcopy(model))  # restoring a copy leaves the original optimized
        assert torch.equal(last_logits(model, inputs), pruned)
    # restoring the original leaves the copy optimized, with graphs on its own weights
    assert torch.equal(last_logits(model, inputs), unmodified)
    assert clone._graphprune.method == method
    assert torch.equal(last_logits(clone, inputs), pruned)
    with torch.no_grad():
        for parameter in zeroed._graphprune.adapter.decoder(zeroed).parameters():
            parameter.zero_()
    assert not torch.allclose(last_logits(zeroed, inputs), pruned)
    assert torch.equal(last_logits(clone, inputs), pruned)
    gp.restore(clone)
    assert _plain(clone)
    assert torch.equal(last_logits(clone, inputs), unmodified)


def test_pickle_and_shallow_copy_are_refused(llava, batch):
    with optimized(llava, gp.FastV(k=2)):
        pruned = last_logits(llava, batch)
        for attempt in (pickle.dumps, copy.copy, lambda model: torch.save(model, io.BytesIO())):
            with pytest.raises(TypeError, match=r"^graphprune: .*pickled or shallow-copied.*copy\.deepcopy\(model\)"):
                attempt(llava)
        assert torch.equal(last_logits(llava, batch), pruned)


def test_a_part_holding_the_optimized_decoder_is_not_copied(llava, batch):
    with optimized(llava, gp.FastV(k=2)):
        pruned = last_logits(llava, batch)
        decoder = adapter_for(llava).decoder(llava)
        # pickling a module can fail earlier on transformers' own hooks (local functions): pickle the stand-in itself
        for attempt, part in ((copy.deepcopy, llava.model), (copy.deepcopy, decoder), (pickle.dumps, decoder.forward)):
            with pytest.raises(TypeError, match=r"^graphprune: a part of an optimized model .* cannot be copied"):
                attempt(part)
        assert torch.equal(last_logits(llava, batch), pruned)
    assert copy.deepcopy(llava.model) is not llava.model  # restored: an ordinary module again


@pytest.mark.parametrize("family", ["llava", "mllama"])
def test_use_cache_false_gives_the_tokens_of_use_cache_true(families, family):
    model, inputs, method = families[family]
    with optimized(model, method):
        cached = greedy(model, inputs)
        assert torch.equal(greedy(model, inputs, use_cache=False), cached)
        assert torch.equal(greedy(model, inputs, generation_config=GenerationConfig(use_cache=False)), cached)
        out = greedy(model, inputs, use_cache=False, return_dict_in_generate=True)
        assert torch.equal(out.sequences, cached) and out.past_key_values is None


def test_train_mode_is_refused_while_optimized(llava, batch):
    message = r"^graphprune: .*training mode; call model\.eval\(\) .*graphprune\.restore\(model\)"
    with optimized(llava, gp.FastV(k=2)):
        pruned = last_logits(llava, batch)
        llava.train()
        try:
            with pytest.raises(RuntimeError, match=message):
                llava(**batch)
            with pytest.raises(RuntimeError, match=message):
                greedy(llava, batch)
        finally:
            llava.eval()
        assert torch.equal(last_logits(llava, batch), pruned)


@pytest.mark.parametrize(
    "how",
    [
        dict(num_beams=2),
        dict(num_beams=2, do_sample=True),
        dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
        dict(prompt_lookup_num_tokens=3),
        dict(penalty_alpha=0.6, top_k=4),
        dict(dola_layers="low"),
    ],
    ids=["beam", "beam-sample", "group-beam", "prompt-lookup", "contrastive", "dola"],
)
def test_unsupported_modes_are_refused_by_keyword_and_positional_config(llava, batch, how):
    ids = batch["input_ids"]
    rest = {name: value for name, value in batch.items() if name != "input_ids"}
    with optimized(llava, gp.FastV(k=2)):
        tokens = greedy(llava, batch)
        with pytest.raises(ValueError, match=REFUSED_MODE):
            llava.generate(ids, GenerationConfig(**{"max_new_tokens": 4, **how}), **rest)
        with pytest.raises(ValueError, match=REFUSED_MODE):
            greedy(llava, batch, **how)
        assert torch.equal(greedy(llava, batch), tokens)


def test_the_effective_generation_config_decides(llava, batch):
    with optimized(llava, gp.FastV(k=2)):
        tokens = greedy(llava, batch)
        ids = batch["input_ids"]
        rest = {name: value for name, value in batch.items() if name != "input_ids"}
        with pytest.raises(ValueError, match=REFUSED_MODE):  # positional config
            llava.generate(ids, GenerationConfig(num_beams=2, max_new_tokens=4), **rest)
        # a keyword overrides the config's field: greedy, allowed
        overridden = llava.generate(ids, GenerationConfig(num_beams=2, max_new_tokens=4), num_beams=1, **rest)
        assert torch.equal(overridden, tokens)
        llava.generation_config.num_beams = 2
        try:
            with pytest.raises(ValueError, match=REFUSED_MODE):
                greedy(llava, batch)
            assert torch.equal(greedy(llava, batch, num_beams=1), tokens)
        finally:
            llava.generation_config.num_beams = 1


def test_assisted_and_custom_decoding_are_refused(llava, batch):
    with optimized(llava, gp.FastV(k=2)):
        with pytest.raises(ValueError, match=REFUSED_MODE):
            greedy(llava, batch, assistant_model=llava)
        with pytest.raises(ValueError, match=REFUSED_MODE):
            greedy(llava, batch, custom_generate=lambda model, **kwargs: None)
        assert greedy(llava, batch, do_sample=True).shape == (3, batch["input_ids"].shape[1] + 4)


def _bf16(inputs: dict) -> dict:
    return {name: value.to(torch.bfloat16) if value.is_floating_point() else value for name, value in inputs.items()}


@pytest.mark.parametrize("family", ["llava", pytest.param("mllama", marks=pytest.mark.slow)])
def test_cast_after_optimize_is_optimize_after_cast(families, family):
    fixture, inputs, method = families[family]
    model = copy.deepcopy(fixture).to(torch.bfloat16).to(torch.float32)  # weights that a bfloat16 round trip keeps
    unmodified = last_logits(copy.deepcopy(fixture).to(torch.bfloat16), _bf16(inputs))
    gp.optimize(model, method)
    float_tokens = greedy(model, inputs)
    model.to(torch.bfloat16)
    cast_after = greedy(model, _bf16(inputs)), last_logits(model, _bf16(inputs))
    assert cast_after[1].dtype == torch.bfloat16
    assert torch.equal(greedy(model.to(torch.float32), inputs), float_tokens)  # back to the float32 graphs
    gp.restore(model.to(torch.bfloat16))
    assert _plain(model) and torch.equal(last_logits(model, _bf16(inputs)), unmodified)
    gp.optimize(model, method)
    assert torch.equal(greedy(model, _bf16(inputs)), cast_after[0])
    assert torch.equal(last_logits(model, _bf16(inputs)), cast_after[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_move_to_cuda_after_optimize_is_optimize_after_move(llava, batch):
    model = copy.deepcopy(llava)
    gp.optimize(model, gp.FastV(k=2))
    on_cuda = {name: value.cuda() for name, value in batch.items()}
    moved_after = greedy(model.cuda(), on_cuda)
    gp.restore(model)
    gp.optimize(model, gp.FastV(k=2))
    assert torch.equal(greedy(model, on_cuda), moved_after)
