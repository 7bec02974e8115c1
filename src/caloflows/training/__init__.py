"""Training utilities shared by the generators: LR schedules, a resumable trainer, model files."""

from .checkpoint import ModelDirError, read_model_config, write_model_config, save_weights, load_weights
from .loop import Trainer, TrainResult, resolve_device
from .schedules import make_scheduler

__all__ = [
    "ModelDirError",
    "read_model_config",
    "write_model_config",
    "save_weights",
    "load_weights",
    "Trainer",
    "TrainResult",
    "resolve_device",
    "make_scheduler",
]
