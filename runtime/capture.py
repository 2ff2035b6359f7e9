"""Graph capture of a whole training step, for the JIT objectives.

``capture_step`` runs a step function once under ``make_fx``: every aten operation it
performs (sampling, log-probs, the surrogate, and the backward pass when the function calls
``torch.autograd.grad``) is recorded into one ``torch.fx`` graph, while the real values are
computed alongside, so the capturing call is itself a valid step. Random operations are
recorded as operations, so replaying the graph draws fresh values from the same global
generator, in the same order, as the eager step would.

A capture is refused (``CaptureRefused``) when the step is not a fixed function of its
inputs: when it reads a value derived from an input into Python (``.item()``, ``bool()``;
``make_fx`` stops there), or when the graph would hold a trainable tensor as a constant
(a module's weights, which its inputs do not carry).

``compile_captured`` turns the graph into the callable that runs each step: ``"inductor"``
compiles it (C++ kernels for the arithmetic; random operations fall back to aten so the
random stream stays the eager one), ``"fx"`` replays the recorded aten calls as they are.

``simplify`` is for a graph of the forward pass alone, replayed each step under autograd
(torch computes the backward pass, in C++): it merges equal constants and repeated pure
operations. A Markov chain's loop repeats the same work every time step (``trans[z]`` for
the same enumerated ``z``, the same normalization); once merged, the replay does each once.
"""

from __future__ import annotations

import contextlib
import operator
import time
import warnings
from dataclasses import dataclass

import torch

from compiler.errors import SvigraphError

BACKENDS = ("inductor", "fx", "forward")
_READ_INTO_PYTHON = ("a tensor computed from the step's inputs (arguments, params, draws) is "
                     "read into Python (.item(), bool(), int(), tolist(), an if on a tensor)")


class CaptureRefused(SvigraphError, RuntimeError):
    """A step could not be captured as a fixed graph; it keeps running eagerly."""


@dataclass
class CapturedStep:
    """A captured step and what it was compiled to.

    Attributes:
        graph: the ``torch.fx.GraphModule`` recorded by ``make_fx``.
        run: the callable executing it each step: ``run(*inputs) -> outputs``.
        backend: "inductor" or "fx".
        ops: the number of aten operations in the graph.
        compile_seconds: time spent compiling (0 for "fx").
        note: why the requested backend was not used, if it was not.
    """

    graph: object  # torch.fx.GraphModule
    run: object
    backend: str
    ops: int
    compile_seconds: float = 0.0
    note: str = ""
    aliased: tuple = None  # outputs sharing memory with an input or an earlier output

    def __call__(self, *inputs):
        """Run the step; every output is a tensor of its own (safe to hand out as ``.grad``:
        outputs that alias an input or each other are copied)."""
        return fresh_outputs(self, inputs, self.run(*inputs))


def fresh_outputs(holder, inputs, outputs):
    """``outputs`` with those that share memory with an input or an earlier output copied.
    Which do is a property of the graph: found on the first call, kept in ``holder``."""
    if holder.aliased is None:
        seen = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
        aliased = []
        for i, t in enumerate(outputs):
            if t.numel():
                ptr = t.untyped_storage().data_ptr()
                if ptr in seen:
                    aliased.append(i)
                seen.add(ptr)
        holder.aliased = tuple(aliased)
    if holder.aliased:
        outputs = list(outputs)
        for i in holder.aliased:
            outputs[i] = outputs[i].clone()
    return outputs


@contextlib.contextmanager
def _no_argument_validation():
    # torch validates distribution arguments with ``bool(...)`` reads, which a captured
    # graph cannot contain; tracing and replay skip them (a bad value shows up as a
    # non-finite loss, which the caller checks every step).
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _one_fake_mode():
    """make_fx describes each recorded value with a fake tensor, made in a fake mode it
    creates per value unless a tracing context offers one (each creation extracts a Python
    stack: about half the capture time); one mode serves them all."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode

        return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))
    except Exception:  # noqa: BLE001 - another torch: capture as it comes
        return contextlib.nullcontext()


def capture_step(fn, inputs, quiet=False):
    """Record ``fn(*inputs)`` as an aten-level graph; return ``(graph, real outputs)``.

    ``fn`` must return a flat tuple of tensors. The outputs are this call's real values.

    Raises:
        CaptureRefused: naming the reason; the caller runs the step eagerly instead.
    """
    from torch.fx.experimental.proxy_tensor import make_fx  # heavy: imported on first capture

    real = {}

    def recorded(*flat):
        out = fn(*flat)
        real["out"] = tuple(out)
        return out

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        try:
            with _no_argument_validation(), _one_fake_mode():
                graph = make_fx(recorded, tracing_mode="real")(*inputs)
        except CaptureRefused:
            raise
        except Exception as err:  # noqa: BLE001 - any failure means: run this step eagerly
            cause = (_READ_INTO_PYTHON if "_local_scalar_dense" in str(err)
                     else f"{type(err).__name__}: {_first_line(err)}")
            raise CaptureRefused(
                "the step could not be captured as a fixed graph", [cause],
                "nothing to do: this structure runs eagerly (exact, not faster); a value read "
                "into Python (.item(), bool(), int()) is the usual cause") from err
    _refuse_trainable_constants(graph)
    return graph, real["out"]


def _refuse_trainable_constants(graph):
    for name, value in list(graph.named_parameters()) + list(graph.named_buffers()) + [
            (n.target, getattr(graph, n.target, None)) for n in graph.graph.nodes
            if n.op == "get_attr"]:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise CaptureRefused(
                "the step uses a trainable tensor the capture cannot take as an input",
                [f"constant {name!r} of shape {tuple(value.shape)} requires grad (a module's "
                 "weight, a neural baseline's, or a tensor created outside the param store)"],
                "nothing to do: this structure runs eagerly; params read with sg.param are "
                "captured as inputs")


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def simplify(graph):
    """Merge equal small constants, then repeated pure operations (same operation, same
    arguments), in place; return ``graph``.

    Never merged: random operations (each draw is its own, in the eager order) and
    operations that write to a tensor (and so every operation of a graph that has any).
    Nothing is removed otherwise, so every draw stays in the graph.
    """
    nodes = graph.graph.nodes
    if any(_writes(n) for n in nodes):
        return graph
    constants = {}
    for node in list(nodes):
        if node.op != "get_attr":
            continue
        value = getattr(graph, node.target, None)
        if not isinstance(value, torch.Tensor) or value.numel() > _SMALL_CONSTANT \
                or value.requires_grad:
            continue
        # repr tells -0.0 from 0.0 (which == does not)
        key = (tuple(value.shape), value.dtype, value.device,
               tuple(map(repr, value.flatten().tolist())))
        first = constants.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.graph.erase_node(node)
    seen = {}
    for node in list(nodes):
        if node.op != "call_function" or not _pure(node.target):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs))
        except TypeError:  # an argument that cannot be compared by value
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
    return graph


_SMALL_CONSTANT = 256  # elements: constants larger than this are left as they are


def _writes(node):
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _pure(target):
    if target is operator.getitem:
        return True
    schema = getattr(target, "_schema", None)
    if schema is None or schema.is_mutable:
        return False
    return torch.Tag.nondeterministic_seeded not in getattr(target, "tags", ())


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, torch.fx.Node):
        return ("node", value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (int, bool, str, type(None), torch.dtype, torch.device,
                          torch.layout, torch.memory_format)):
        return (type(value).__name__, value)
    raise TypeError(type(value).__name__)


class count_aten_ops:
    """Context manager counting the aten operations run inside (``.ops``): an eager step's
    size, to tell a step too big to capture whole before capturing it."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.ops += 1
                return func(*args, **(kwargs or {}))

        self.ops = 0
        self._mode = _Count()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def count_ops(graph):
    return sum(1 for n in graph.graph.nodes if n.op == "call_function")


def compile_captured(graph, inputs, backend="inductor", quiet=False):
    """Compile a captured graph for repeated execution.

    Args:
        graph: from ``capture_step``.
        inputs: example inputs (real tensors of the shapes every call will have).
        backend: "inductor" (``torch._inductor`` with aten random ops, so the random stream
            is the eager one), "fx" (replay the aten calls, no compile time) or "forward"
            (a forward-only graph, ``simplify``-ed, replayed under autograd).
        quiet: silence warnings raised while compiling.

    A failed inductor compile falls back to "fx", with the reason in ``CapturedStep.note``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"jit backend must be one of {BACKENDS}, got {backend!r}")
    ops = count_ops(graph)
    if backend in ("fx", "forward"):
        return CapturedStep(graph, graph, backend, ops)
    start = time.perf_counter()
    try:
        run = _inductor(graph, inputs, quiet)
    except Exception as err:  # noqa: BLE001 - the fx replay is always available
        return CapturedStep(graph, graph, "fx", ops,
                            note=f"inductor failed ({type(err).__name__}: {_first_line(err)})")
    return CapturedStep(graph, run, "inductor", ops, time.perf_counter() - start)


def _inductor(graph, inputs, quiet):
    with warnings.catch_warnings():
        # torch's own deprecation notices while importing and running the compiler are not
        # about the user's program; quiet=True silences the rest too
        warnings.simplefilter("ignore" if quiet else "default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        from torch._inductor import config
        from torch._inductor.compile_fx import compile_fx

        with config.patch(fallback_random=True), torch.no_grad():
            return compile_fx(graph, list(inputs))


class PrecomputedGrads(torch.autograd.Function):
    """A loss whose gradient was computed already (by a captured step).

    ``PrecomputedGrads.apply(value, grads, *leaves)`` returns ``value``; its backward gives
    leaf i the gradient ``grad_output * grads[i]`` (None where ``grads[i]`` is None: the leaf
    did not reach the loss, as in eager autograd). First order only.
    """

    @staticmethod
    def forward(ctx, value, grads, *leaves):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        grads = ctx.grads
        if not _is_one(grad_output):
            grads = tuple(None if g is None else g * grad_output for g in grads)
        return (None, None) + tuple(grads)


def _is_one(t):
    return t.numel() == 1 and float(t) == 1.0
