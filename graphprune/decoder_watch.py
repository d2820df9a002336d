"""What a decoder's captured graphs took from it besides the placement of its weights, checked at every call.

- The tensor objects: the graphs hold the decoder's ``Parameter`` and buffer objects themselves, so a cast or an
  in-place load (``load_state_dict(sd)``) reaches them, but a replaced object (``load_state_dict(sd, assign=True)``,
  ``to_empty`` from the meta device, ``layer.weight = nn.Parameter(...)``, a replaced submodule) does not: the
  graphs must be captured again.
- The forward hooks of the modules the graphs run: a capture traces the hooks those modules have then, so a hook
  added afterwards never runs and one removed afterwards still does.
"""

from __future__ import annotations

import operator
import warnings
from itertools import chain

from torch import nn
from torch.nn.modules import module as torch_module

GLOBAL_HOOKS = "every module (a global hook)"
# hooks that change no result: HF's output recorders (inactive unless a call asks for outputs graphprune refuses)
# and graphprune's own (capture progress, DeepStack's inputs), which live only while a capture runs
_INERT_HOOK_MODULES = ("transformers.utils.output_capturing", "graphprune.")


def _inert(hook) -> bool:
    return getattr(hook, "__module__", "").startswith(_INERT_HOOK_MODULES)


class DecoderWatch:
    """The identity of a decoder's tensors and submodules, and the forward hooks of the modules its graphs run
    (every submodule but its input embeddings, which run outside the graphs)."""

    def __init__(self, decoder: nn.Module):
        self.decoder = decoder
        self.reset()

    def reset(self) -> None:
        """Watch the decoder as it is now."""
        modules = dict(self.decoder.named_modules())
        self.tensors = [named for module in modules.values() for named in (module._parameters, module._buffers)]
        # an entry added to an empty dict adds nothing that the graphs run (a buffer, a leaf's child)
        self._members = [named for named in (*self.tensors, *(m._modules for m in modules.values())) if named]
        self._held = self._objects()
        outside = {id(module) for module in self.decoder.get_input_embeddings().modules()} | {id(self.decoder)}
        self._hooked = [(name, module) for name, module in modules.items() if id(module) not in outside]
        self._hook_dicts = [
            *(hooks for _, module in self._hooked for hooks in (module._forward_pre_hooks, module._forward_hooks)),
            torch_module._global_forward_pre_hooks,
            torch_module._global_forward_hooks,
        ]
        self.warned = False

    def _objects(self) -> tuple:
        return tuple(chain.from_iterable(map(dict.values, self._members)))

    def replaced(self) -> bool:
        """Whether a tensor or submodule of the decoder is another object than when watched."""
        now = self._objects()
        return len(now) != len(self._held) or not all(map(operator.is_, now, self._held))

    def hook_keys(self) -> tuple[int, ...]:
        """The handles' ids of the watched modules' forward hooks and the global ones: cheap to compare."""
        return tuple(chain.from_iterable(self._hook_dicts))

    def hooks(self) -> dict[int, tuple[str, object]]:
        """Each forward hook of the watched modules and each global one: handle id -> (module name, hook)."""
        owned = {}
        for name, module in self._hooked:
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                owned.update((key, (name, hook)) for key, hook in hooks.items())
        for hooks in (torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks):
            owned.update((key, (GLOBAL_HOOKS, hook)) for key, hook in hooks.items())
        return owned

    def warn_changed_hooks(self, captured: dict[int, tuple[str, object]]) -> None:
        """Warn, once, if forward hooks were added to or removed from the watched modules since the graphs were
        captured with ``captured`` (``hooks()`` then)."""
        now = self.hooks()
        added = sorted({name for key, (name, hook) in now.items() if key not in captured and not _inert(hook)})
        removed = sorted({name for key, (name, hook) in captured.items() if key not in now and not _inert(hook)})
        if self.warned or not (added or removed):
            return
        self.warned = True
        changes = []
        if added:
            changes.append(f"forward hooks added to the decoder's {', '.join(added)} do not run")
        if removed:
            changes.append(f"forward hooks removed from the decoder's {', '.join(removed)} still run")
        warnings.warn(
            f"graphprune: {' and '.join(changes)}: the pruned graphs run the decoder's modules with the hooks "
            "they had when captured at graphprune.optimize (as torch.compile does). Register hooks before "
            "graphprune.optimize (their tensor operations are captured), or call graphprune.restore(model) to run "
            "the model with its hooks",
            stacklevel=2,
        )
