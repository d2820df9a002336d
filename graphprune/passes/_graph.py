"""Every helper the passes share (the one place for them): where a node sits, which axes depend on a size,
what stands in for a shortened node, where attention meets its query, how a rewrite ends, how a pass fails."""

from __future__ import annotations

import logging
import operator

import sympy
import torch
from torch import fx

from ..layout import LAYOUT_KEY, DecoderLayout

logger = logging.getLogger("graphprune.passes")

INSERTED_PREFIX = "graphprune_"
APPLIED_KEY = "graphprune_passes"


class PassError(RuntimeError):
    """A pass could not rewrite a graph; the message names the pass and the passes before it."""


def fail(gm: fx.GraphModule, pass_name: str, reason: str) -> PassError:
    before = gm.meta.get(APPLIED_KEY, [])
    after = f" (after {', '.join(before)})" if before else " (first pass on this graph)"
    return PassError(f"graphprune pass '{pass_name}'{after}: {reason}")


def layout_of(gm: fx.GraphModule, pass_name: str) -> DecoderLayout:
    layout = gm.meta.get(LAYOUT_KEY)
    if layout is None:
        raise fail(gm, pass_name, "the graph carries no decoder layout; capture it with graphprune.capture")
    return layout


def module_path(node: fx.Node) -> str:
    """The innermost module a node was traced in ("" for the top level)."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""


def layer_index(node: fx.Node, layout: DecoderLayout) -> int | None:
    """The decoder layer a node belongs to, from its ``nn_module_stack``; None outside the layers."""
    prefix = layout.layers + "."
    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        if path.startswith(prefix):
            return int(path[len(prefix) :].split(".", 1)[0])
    return None


def first_node_of_layer(gm: fx.GraphModule, layout: DecoderLayout, layer: int) -> fx.Node | None:
    return next((node for node in gm.graph.nodes if layer_index(node, layout) == layer), None)


def placeholder(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(node for node in gm.graph.nodes if node.op == "placeholder" and node.name == name)


def add_placeholder(gm: fx.GraphModule, name: str) -> fx.Node:
    last = [node for node in gm.graph.nodes if node.op == "placeholder"][-1]
    with gm.graph.inserting_after(last):
        node = gm.graph.placeholder(name)
    node.name = name
    return node


def output_node(gm: fx.GraphModule) -> fx.Node:
    return next(node for node in reversed(gm.graph.nodes) if node.op == "output")


def append_outputs(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    out = output_node(gm)
    out.args = (tuple(out.args[0]) + tuple(nodes),)


def named(node: fx.Node, name: str) -> fx.Node:
    """Give an inserted node a ``graphprune_`` name (FX adds a suffix if taken)."""
    node._rename(INSERTED_PREFIX + name)
    return node


def symbol(value) -> sympy.Expr | None:
    """The sympy expression of a SymInt (or None for a plain int)."""
    return value.node.expr if isinstance(value, torch.SymInt) else None


def free_symbols(size) -> set:
    """The symbols a size (a SymInt) depends on; none for a plain int."""
    expr = symbol(size)
    return expr.free_symbols if expr is not None else set()


def dependent_axes(value, size: sympy.Symbol) -> list[int]:
    """The axes of a tensor whose length depends on the symbol ``size``; none for anything but a tensor."""
    if not isinstance(value, torch.Tensor):
        return []
    return [dim for dim, length in enumerate(value.shape) if size in free_symbols(length)]


def depends_on(value, size: sympy.Symbol) -> bool:
    """Whether a node's value (a SymInt, or a tensor's shape) depends on the symbol ``size``."""
    return size in free_symbols(value) or bool(dependent_axes(value, size))


def attention_query(gm: fx.GraphModule, pass_name: str, scope: str, query_proj: str, key_proj: str) -> fx.Node:
    """The query that meets the key inside attention module ``scope``: after RoPE, before the kernel.

    Found by data flow, for any attention kernel: the first node in the scope that depends on both
    projections is where q and k meet (SDPA, or the eager ``q @ k^T``); its argument that depends
    on the query projection only is the query.
    """
    from_query, from_key = set(), set()
    for node in gm.graph.nodes:
        path = module_path(node)
        if path != scope and not path.startswith(scope + "."):
            continue
        inputs = node.all_input_nodes
        q = path == f"{scope}.{query_proj}" or any(arg in from_query for arg in inputs)
        k = path == f"{scope}.{key_proj}" or any(arg in from_key for arg in inputs)
        if q and k:
            return next(arg for arg in inputs if arg in from_query and arg not in from_key)
        if q:
            from_query.add(node)
        if k:
            from_key.add(node)
    raise fail(gm, pass_name, f"no node in {scope} combines {query_proj} and {key_proj}: is it an attention module?")


def layer_mask(gm: fx.GraphModule, pass_name: str, layout: DecoderLayout, layer: int, seq: sympy.Symbol) -> fx.Node:
    """The 4-D ``[B, h, N, N]`` mask that layer ``layer``'s attention reads, built outside the layers."""
    scope = f"{layout.layers}.{layer}.{layout.attention}"
    found = set()
    for node in gm.graph.nodes:
        path = module_path(node)
        if path != scope and not path.startswith(scope + "."):
            continue
        for arg in node.all_input_nodes:
            value = arg.meta.get("val")
            square = isinstance(value, torch.Tensor) and value.dim() == 4
            if square and layer_index(arg, layout) is None and dependent_axes(value, seq) == [2, 3]:
                found.add(arg)
    if len(found) != 1:
        raise fail(gm, pass_name, f"expected one [B, h, N, N] mask read by {scope}, found {len(found)}")
    return found.pop()


def only_call(gm: fx.GraphModule, pass_name: str, target, producer: str) -> fx.Node:
    """The one node of ``gm`` that calls ``target`` (inserted by the pass ``producer``)."""
    calls = [node for node in gm.graph.nodes if node.target is target]
    if len(calls) != 1:
        raise fail(gm, pass_name, f"expected one graphprune_select node (run {producer} first), found {len(calls)}")
    return calls[0]


def positive_int(value, pass_name: str, name: str, meaning: str) -> int:
    """``value`` when it is an int >= 1 (not a bool); a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"graphprune pass '{pass_name}': {name} must be an int >= 1 ({meaning}); got {value!r}")
    return value


Gathers = dict[tuple[int | None, tuple[int, ...]], tuple]


def stand_in(
    gm: fx.GraphModule, pass_name: str, node: fx.Node, size: sympy.Symbol, length: fx.Node, gathers: Gathers
) -> fx.Node | None:
    """The shortened stand-in for ``node`` (inserted at the current point), None if it does not depend on ``size``.

    A SymInt equal to ``size`` becomes ``length``; one that is ``size`` times a factor free of it (a flattened
    batch x sequence count, as a mixture-of-experts layer's token count) becomes that factor times ``length``.
    A tensor whose axes that depend on ``size`` all equal it is gathered by ``gathers[(rank, axes)]`` (rank
    None: any), an ``(op, args)`` called as ``op(node, *args)``. Anything else that depends on ``size`` fails
    the pass.
    """
    value = node.meta.get("val")
    if not depends_on(value, size):
        return None
    if isinstance(value, torch.SymInt):
        expr = symbol(value)
        if expr == size:
            return length
        if size not in sympy.simplify(expr / size).free_symbols:
            factor = gm.graph.call_function(operator.floordiv, (node, _size_node(gm, pass_name, size)))
            return named(gm.graph.call_function(operator.mul, (factor, length)), f"scaled_{node.name}")
        raise fail(gm, pass_name, f"{node.name} = {expr} depends on {size} in a way the pass can't map")
    shape, axes = tuple(value.shape), tuple(dependent_axes(value, size))
    if any(symbol(shape[dim]) != size for dim in axes):
        raise fail(gm, pass_name, f"{node.name} {shape} has an axis derived from {size}, not equal to it")
    gather = gathers.get((value.dim(), axes)) or gathers.get((None, axes))
    if gather is None:
        accepted = ", ".join(f"{rank or 'any'}-D on axes {dims}" for rank, dims in gathers)
        raise fail(gm, pass_name, f"{node.name} {shape}: the pass gathers tensors {accepted} along {size}")
    op, args = gather
    return named(gm.graph.call_function(op, (node, *args)), f"gather_{node.name}")


def _size_node(gm: fx.GraphModule, pass_name: str, size: sympy.Symbol) -> fx.Node:
    """A ``sym_size`` (inserted at the current point) of the first input with an axis of length ``size``."""
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and isinstance(value, torch.Tensor):
            dims = [dim for dim, length in enumerate(value.shape) if symbol(length) == size]
            if dims:
                return gm.graph.call_function(torch.ops.aten.sym_size.int, (node, dims[0]))
    raise fail(gm, pass_name, f"no input of the graph has an axis of length {size}")


def insert_selection(gm: fx.GraphModule, op, args: tuple) -> tuple[fx.Node, fx.Node]:
    """``graphprune_select = op(*args)`` at the current insertion point and its two outputs,
    ``graphprune_keep_index`` and ``graphprune_slot_valid``."""
    selection = named(gm.graph.call_function(op, args), "select")
    index = named(gm.graph.call_function(operator.getitem, (selection, 0)), "keep_index")
    return index, named(gm.graph.call_function(operator.getitem, (selection, 1)), "slot_valid")


def size_of(gm: fx.GraphModule, node: fx.Node, dim: int, name: str) -> fx.Node:
    """``graphprune_{name}``: the length of ``node``'s axis ``dim``, read at the current insertion point."""
    return named(gm.graph.call_function(torch.ops.aten.sym_size.int, (node, dim)), name)


def crossing_nodes(gm: fx.GraphModule, boundary: fx.Node) -> dict[fx.Node, list[fx.Node]]:
    """Nodes defined before ``boundary`` and the users of each at or after it (the output node excepted)."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    start = order[boundary]
    crossing = {}
    for node in gm.graph.nodes:
        if order[node] >= start:
            break
        late = [user for user in node.users if order[user] >= start and user.op != "output"]
        if late:
            crossing[node] = late
    return crossing


def repoint(node: fx.Node, replacement: fx.Node, users: list[fx.Node]) -> None:
    for user in users:
        user.replace_input_with(node, replacement)


def move_size_reads(gm: fx.GraphModule, expr: sympy.Expr, sources: set[str], target: fx.Node) -> None:
    """Point every ``sym_size`` equal to ``expr`` that reads it off a placeholder named in ``sources`` at ``target``.

    ``torch.export`` unifies equal sizes of different inputs into one symbol and may read it off any of
    them; after a pass makes some of those inputs shorter, the reads must come from one that is not.
    """
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.sym_size.int:
            continue
        source = node.args[0]
        if source.op == "placeholder" and source.name in sources and symbol(node.meta["val"]) == expr:
            node.replace_input_with(source, target)


def finish(gm: fx.GraphModule, pass_name: str, summary: str) -> fx.GraphModule:
    """The clean-up every rewrite ends with: dead code out, lint, recompile, record, log."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.meta[APPLIED_KEY] = [*gm.meta.get(APPLIED_KEY, []), pass_name]
    logger.info("%s: %s", pass_name, summary)
    return gm
