"""``Trainer``: detectron2's DefaultTrainer wired for the open-vocabulary methods."""
import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..data.loader import build_resumable_train_loader
from ..data.mappers import TestImageMapper, build_train_mapper
from ..data.vocabulary import unprompted_background_index, vocabulary_of
from .checkpointer import ConvertingCheckpointer
from .evaluation import build_sem_seg_evaluator, format_summary_table
from .optimizer import build_optimizer

__all__ = ["Trainer", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class Trainer(DefaultTrainer):
    """DefaultTrainer with the sed_d2 mapper, optimizer, checkpointer and evaluation.

    Evaluation sets each test dataset's own vocabulary on the model before running it, so
    every benchmark of ``DATASETS.TEST`` is evaluated in one process, and prints one summary
    table at the end.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with three changes: DDP gets no device_ids on CPU (Gloo
        # multi-process training), mixed precision is the model's own bf16 autocast
        # (MODEL.OVSEG.TRAIN_PRECISION) instead of fp16 AMPTrainer, and the checkpointer
        # loads official checkpoints.
        TrainerBase.__init__(self)
        if cfg.SOLVER.AMP.ENABLED:
            raise ValueError(
                "SOLVER.AMP.ENABLED (fp16 + GradScaler) is not used by sed_d2; "
                "set MODEL.OVSEG.TRAIN_PRECISION bf16 for mixed-precision training"
            )
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_gpu = next(model.parameters()).device.type == "cuda"
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            device_ids=[comm.get_local_rank()] if on_gpu else None,
        )
        self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = ConvertingCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            strict=not cfg.MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_train_loader(self, cfg):
        # An instance method (DefaultTrainer calls it on self) so the sampler stays reachable
        # for resume_or_load: the stream depends only on (SEED, position), see data/loader.py.
        # The mapper is the config's (INPUT.DATASET_MAPPER_NAME): label maps or image-caption pairs.
        loader, self._train_sampler = build_resumable_train_loader(cfg, build_train_mapper(cfg))
        return loader

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            lr = max(group["lr"] for group in self.optimizer.param_groups)
            last = self.checkpointer.get_checkpoint_file() or "none (no checkpoint was saved yet)"
            raise FloatingPointError(
                f"training diverged at iteration {self.iter} (learning rate {lr:.3g}): {e}\n"
                f"The last checkpoint (checkpoints are only saved with finite parameters) is {last}; "
                "--resume restarts from it (a lower SOLVER.BASE_LR or gradient clipping may help)."
            ) from e

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # Workers start on the first step, after this: they skip what earlier runs consumed.
        self._train_sampler.set_start_iter(self.start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=TestImageMapper(cfg), batch_size=cfg.TEST.IMS_PER_BATCH
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_sem_seg_evaluator(dataset_name, output_dir=output_folder, boundary_iou=cfg.TEST.BOUNDARY_IOU)

    def build_writers(self):
        # detectron2's default writers include TensorBoard, which is optional here.
        from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

        writers = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        try:
            import tensorboard  # noqa: F401  (TensorboardXWriter imports it only on first write)

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError:
            logger.info("tensorboard is not installed: metrics go to metrics.json and the log")
        return writers

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate every dataset of ``cfg.DATASETS.TEST``, each with its own vocabulary.

        Returns ``{dataset_name: {"sem_seg": {...}}}`` (detectron2 collapses a single dataset
        to its own dict; we keep the nesting only when there are several, like DefaultTrainer).
        """
        segmentor = unwrap_model(model)
        previous_vocabulary = segmentor.test_vocabulary
        previous_background = segmentor.background_index
        results = OrderedDict()
        try:
            for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
                # Datasets with an unprompted background class (VOC-21, COCO-Object) say so in
                # their metadata: the model scores it with its background threshold.
                segmentor.set_vocabulary(
                    vocabulary_of(dataset_name), background_index=unprompted_background_index(dataset_name)
                )
                data_loader = cls.build_test_loader(cfg, dataset_name)
                evaluator = (
                    evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, dataset_name)
                )
                results[dataset_name] = inference_on_dataset(model, data_loader, evaluator)
                if comm.is_main_process():
                    logger.info(f"Evaluation results for {dataset_name} in csv format:")
                    print_csv_format(results[dataset_name])
        finally:
            if previous_vocabulary is not None:
                segmentor.set_vocabulary(previous_vocabulary, background_index=previous_background)
        if comm.is_main_process() and results:
            table = format_summary_table(results)
            logger.info("Summary over all test datasets (mIoU etc. in %):\n" + table)
        if len(results) == 1:
            return list(results.values())[0]
        return results
