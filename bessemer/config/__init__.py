"""One typed config tree, loaded from TOML with dotted command-line overrides."""

from bessemer.config.load import load_config, parse_override, to_dict
from bessemer.config.schema import (
    CheckpointSection,
    DataSection,
    EvalSection,
    GenerateSection,
    JobConfig,
    LogSection,
    ModelSection,
    OptimSection,
    ParallelSection,
    ScheduleSection,
    ServeSection,
    TrainSection,
)

__all__ = [
    "CheckpointSection",
    "DataSection",
    "EvalSection",
    "GenerateSection",
    "JobConfig",
    "LogSection",
    "ModelSection",
    "OptimSection",
    "ParallelSection",
    "ScheduleSection",
    "ServeSection",
    "TrainSection",
    "load_config",
    "parse_override",
    "to_dict",
]
