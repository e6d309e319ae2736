"""Register every benchmark and training set of the five methods, once for the whole package.

Importing ``sed_d2.data.datasets`` calls ``register_all_datasets`` with
``os.path.expanduser($DETECTRON2_DATASETS)`` (default ``./datasets``), read at that moment.
Registration touches no file: each DatasetCatalog loader checks its folders when called and
raises ``DatasetNotFoundError`` / ``IncompleteDatasetError`` (see ``sem_seg_loader``) naming
``$DETECTRON2_DATASETS``, the expected folder and the prepare script to run.

Names
-----
SED / CAT-Seg / FGA-Seg protocol (the official names, so their commands carry over):

================================== ========= ====== ==========================================
name                                classes   images labels, under $DETECTRON2_DATASETS/
================================== ========= ====== ==========================================
coco_2017_train_stuff_all_sem_seg   171       118287 coco-stuff/annotations_detectron2/train2017
coco_2017_test_stuff_all_sem_seg    171       5000   coco-stuff/annotations_detectron2/val2017
ade20k_150_test_sem_seg             150       2000   ADEChallengeData2016/annotations_detectron2/
                                                     validation
ade20k_full_sem_seg_freq_val_all    847       2000   ADE20K_2021_17_01/annotations_detectron2/
                                                     validation (uint16 TIFF)
context_59_test_sem_seg             59        5104   VOCdevkit/VOC2010/annotations_detectron2/
                                                     pc59_val
context_459_test_sem_seg            459       5104   VOCdevkit/VOC2010/annotations_detectron2/
                                                     pc459_val (uint16 TIFF)
voc_2012_test_sem_seg               20        1449   VOCdevkit/VOC2012/annotations_detectron2/val
voc_2012_test_background_sem_seg    59 -> 21  1449   VOCdevkit/VOC2012/annotations_detectron2_bg/
                                                     val
================================== ========= ====== ==========================================

GroupViT / TCL protocol, as SynSeg evaluates ("background" is class 0 where it exists):

================================== ========= ====== ==========================================
voc_2012_val_bg21_sem_seg           1 + 20    1449   VOCdevkit/VOC2012/annotations_detectron2_bg0/
                                                     val
context_60_val_bg_sem_seg           1 + 59    5104   VOCdevkit/VOC2010/annotations_detectron2/
                                                     pc60_val
coco_object_val_sem_seg             1 + 80    5000   coco-stuff/annotations_detectron2_object/
                                                     val2017
cityscapes_19_val_sem_seg           19        500    cityscapes/gtFine/val/<city>/
                                                     *_gtFine_labelTrainIds.png
================================== ========= ====== ==========================================

SynSeg's COCO-Stuff and ADE benchmarks are ``coco_2017_test_stuff_all_sem_seg`` and
``ade20k_150_test_sem_seg`` (the label arrays are identical in both protocols), and its
"Context" (59 classes, no background, per the paper's Table IV) is ``context_59_test_sem_seg``.
Training images with captions: ``cc12m_train`` (``cc12m.py``).

Metadata
--------
Every semantic-segmentation name sets:

``stuff_classes``   list[str], the vocabulary; index i = label value i (synonyms joined ", ").
``ignore_label``    int, the label value that is not scored (255; 65535 for the 16-bit TIFFs).
``evaluator_type``  ``"sem_seg"`` (plain mIoU) or ``"sem_seg_background"`` (VOC-20b, below).
``image_root``, ``sem_seg_root``  the two folders (``sem_seg_root``, not the official typo
                    ``seg_seg_root``).
``image_ext``, ``gt_ext``  the file-name ending after the shared stem: a bare extension without
                    its dot (``"jpg"``, ``"png"``, ``"tif"``, as detectron2's ``load_sem_seg``
                    takes it), or a longer suffix (Cityscapes: ``"_leftImg8bit.png"``,
                    ``"_gtFine_labelTrainIds.png"``).
``prepare_script``  repo-relative path of the script that prepares the labels.
``background_handling``  how the benchmark treats background:

    ``"none"``: no background class; pixels outside the classes carry ``ignore_label``
        (COCO-Stuff, ADE-150/847, PC-59/459, VOC-20, Cityscapes).
    ``"proxy_prompts"``: the VOC-20b protocol of the official SED/CAT-Seg code. The ground
        truth has background = ``background_index`` (20); ``stuff_classes`` are the 59
        prompts of the official voc20b.json: the 20 VOC classes, then the other 39 PC-59
        names as background proxies. Every prediction >= ``background_index`` counts as
        background and mIoU is over ``background_index + 1`` = 21 classes
        (``evaluator_type`` ``"sem_seg_background"``).
    ``"unprompted_class"``: the GroupViT/TCL protocol. ``stuff_classes[background_index]``
        (index 0) is ``background_class`` ("background"), a scored class of the ground
        truth, but it is not a text prompt: the model scores only the other names and gives
        the background channel a constant (its background threshold) before the argmax.
        Plain ``"sem_seg"`` evaluation over all classes, background included.

``background_index``  int, only with ``"proxy_prompts"`` (20) or ``"unprompted_class"`` (0).
``background_class``  str, only with ``"unprompted_class"``: the name at ``background_index``.
``stuff_dataset_id_to_contiguous_id``  COCO-Stuff (COCO id -> label value) and ADE-847 (ADE
                    class id -> label value), as the official registrations.

``cc12m_train`` sets ``task`` ("image_caption"), ``image_root`` (the download), ``caption_index_root`` (the noun-phrase
index) and ``prepare_script``; it has no classes and no evaluator.
"""

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from . import builtin_meta
from ..vocabulary import IMAGE_CAPTION_TASK
from .cc12m import CC12M_DIRNAME, INDEX_DIRNAME, load_cc12m
from .sem_seg_loader import DATASETS_ENV_VAR, load_sem_seg_pairs

__all__ = [
    "SemSegDataset",
    "SEM_SEG_DATASETS",
    "CC12M_DATASET_NAME",
    "register_all_datasets",
]

logger = logging.getLogger(__name__)

_PREPARE = "datasets/prepare/"
# COCO-Stuff: raw map value = COCO id - 1; these 11 thing ids have no masks.
_COCO_UNUSED_RAW_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

_COCO_DOWNLOAD = (
    "COCO 2017 images (images.cocodataset.org/zips/{train2017,val2017}.zip) into "
    "coco-stuff/images and stuffthingmaps_trainval2017.zip into coco-stuff/annotations"
)
_ADE150_DOWNLOAD = "ADEChallengeData2016.zip (data.csail.mit.edu/places/ADEchallenge)"
_ADE847_DOWNLOAD = (
    "ADE20K_2021_17_01.zip (groups.csail.mit.edu/vision/datasets/ADE20K, sign-in required)"
)
_VOC2010_DOWNLOAD = (
    "VOCtrainval_03-May-2010.tar (images) into VOCdevkit/VOC2010 with "
    "trainval_merged.json (PC-59/60) or trainval.tar.gz (PC-459)"
)
_VOC2012_DOWNLOAD = "VOCtrainval_11-May-2012.tar into VOCdevkit/VOC2012"
_CITYSCAPES_DOWNLOAD = (
    "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip (cityscapes-dataset.com, "
    "sign-in required) into cityscapes"
)


def _coco_stuff_id_map() -> Dict[int, int]:
    class_raw_values = [v for v in range(182) if v not in _COCO_UNUSED_RAW_VALUES]
    return {raw + 1: i for i, raw in enumerate(class_raw_values)}


def _ade847_id_map() -> Dict[int, int]:
    return {
        ade_id: i for i, ade_id in enumerate(builtin_meta.class_names("ade20k_847_ade_ids.json"))
    }


@dataclass(frozen=True)
class SemSegDataset:
    """One registered semantic-segmentation split (paths relative to the datasets root).

    Attributes:
        name: the DatasetCatalog / MetadataCatalog name.
        image_dir, gt_dir: image and label folders relative to ``$DETECTRON2_DATASETS``.
        image_ext, gt_ext: endings after the shared stem (``sem_seg_loader.file_suffix``).
        classes: callable returning ``stuff_classes`` (read lazily from the JSON lists).
        ignore_label: label value that is not scored.
        split_defined_by: "images" (image folder = split) or "labels" (VOC/Context).
        official_size: number of images of the official split.
        prepare_script: repo-relative path of the script writing ``gt_dir``.
        download: what to download, for the not-found message.
        evaluator_type, background_handling, background_index: see the module docstring.
        recursive: images and labels sit in sub-folders (Cityscapes' cities).
        extra_metadata: callable returning further metadata (id maps).
    """

    name: str
    image_dir: str
    gt_dir: str
    image_ext: str
    gt_ext: str
    classes: Callable[[], List[str]]
    ignore_label: int
    split_defined_by: str
    official_size: int
    prepare_script: str
    download: str
    evaluator_type: str = "sem_seg"
    background_handling: str = "none"
    background_index: Optional[int] = None
    recursive: bool = False
    extra_metadata: Optional[Callable[[], Dict]] = field(default=None, compare=False)

    def metadata(self, root: str) -> Dict:
        stuff_classes = self.classes()
        meta = {
            "stuff_classes": stuff_classes,
            "ignore_label": self.ignore_label,
            "evaluator_type": self.evaluator_type,
            "image_root": os.path.join(root, self.image_dir),
            "sem_seg_root": os.path.join(root, self.gt_dir),
            "image_ext": self.image_ext,
            "gt_ext": self.gt_ext,
            "prepare_script": self.prepare_script,
            "background_handling": self.background_handling,
        }
        if self.background_index is not None:
            meta["background_index"] = self.background_index
        if self.background_handling == "unprompted_class":
            meta["background_class"] = stuff_classes[self.background_index]
        if self.extra_metadata is not None:
            meta.update(self.extra_metadata())
        return meta

    def load(self, root: str) -> List[dict]:
        """The image/label pairs under ``root`` (raises the clear errors of ``sem_seg_loader``)."""
        return load_sem_seg_pairs(
            self.name,
            image_root=os.path.join(root, self.image_dir),
            gt_root=os.path.join(root, self.gt_dir),
            image_ext=self.image_ext,
            gt_ext=self.gt_ext,
            split_defined_by=self.split_defined_by,
            prepare_script=self.prepare_script,
            datasets_root=root,
            download=self.download,
            official_size=self.official_size,
            recursive=self.recursive,
        )


_classes = builtin_meta.class_names
_with_background = builtin_meta.with_background


def _coco_stuff_171(name: str, split: str, official_size: int) -> SemSegDataset:
    """A COCO-Stuff 171-class split: ``coco-stuff/{images,annotations_detectron2}/<split>``."""
    return SemSegDataset(
        name=name,
        image_dir=f"coco-stuff/images/{split}",
        gt_dir=f"coco-stuff/annotations_detectron2/{split}",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_classes, "coco_stuff_171.json"),
        ignore_label=255,
        split_defined_by="images",
        official_size=official_size,
        prepare_script=_PREPARE + "prepare_coco_stuff.py",
        download=_COCO_DOWNLOAD,
        extra_metadata=lambda: {"stuff_dataset_id_to_contiguous_id": _coco_stuff_id_map()},
    )


SEM_SEG_DATASETS: Tuple[SemSegDataset, ...] = (
    # ---------------------------------------------------------------- SED / CAT-Seg protocol
    _coco_stuff_171("coco_2017_train_stuff_all_sem_seg", "train2017", official_size=118287),
    _coco_stuff_171("coco_2017_test_stuff_all_sem_seg", "val2017", official_size=5000),
    SemSegDataset(
        name="ade20k_150_test_sem_seg",
        image_dir="ADEChallengeData2016/images/validation",
        gt_dir="ADEChallengeData2016/annotations_detectron2/validation",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_classes, "ade20k_150.json"),
        ignore_label=255,
        split_defined_by="images",
        official_size=2000,
        prepare_script=_PREPARE + "prepare_ade20k_150.py",
        download=_ADE150_DOWNLOAD,
    ),
    SemSegDataset(
        name="ade20k_full_sem_seg_freq_val_all",
        image_dir="ADE20K_2021_17_01/images_detectron2/validation",
        gt_dir="ADE20K_2021_17_01/annotations_detectron2/validation",
        image_ext="jpg",
        gt_ext="tif",
        classes=functools.partial(_classes, "ade20k_847.json"),
        ignore_label=65535,  # 16-bit TIFF labels
        split_defined_by="images",
        official_size=2000,
        prepare_script=_PREPARE + "prepare_ade20k_847.py",
        download=_ADE847_DOWNLOAD,
        extra_metadata=lambda: {"stuff_dataset_id_to_contiguous_id": _ade847_id_map()},
    ),
    SemSegDataset(
        name="context_59_test_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc59_val",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_classes, "pascal_context_59.json"),
        ignore_label=255,
        split_defined_by="labels",
        official_size=5104,
        prepare_script=_PREPARE + "prepare_pascal_context_59.py",
        download=_VOC2010_DOWNLOAD,
    ),
    SemSegDataset(
        name="context_459_test_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
        image_ext="jpg",
        gt_ext="tif",
        classes=functools.partial(_classes, "pascal_context_459.json"),
        # The official registration says 459, a value no pixel has; 65535 is what an
        # unlabeled 0 becomes (uint16 LabelMap - 1), so it is the one that must be ignored.
        # Index 255 is the real class "monkey": never 255 here.
        ignore_label=65535,
        split_defined_by="labels",
        official_size=5104,
        prepare_script=_PREPARE + "prepare_pascal_context_459.py",
        download=_VOC2010_DOWNLOAD,
    ),
    SemSegDataset(
        name="voc_2012_test_sem_seg",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        gt_dir="VOCdevkit/VOC2012/annotations_detectron2/val",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_classes, "voc_20.json"),
        ignore_label=255,
        split_defined_by="labels",
        official_size=1449,
        prepare_script=_PREPARE + "prepare_voc.py",
        download=_VOC2012_DOWNLOAD,
    ),
    SemSegDataset(
        name="voc_2012_test_background_sem_seg",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        gt_dir="VOCdevkit/VOC2012/annotations_detectron2_bg/val",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_classes, "voc_20_background_proxies_59.json"),
        ignore_label=255,
        split_defined_by="labels",
        official_size=1449,
        prepare_script=_PREPARE + "prepare_voc.py",
        download=_VOC2012_DOWNLOAD,
        evaluator_type="sem_seg_background",
        background_handling="proxy_prompts",
        background_index=20,
    ),
    # ---------------------------------------------------------------- GroupViT / TCL protocol
    SemSegDataset(
        name="voc_2012_val_bg21_sem_seg",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        gt_dir="VOCdevkit/VOC2012/annotations_detectron2_bg0/val",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_with_background, "voc_20.json"),
        ignore_label=255,
        split_defined_by="labels",
        official_size=1449,
        prepare_script=_PREPARE + "prepare_voc.py",
        download=_VOC2012_DOWNLOAD,
        background_handling="unprompted_class",
        background_index=0,
    ),
    SemSegDataset(
        name="context_60_val_bg_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc60_val",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_with_background, "pascal_context_59.json"),
        ignore_label=255,  # no pixel carries it: every pixel is a class or background
        split_defined_by="labels",
        official_size=5104,
        prepare_script=_PREPARE + "prepare_pascal_context_59.py",
        download=_VOC2010_DOWNLOAD,
        background_handling="unprompted_class",
        background_index=0,
    ),
    SemSegDataset(
        name="coco_object_val_sem_seg",
        image_dir="coco-stuff/images/val2017",
        gt_dir="coco-stuff/annotations_detectron2_object/val2017",
        image_ext="jpg",
        gt_ext="png",
        classes=functools.partial(_with_background, "coco_object_80.json"),
        ignore_label=255,  # unlabeled pixels are background here; 255 does not occur
        split_defined_by="images",
        official_size=5000,
        prepare_script=_PREPARE + "prepare_coco_object.py",
        download=_COCO_DOWNLOAD,
        background_handling="unprompted_class",
        background_index=0,
    ),
    SemSegDataset(
        name="cityscapes_19_val_sem_seg",
        image_dir="cityscapes/leftImg8bit/val",
        gt_dir="cityscapes/gtFine/val",
        image_ext="_leftImg8bit.png",
        gt_ext="_gtFine_labelTrainIds.png",
        classes=functools.partial(_classes, "cityscapes_19.json"),
        ignore_label=255,
        split_defined_by="images",
        official_size=500,
        prepare_script=_PREPARE + "prepare_cityscapes.py",
        download=_CITYSCAPES_DOWNLOAD,
        recursive=True,
    ),
)

CC12M_DATASET_NAME = "cc12m_train"
_CC12M_PREPARE = _PREPARE + "prepare_cc12m.py"


def _already_registered(name: str, prepare_script: str) -> bool:
    """True when sed_d2 registered ``name`` before (module re-imported or reloaded).

    A name registered by someone else (e.g. the official SED/CAT-Seg package imported in the
    same process) is an error: both would claim the same benchmark name.
    """
    if name not in DatasetCatalog.list():
        return False
    if MetadataCatalog.get(name).get("prepare_script", None) == prepare_script:
        return True
    raise RuntimeError(
        f"dataset name {name!r} is already registered by another package; sed_d2 registers "
        "it itself. Do not import the official SED/CAT-Seg/FGA-Seg packages in the same "
        "process as sed_d2."
    )


def register_all_datasets(root: str) -> None:
    """Register every name under ``root``; calling it again (same process) does nothing."""
    for dataset in SEM_SEG_DATASETS:
        if _already_registered(dataset.name, dataset.prepare_script):
            continue
        DatasetCatalog.register(dataset.name, functools.partial(dataset.load, root))
        MetadataCatalog.get(dataset.name).set(**dataset.metadata(root))

    if not _already_registered(CC12M_DATASET_NAME, _CC12M_PREPARE):
        dataset_dir = os.path.join(root, CC12M_DIRNAME)
        DatasetCatalog.register(
            CC12M_DATASET_NAME,
            functools.partial(
                load_cc12m,
                CC12M_DATASET_NAME,
                dataset_dir,
                datasets_root=root,
                prepare_script=_CC12M_PREPARE,
            ),
        )
        MetadataCatalog.get(CC12M_DATASET_NAME).set(
            task=IMAGE_CAPTION_TASK,
            image_root=dataset_dir,
            caption_index_root=os.path.join(dataset_dir, INDEX_DIRNAME),
            prepare_script=_CC12M_PREPARE,
        )


_root = os.path.expanduser(os.getenv(DATASETS_ENV_VAR, "datasets"))
register_all_datasets(_root)
