"""Learning-rate schedules: an ``Optim`` whose torch optimizers each get a torch scheduler."""

from __future__ import annotations

import torch

from svigraph.optim.optim import Optim, _check_kwargs, _name

_S = torch.optim.lr_scheduler


class LRScheduler(Optim):
    """An :class:`Optim` driven by a ``torch.optim.lr_scheduler`` class.

    Every torch optimizer the wrapper creates gets its own scheduler, built with the
    remaining keys of ``optim_args``. Call the wrapper on params to take optimizer steps,
    and ``step()`` (``step(metric)`` for ``ReduceLROnPlateau``) to advance the schedule.
    Parameters sharing arguments share an optimizer, so one appearing late starts at the
    schedule's current learning rate.

    Args:
        scheduler_constructor: a scheduler class, e.g. ``torch.optim.lr_scheduler.StepLR``.
        optim_args: ``{"optimizer": torch optimizer class, "optim_args": its arguments (a
            dict or a callable param_name -> dict), **scheduler keyword arguments}``.
        clip_args: gradient clipping, as for :class:`Optim`.

    Example:
        >>> sched = LRScheduler(torch.optim.lr_scheduler.ExponentialLR,
        ...                     {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1},
        ...                      "gamma": 0.5})
    """

    def __init__(self, scheduler_constructor, optim_args, clip_args=None):
        if not callable(scheduler_constructor):
            raise TypeError(f"scheduler_constructor must be a torch.optim.lr_scheduler class "
                            f"such as StepLR, got {scheduler_constructor!r}")
        if not isinstance(optim_args, dict):
            raise TypeError(f"optim_args must be a dict, got {type(optim_args).__name__}; "
                            "e.g. {'optimizer': torch.optim.SGD, 'optim_args': {'lr': 0.1}, "
                            "'gamma': 0.5}")
        missing = [k for k in ("optimizer", "optim_args") if k not in optim_args]
        if missing:
            raise ValueError(f"optim_args for {_name(scheduler_constructor)} lacks "
                             f"{', '.join(map(repr, missing))}; give the torch optimizer and "
                             "its arguments, e.g. {'optimizer': torch.optim.SGD, "
                             "'optim_args': {'lr': 0.1}, <scheduler arguments>}")
        kwargs = {k: v for k, v in optim_args.items() if k not in ("optimizer", "optim_args")}
        _check_kwargs(scheduler_constructor, kwargs, "scheduler arguments")
        self._scheduler_constructor = scheduler_constructor
        self._scheduler_kwargs = kwargs
        super().__init__(optim_args["optimizer"], optim_args["optim_args"], clip_args)

    def _new_slot(self, leaf, args):
        slot = super()._new_slot(leaf, args)
        slot.scheduler = self._scheduler_constructor(slot.optimizer, **self._scheduler_kwargs)
        return slot

    def step(self, *args, **kwargs):
        """Advance every scheduler by one step (give the metric for ReduceLROnPlateau)."""
        for slot in self._slots.values():
            slot.scheduler.step(*args, **kwargs)

    @property
    def schedulers(self):
        """The torch schedulers created so far, one per torch optimizer."""
        return [slot.scheduler for slot in self._slots.values()]


class _Alias(LRScheduler):
    _scheduler_class = None

    def __init__(self, optim_args, clip_args=None):
        super().__init__(self._scheduler_class, optim_args, clip_args)


def _alias(scheduler_class):
    name = scheduler_class.__name__
    return type(name, (_Alias,), {
        "_scheduler_class": scheduler_class, "__module__": __name__, "__qualname__": name,
        "__doc__": f"``{name}(optim_args, clip_args=None)``: :class:`LRScheduler` over "
                   f"``torch.optim.lr_scheduler.{name}``; ``optim_args`` holds "
                   "``optimizer``, ``optim_args`` and the scheduler's arguments."})


ExponentialLR = _alias(_S.ExponentialLR)
StepLR = _alias(_S.StepLR)
MultiStepLR = _alias(_S.MultiStepLR)
CosineAnnealingLR = _alias(_S.CosineAnnealingLR)
LambdaLR = _alias(_S.LambdaLR)
ReduceLROnPlateau = _alias(_S.ReduceLROnPlateau)
OneCycleLR = _alias(_S.OneCycleLR)
CyclicLR = _alias(_S.CyclicLR)
