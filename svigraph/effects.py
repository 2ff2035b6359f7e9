"""The effect-handler core: messages, the handler stack, and ``apply_stack``.

A primitive (``sample``, ``param``, ...) builds a message, a plain dict, and sends it through
the stack of active handlers. Each handler may rewrite the message on the way in
(``process_message``, innermost handler first) and read it on the way out
(``postprocess_message``, outermost first). If no handler set a value, the default behaviour
computes it in between.

Message keys: ``type``, ``name``, ``fn``, ``args``, ``value``, ``is_observed``, ``infer``,
``scale``, ``mask``, ``cond_indep_stack``, ``stop``.
"""

from __future__ import annotations

import copy

from runtime.terms import LAZY_EXPANDED, expanded_for_real

_STACK = []


def new_message(type, name, fn, value=None, *, args=(), is_observed=False, infer=None):
    return {
        "type": type,
        "name": name,
        "fn": fn,
        "args": args,
        "value": value,
        "is_observed": is_observed,
        "infer": infer if infer is not None else {},
        "scale": 1.0,
        "mask": None,
        "cond_indep_stack": (),
        "stop": False,
    }


def default_process(msg):
    """Compute the value of a message no handler has set."""
    if msg["value"] is not None:
        return
    if msg["type"] == "sample":
        fn = msg["fn"]
        if LAZY_EXPANDED in fn.__dict__:  # a plate left its parameters unexpanded
            fn = msg["fn"] = expanded_for_real(fn)
        msg["value"] = fn.rsample() if fn.has_rsample else fn.sample()
    else:
        msg["value"] = msg["fn"](*msg["args"])


def apply_stack(msg):
    """Send ``msg`` through the active handlers and return it with its value set."""
    stack = _STACK
    start = 0
    for i in range(len(stack) - 1, -1, -1):  # innermost handler first
        stack[i].process_message(msg)
        if msg["stop"]:
            # A handler that stops the message owns it: handlers outside it never see it.
            start = i
            break
    default_process(msg)
    for handler in stack[start:]:  # outermost handler that saw it, then inwards
        handler.postprocess_message(msg)
    return msg


class Messenger:
    """Base of every handler. One instance works three ways:

    * wrapper: ``handler(fn, **kw)(*args)`` runs ``fn`` under the handler;
    * decorator: ``@handler(**kw)`` above a ``def``;
    * context manager: ``with handler(**kw): ...``.
    """

    def __init__(self, fn=None):
        if fn is not None and not callable(fn):
            raise TypeError(
                f"{type(self).__name__} expected a callable model or guide, got "
                f"{type(fn).__name__}; pass the function itself, e.g. {type(self).__name__}(model)"
            )
        self.fn = fn

    def __enter__(self):
        _STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if self in _STACK:
            # On an error inside, drop this handler and any left above it, so a failed
            # model never leaves handlers behind.
            del _STACK[_STACK.index(self):]

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            if len(args) == 1 and callable(args[0]) and not kwargs:
                wrapped = copy.copy(self)
                wrapped.fn = args[0]
                return wrapped
            raise TypeError(f"{type(self).__name__} has no function to run; wrap one first")
        with self:
            return self.fn(*args, **kwargs)

    def process_message(self, msg):
        pass

    def postprocess_message(self, msg):
        pass
