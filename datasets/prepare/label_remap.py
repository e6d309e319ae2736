"""What the prepare scripts that map 8-bit label PNGs through a lookup table share.

``prepare_ade20k_150``, ``prepare_coco_stuff``, ``prepare_coco_object``, ``prepare_cityscapes``
and ``prepare_voc`` read one label map per image and write ``lut[raw]`` as an ``L`` PNG. Each
script describes its dataset (folders, official split sizes, table, download hint); this
module holds the rest:

* ``pu``: ``sed_d2.data.prepare_utils`` (worker pool, progress bar, skip-existing loop,
  atomic writes, summary: the machinery of every prepare script), importable from a
  checkout where ``sed_d2`` is not pip-installed yet;
* ``LutRemap``: a table with what it reads and writes, and the picklable per-file converter
  (``pu.remap_label_png``: a bad file fails alone, named; raw values the format does not
  define are counted in the summary);
* ``parse_dataset_args``: the shared options (``--root``, ``--workers``, ``--overwrite``,
  ``--verify``, ``--splits``) resolved to the dataset folder and the chosen splits;
* ``AnnotationFolders``: a download laid out as ``annotations/<split>/*.png`` next to
  ``images/<split>`` (ADE20K-150, COCO-Stuff), whose ``main`` is a whole script.

The scripts import this module as a sibling (``python datasets/prepare/prepare_X.py`` puts
this folder first on ``sys.path``).
"""

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

__all__ = ["AnnotationFolders", "LutRemap", "parse_dataset_args", "pu"]


@dataclass(frozen=True, eq=False)
class LutRemap:
    """A raw -> registered lookup table; calling it converts one task (``Task -> TaskResult``).

    The call writes ``lut[raw]`` of ``task.source`` to ``task.outputs[0]``. A module-level
    instance pickles like a function, so it runs in the pool workers.

    Attributes:
        lut: 256-entry uint8 table (raw value -> registered value).
        known_raw_values: the raw values the source format defines; any other value found is
            still mapped, and counted in the summary as ``unknown_note.format(value=v)``.
        allowed_values: the values the registration accepts (classes + ignore); the summary
            flags any other value written.
        unknown_note: see ``known_raw_values``; has a ``{value}`` field.
        modes: PIL modes accepted for the input (another mode fails that file, named).
    """

    lut: np.ndarray
    known_raw_values: frozenset
    allowed_values: frozenset
    unknown_note: str
    modes: Tuple[str, ...] = ("L", "P")

    def __call__(self, task: pu.Task) -> pu.TaskResult:
        return pu.remap_label_png(
            task.source,
            task.outputs[0],
            self.lut,
            known_raw_values=self.known_raw_values,
            unknown_note=self.unknown_note,
            modes=self.modes,
        )


def parse_dataset_args(
    description: str,
    argv: Optional[Sequence[str]],
    dirname: str,
    splits: Sequence[str],
    default_splits: Optional[Sequence[str]] = None,
    add_options: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> Tuple[argparse.Namespace, Path, List[str]]:
    """Parse the options of ``pu.build_argument_parser`` (and those ``add_options`` adds).

    Returns the options, ``<root>/<dirname>`` (root: ``--root``, else
    ``$DETECTRON2_DATASETS``, else ``./datasets``) and the ``--splits`` chosen among
    ``splits`` (default: ``default_splits``, else all); an unknown split exits with usage.
    """
    parser = pu.build_argument_parser(description, splits=splits, default_splits=default_splits)
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args(argv)
    return args, pu.resolve_root(args.root) / dirname, pu.parse_splits(args.splits, splits)


@dataclass(frozen=True)
class AnnotationFolders:
    """A download with one label PNG per image: ``<root>/<dirname>/annotations/<split>/*.png``
    next to ``<root>/<dirname>/images/<split>`` (see ``pu.annotation_folder_tasks``).

    Attributes:
        dirname: the dataset folder under the root.
        official_sizes: split -> number of maps in the official download; its keys are the
            splits, in order.
        what: how errors and warnings name a split's annotation folder and image folder,
            each with a ``{split}`` field.
        hint: where to download it, for the error when a split's annotations are missing.
        skip_names_containing: PNGs in the annotation folders that are not label maps.
    """

    dirname: str
    official_sizes: Dict[str, int]
    what: Tuple[str, str]
    hint: str
    skip_names_containing: Optional[str] = None

    def main(
        self,
        script: str,
        description: str,
        *,
        desc: str,
        output_dirname: str,
        remap: LutRemap,
        default_splits: Optional[Sequence[str]] = None,
    ) -> Callable[[Optional[Sequence[str]]], int]:
        """The ``main(argv=None) -> exit status`` of a script converting these maps.

        Each map goes through ``remap`` into ``<root>/<dirname>/<output_dirname>/<split>/``
        under the same name. ``script`` is the script's ``__file__`` (its name heads the
        summary), ``description`` its ``--help`` text, ``desc`` the progress-bar label.
        """
        title = Path(script).stem

        def main(argv: Optional[Sequence[str]] = None) -> int:
            splits = tuple(self.official_sizes)
            args, dataset_dir, chosen = parse_dataset_args(
                description, argv, self.dirname, splits, default_splits
            )
            tasks, outputs = pu.annotation_folder_tasks(
                dataset_dir,
                chosen,
                output_dirname,
                what=self.what[0],
                images_what=self.what[1],
                hint=self.hint,
                official_sizes=self.official_sizes,
                allowed_values=remap.allowed_values,
                skip_names_containing=self.skip_names_containing,
            )
            return pu.run_and_summarize(title, tasks, remap, outputs, args, desc=desc)

        return main
