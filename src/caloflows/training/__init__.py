"""Training utilities shared by the generators: the training loop, LR schedules, model files, DDP."""

from .checkpoint import ModelDirError, load_weights, read_model_config, save_weights, write_model_config
from .loop import ArraySource, StreamSource, TrainConfig, TrainResult, fit_flow, resolve_device
from .schedules import make_scheduler

__all__ = [
    "ModelDirError",
    "read_model_config",
    "write_model_config",
    "save_weights",
    "load_weights",
    "fit_flow",
    "ArraySource",
    "StreamSource",
    "TrainConfig",
    "TrainResult",
    "resolve_device",
    "make_scheduler",
]
