"""Optimizers: torch optimizers over param-store parameters, schedules, multi-optimizers."""

from svigraph.optim.lr_scheduler import (
    CosineAnnealingLR,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)
from svigraph.optim.multi import (
    MixedMultiOptimizer,
    MultiOptimizer,
    OptimMultiOptimizer,
    TorchMultiOptimizer,
)
from svigraph.optim.optim import (
    ASGD,
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    ClippedAdam,
    NAdam,
    Optim,
    RAdam,
    RMSprop,
    Rprop,
)

__all__ = [
    "ASGD", "SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "ClippedAdam",
    "CosineAnnealingLR", "CyclicLR", "ExponentialLR", "LRScheduler", "LambdaLR",
    "MixedMultiOptimizer", "MultiOptimizer", "MultiStepLR", "NAdam", "OneCycleLR", "Optim",
    "OptimMultiOptimizer", "RAdam", "RMSprop", "ReduceLROnPlateau", "Rprop", "StepLR",
    "TorchMultiOptimizer",
]
