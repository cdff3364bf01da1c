"""A vmapped forward-mode JVP traced once into an ATen graph and split into its primal and tangent parts.

Eagerly, `vmap(jvp(f))` over a chunk of T directions re-runs f's primal forward for every chunk,
functorch's batching rules copy primal activations expanded to T before each batched matrix
product, and each element-wise tangent op (GELU, LayerNorm, softmax JVPs) is its own pass over
memory. Traced with `make_fx`, the same computation is a plain ATen graph. Its nodes that do not
depend on the directions are the primal part: run once per input (one KD batch) and kept. The
rest is the tangent part, replayed for every chunk of directions; Inductor can fuse its
element-wise work. This is `torch.func.linearize` with the primal inputs kept as graph inputs,
so one traced (and compiled) graph serves every KD batch of the same shape.
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

# Ops that only move or re-describe data (plus constants). When one of them sits between the primal and the
# tangent part it is recomputed on the tangent side instead of kept: functorch expands primal activations to the
# chunk of directions (e.g. attention probabilities to [T·heads, S, S]) before a batched matmul, and keeping those
# expanded copies would cost T times the memory of the activation itself.
_RECOMPUTED = {"expand", "clone", "_unsafe_view", "view", "alias", "_to_copy", "permute", "transpose", "t",
               "unsqueeze", "squeeze", "slice", "select", "reshape", "contiguous", "copy", "detach",
               "lift_fresh_copy", "scalar_tensor", "_efficientzerotensor", "zeros", "zeros_like", "full"}


def _recomputed(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", "")  # an OpOverload's name is "op.overload"
    return node.op == "call_function" and name.split(".")[0] in _RECOMPUTED


def split(graph: fx.GraphModule, n_primal_inputs: int) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(primal, tangent): primal(*primal_inputs) -> kept values; tangent(*kept values, *other inputs) -> graph's output.

    The first `n_primal_inputs` placeholders are the primal inputs; the remaining ones carry the directions.
    """
    nodes = list(graph.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    tangent = set(placeholders[n_primal_inputs:])
    for node in nodes:
        if node.op != "placeholder" and any(a in tangent for a in node.all_input_nodes):
            tangent.add(node)
    # Pull cheap layout ops whose every user is on the tangent side over to it, repeatedly (reverse order reaches
    # a chain's head after its tail).
    for node in reversed(nodes):
        if node not in tangent and _recomputed(node) and node.users and all(u in tangent for u in node.users):
            tangent.add(node)

    primal_graph, tangent_graph = fx.Graph(), fx.Graph()
    primal_env, tangent_env, kept = {}, {}, []
    for node in nodes:
        if node.op == "output" or node in tangent:
            continue
        primal_env[node] = primal_graph.node_copy(node, lambda a: primal_env[a])
        if node.op != "get_attr" and any(u in tangent for u in node.users):
            kept.append(node)
    primal_graph.output(tuple(primal_env[n] for n in kept))
    for node in kept:
        tangent_env[node] = tangent_graph.placeholder(node.name)
    for node in nodes:
        if node.op == "output":
            tangent_graph.output(fx.map_arg(node.args[0], lambda a: tangent_env[a]))
        elif node in tangent or node.op == "get_attr":  # parameters are attributes: both parts read them
            tangent_env[node] = tangent_graph.node_copy(node, lambda a: tangent_env[a])
    return fx.GraphModule(graph, primal_graph), fx.GraphModule(graph, tangent_graph)


class LinearizedFunction:
    """g(*primal_inputs, directions) traced once for fixed shapes; `keep` runs the primal part, `__call__` the tangent.

    compile: compile the tangent part with Inductor (`torch.compile`) on its first call; if compilation fails
    (no C++ compiler, an unsupported op), warn once and run the traced graph eagerly. `compile_seconds` is the
    time of that first call, compilation included (0 until then).
    """

    def __init__(self, fn, primal_inputs: tuple, directions: torch.Tensor, compile: bool):
        self.input_shapes = tuple(tuple(t.shape) for t in primal_inputs)
        self.chunk = directions.shape[0]
        started = time.perf_counter()
        with torch.no_grad():  # forward mode needs no autograd record; without this a compile builds a training graph
            graph = make_fx(fn)(*primal_inputs, directions)
        self.primal, self.tangent = split(graph, len(primal_inputs))
        self.trace_seconds = time.perf_counter() - started
        self.compile_seconds = 0.0
        self._run = torch.compile(self.tangent, dynamic=False) if compile else self.tangent
        self._first = compile

    def keep(self, *primal_inputs) -> tuple:
        """The primal values the tangent part reads, for these inputs."""
        with torch.no_grad():
            return self.primal(*primal_inputs)

    @torch.no_grad()
    def __call__(self, kept: tuple, directions: torch.Tensor):
        if not self._first:
            return self._run(*kept, directions)
        self._first = False
        started = time.perf_counter()
        try:
            out = self._run(*kept, directions)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the same graph, eagerly
            first_line = (str(error).splitlines() or [""])[0][:200]
            warnings.warn(f"torch.compile unavailable ({type(error).__name__}: {first_line}); "
                          "running the traced tangent graph eagerly", RuntimeWarning, stacklevel=2)
            self._run = self.tangent
            out = self._run(*kept, directions)
        self.compile_seconds = time.perf_counter() - started
        return out
