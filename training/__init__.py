"""Training TriLM and FloatLM with the paper's recipe: `SpectraTrainer`, schedules, data, recipes (see recipes/)."""

from .arguments import DataArguments, ModelArguments, SpectraTrainingArguments, parse_recipe, recipe_path
from .run import TrainResult, train
from .schedules import SpectraLRScheduler, SpectraSchedule, paper_schedule
from .trainer import SpectraTrainer

__all__ = [
    "DataArguments",
    "ModelArguments",
    "SpectraLRScheduler",
    "SpectraSchedule",
    "SpectraTrainer",
    "SpectraTrainingArguments",
    "TrainResult",
    "paper_schedule",
    "parse_recipe",
    "recipe_path",
    "train",
]
