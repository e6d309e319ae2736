"""Training and evaluation wiring: trainer, optimizer, evaluators, checkpointer."""
from .checkpointer import ConvertingCheckpointer
from .evaluation import OpenVocabSemSegEvaluator, build_sem_seg_evaluator, format_summary_table
from .optimizer import build_optimizer, build_param_groups
from .trainer import Trainer, unwrap_model

__all__ = [
    "ConvertingCheckpointer",
    "OpenVocabSemSegEvaluator",
    "Trainer",
    "build_optimizer",
    "build_param_groups",
    "build_sem_seg_evaluator",
    "format_summary_table",
    "unwrap_model",
]
