"""Shared machinery of the dataset preparation scripts (``datasets/prepare/prepare_*.py``).

Every script turns one official download into the layout that ``sed_d2.data.datasets``
registers, and gets the same behaviour from this module:

* **parallel**: the per-file work runs in a process pool (``--workers``, default: all cores)
  behind a tqdm progress bar;
* **resumable and idempotent**: a task whose outputs all exist is skipped (``--overwrite``
  redoes it); every output is written to a hidden temporary file in its final folder and
  renamed with ``os.replace``, so an interrupted run never leaves a truncated file under a
  final name, and a second run after a complete one writes nothing;
* **inputs verified**: the folders and index files a script needs are checked before any
  work starts (``require_dir``/``require_file`` raise ``InputMissingError`` naming the path
  and where it comes from); a corrupt or missing *per-file* input is recorded with its path
  and the reason, and the run goes on with the other files;
* **a summary at the end**: files present per split (against the official split size), what
  this run wrote/skipped/failed, the label values seen, and any value outside the range the
  registration declares. The exit status is 1 when any file failed.

This module itself needs only numpy, PIL and tqdm (no detectron2, no torch).
"""

import argparse
import json
import logging
import multiprocessing
import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = [
    "DATASETS_ENV_VAR",
    "CLASS_NAMES_DIR",
    "SPLITS_DIR",
    "PrepareError",
    "InputMissingError",
    "CorruptInputError",
    "Task",
    "TaskResult",
    "SplitOutput",
    "PrepareReport",
    "default_dataset_root",
    "read_class_names",
    "read_split_list",
    "build_argument_parser",
    "parse_splits",
    "require_dir",
    "require_file",
    "atomic_output",
    "save_label_png",
    "save_label_tiff",
    "save_jpeg",
    "read_image_array",
    "unique_values",
    "make_lut",
    "remap_label_png",
    "read_back_outputs",
    "check_input_count",
    "warn_if_missing",
    "resolve_root",
    "run_main",
    "run_tasks",
    "run_and_summarize",
    "annotation_folder_tasks",
    "count_files",
    "format_values",
    "summarize",
]

logger = logging.getLogger(__name__)

DATASETS_ENV_VAR = "DETECTRON2_DATASETS"
# Package data shared with the registrations; read by path so that importing them needs no
# detectron2 (``sed_d2.data.datasets`` itself registers into detectron2's catalogs).
CLASS_NAMES_DIR = Path(__file__).resolve().parent / "datasets" / "class_names"
SPLITS_DIR = Path(__file__).resolve().parent / "datasets" / "splits"

# Temporary files are hidden and end in ".tmp", so no loader ever lists them as data
# (they do not end in .png/.tif/.jpg/.jsonl) and a later run can remove stale ones.
_TEMP_PATTERN = re.compile(r"^\..+\.\d+\.tmp$")


class PrepareError(Exception):
    """The run cannot start; the message says what to fix (printed without a traceback)."""


class InputMissingError(PrepareError):
    """A folder or index file the whole run depends on is missing or unreadable."""


class CorruptInputError(Exception):
    """One input file cannot be used; the run records it and goes on with the others."""


# ----------------------------------------------------------------------------- paths, lists


def default_dataset_root() -> Path:
    """``$DETECTRON2_DATASETS`` with ``~`` expanded, or ``./datasets`` when unset."""
    return Path(os.path.expanduser(os.getenv(DATASETS_ENV_VAR, "datasets")))


def read_class_names(filename: str) -> List[str]:
    """A class-name list shipped as package data (``class_names/<filename>``)."""
    path = CLASS_NAMES_DIR / filename
    with open(path, encoding="utf-8") as f:
        names = json.load(f)
    if not isinstance(names, list):
        raise ValueError(f"{path}: expected a JSON array, got {type(names).__name__}")
    return names


def read_split_list(path: Path) -> List[str]:
    """File stems, one per line (blank lines and surrounding whitespace ignored)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# ----------------------------------------------------------------------------- command line


def build_argument_parser(
    description: str,
    *,
    splits: Optional[Sequence[str]] = None,
    default_splits: Optional[Sequence[str]] = None,
) -> argparse.ArgumentParser:
    """The options every prepare script shares; scripts add their own on top."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"dataset root (default: ${DATASETS_ENV_VAR}, or ./datasets when unset)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores; 0 or 1 runs in this process)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo outputs that already exist (default: skip them, so a rerun resumes)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also re-read the outputs a rerun skips, so the summary covers every file",
    )
    if splits is not None:
        parser.add_argument(
            "--splits",
            default=",".join(default_splits or splits),
            help=f"comma-separated splits among {', '.join(splits)} "
            f"(default: {','.join(default_splits or splits)})",
        )
    return parser


def resolve_root(root: Optional[Path]) -> Path:
    return Path(os.path.expanduser(str(root))) if root is not None else default_dataset_root()


def parse_splits(text: str, allowed: Sequence[str], option: str = "--splits") -> List[str]:
    """A comma-separated choice among ``allowed`` (exits with a usage message otherwise)."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"{option} {text!r}: choose among {', '.join(allowed)}")
    return chosen


def require_dir(path: Path, what: str, hint: str) -> Path:
    """Fail before any work when a needed folder is missing, saying where it comes from."""
    if not Path(path).is_dir():
        raise InputMissingError(f"{what} not found: {path} is not a folder.\n{hint}")
    return Path(path)


def require_file(path: Path, what: str, hint: str) -> Path:
    if not Path(path).is_file():
        raise InputMissingError(f"{what} not found: {path} does not exist.\n{hint}")
    return Path(path)


# ----------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` on success.

    ``os.replace`` within one folder is atomic, so ``path`` either does not exist or is
    complete; a failure (or Ctrl-C) removes the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def save_label_png(label: np.ndarray, path: Path) -> None:
    """A uint8 H x W label map as a single-channel (mode ``L``) PNG."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"{path}: a PNG label must be 2-D uint8, got {label.dtype} {label.shape}")
    with atomic_output(path) as tmp:
        Image.fromarray(label).save(tmp, format="PNG")


def save_label_tiff(label: np.ndarray, path: Path) -> None:
    """A uint16 H x W label map as a 16-bit TIFF (PIL mode ``I;16``), as the official scripts."""
    if label.dtype != np.uint16 or label.ndim != 2:
        raise ValueError(
            f"{path}: a TIFF label must be 2-D uint16, got {label.dtype} {label.shape}"
        )
    with atomic_output(path) as tmp:
        Image.fromarray(label).save(tmp, format="TIFF")


def save_jpeg(image: np.ndarray, path: Path) -> None:
    """Encode with PIL's default JPEG settings (quality 75, 4:2:0), like the official scripts."""
    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG")


def remove_stale_temporaries(folders: Iterable[Path]) -> int:
    """Delete temporary files an interrupted run left behind (do not run two instances at once)."""
    removed = 0
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.is_file() and _TEMP_PATTERN.match(entry.name):
                os.unlink(entry.path)
                removed += 1
    return removed


# ----------------------------------------------------------------------------- reading


def read_image_array(path: Path, modes: Sequence[str] = ("L", "P")) -> np.ndarray:
    """Decode an image (by default a label map), raising ``CorruptInputError`` with the path
    when it is missing, undecodable or of a PIL mode not in ``modes``.

    ``np.asarray`` of a palette (``P``) image gives its indices, which is what VOC and the
    COCO-Stuff maps store; an RGB image here would be a colour visualisation, not labels.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in modes:
                raise CorruptInputError(
                    f"{path}: PIL mode {image.mode!r}, expected one of {list(modes)}"
                )
            return np.asarray(image).copy()
    except CorruptInputError:
        raise
    except FileNotFoundError as e:
        raise CorruptInputError(f"{path}: missing ({e.strerror})") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on broken files
        raise CorruptInputError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e


def unique_values(label: np.ndarray) -> Tuple[int, ...]:
    return tuple(int(v) for v in np.unique(label))


def make_lut(mapping: Dict[int, int], *, size: int, default: int, dtype=np.uint8) -> np.ndarray:
    """A lookup table ``lut[raw] = mapped`` of ``size`` entries, ``default`` elsewhere."""
    lut = np.full(size, default, dtype=dtype)
    for raw, mapped in mapping.items():
        lut[raw] = mapped
    return lut


def remap_label_png(
    source: str,
    output: str,
    lut: np.ndarray,
    *,
    known_raw_values: frozenset,
    unknown_note: str,
    modes: Sequence[str] = ("L", "P"),
) -> "TaskResult":
    """Read an 8-bit label map, write ``lut[label]`` as an ``L`` PNG, report what it saw.

    Args:
        source, output: input label image and output path.
        lut: 256-entry uint8 lookup table (raw value -> registered value).
        known_raw_values: raw values the source format defines; any other value is counted
            in the summary with ``unknown_note.format(value=v)`` (the LUT still maps it).
        modes: PIL modes accepted for the input.
    """
    raw = read_image_array(Path(source), modes)
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise CorruptInputError(
            f"{source}: expected a single-channel 8-bit label map, got {raw.dtype} {raw.shape}"
        )
    mapped = lut[raw]
    save_label_png(mapped, Path(output))
    notes = tuple(
        unknown_note.format(value=v) for v in unique_values(raw) if v not in known_raw_values
    )
    return TaskResult(values=unique_values(mapped), notes=notes)


def read_back_outputs(task: "Task") -> "TaskResult":
    """``--verify``: the label values of a finished task's existing label outputs."""
    values = set()
    for out in task.outputs:
        if out.endswith((".png", ".tif")):
            values.update(unique_values(read_image_array(Path(out), ("L", "P", "I;16"))))
    return TaskResult(values=tuple(sorted(values)))


def check_input_count(what: str, found: int, expected: Optional[int]) -> None:
    """Warn (not fail) when an input folder does not hold the official number of files."""
    if expected is not None and found != expected:
        logger.warning(
            "%s: found %d, the official download has %d (incomplete download or unzip?)",
            what,
            found,
            expected,
        )


def warn_if_missing(path: Path, what: str) -> None:
    """For inputs the conversion does not read but the registration will (images)."""
    if not Path(path).is_dir():
        logger.warning(
            "%s not found at %s: the labels will be written, but loading the dataset needs it",
            what,
            path,
        )


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One unit of work: ``outputs`` are produced from ``source`` (+ ``payload``).

    Attributes:
        split: the split the outputs belong to (for the summary).
        source: the main input, named when the task fails.
        outputs: every file the task writes; the task is done when all exist.
        payload: extra picklable data the converter needs (e.g. annotations of one image).
    """

    split: str
    source: str
    outputs: Tuple[str, ...]
    payload: Any = None


@dataclass
class TaskResult:
    """What a converter reports about one task.

    Attributes:
        values: distinct label values written (over all outputs of the task).
        notes: remarks counted per file in the summary, e.g. "raw id 1 is not one of the
            59 classes".
        counts: quantities summed over files, e.g. {"samples": 10000} for a caption shard.
    """

    values: Tuple[int, ...] = ()
    notes: Tuple[str, ...] = ()
    counts: Dict[str, int] = field(default_factory=dict)


@dataclass
class SplitReport:
    written: int = 0
    skipped: int = 0
    verified: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    values: Counter = field(default_factory=Counter)  # value -> number of files containing it
    notes: Counter = field(default_factory=Counter)  # note -> number of files
    counts: Counter = field(default_factory=Counter)  # quantity -> sum over files


class PrepareReport:
    """Per-split counters of one run."""

    def __init__(self) -> None:
        self.splits: Dict[str, SplitReport] = {}

    def split(self, name: str) -> SplitReport:
        return self.splits.setdefault(name, SplitReport())

    def add_result(self, task: Task, result: TaskResult) -> None:
        report = self.split(task.split)
        report.values.update(result.values)
        report.notes.update(result.notes)
        report.counts.update(result.counts)


def _execute(job: Tuple[Callable[[Task], TaskResult], Task]):
    function, task = job
    try:
        result = function(task)
        if result is None:
            result = TaskResult()
        return task, result, None
    except Exception as e:  # recorded and reported; the run continues with other files
        message = str(e) if isinstance(e, CorruptInputError) else f"{type(e).__name__}: {e}"
        return task, None, message


def _pool_context():
    # fork keeps the already-imported script module (and its converter functions) in the
    # workers without re-importing it; spawn is the fallback where fork does not exist.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _map(
    function: Callable[[Task], TaskResult], tasks: List[Task], workers: int, desc: str
) -> Iterator[Tuple[Task, Optional[TaskResult], Optional[str]]]:
    jobs = [(function, task) for task in tasks]
    bar = tqdm(total=len(jobs), desc=desc, unit="file", dynamic_ncols=True, mininterval=0.5)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield _execute(job)
                bar.update()
            return
        chunksize = max(1, min(32, len(jobs) // (workers * 8)))
        with _pool_context().Pool(min(workers, len(jobs))) as pool:
            for outcome in pool.imap_unordered(_execute, jobs, chunksize=chunksize):
                yield outcome
                bar.update()
    finally:
        bar.close()


def run_tasks(
    tasks: Sequence[Task],
    convert: Callable[[Task], TaskResult],
    *,
    workers: int,
    desc: str,
    overwrite: bool = False,
    verify: Optional[Callable[[Task], TaskResult]] = None,
) -> PrepareReport:
    """Run ``convert`` on every task whose outputs are not all present yet.

    Args:
        tasks: the work; output folders are created here, once.
        convert: module-level function (picklable) ``Task -> TaskResult``; it writes the
            task's outputs (with the atomic ``save_*`` helpers) or raises.
        workers: processes; <= 1 runs in this process (easier to debug).
        desc: progress-bar label.
        overwrite: redo tasks whose outputs exist.
        verify: optional ``Task -> TaskResult`` that re-reads the outputs of skipped tasks
            so the summary's label values cover them too.
    """
    report = PrepareReport()
    folders = sorted({str(Path(out).parent) for task in tasks for out in task.outputs})
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    stale = remove_stale_temporaries(Path(f) for f in folders)
    if stale:
        logger.warning("removed %d temporary files left by an interrupted run", stale)

    todo, done = [], []
    for task in tasks:
        report.split(task.split)
        finished = all(os.path.exists(out) for out in task.outputs)
        (done if finished and not overwrite else todo).append(task)
    for task in done:
        report.split(task.split).skipped += 1
    if done:
        print(f"{desc}: {len(done)} of {len(tasks)} already done, skipped", file=sys.stderr)

    for task, result, error in _map(convert, todo, workers, desc):
        split = report.split(task.split)
        if error is not None:
            split.failures.append((task.source, error))
        else:
            split.written += 1
            report.add_result(task, result)

    if verify is not None and done:
        for task, result, error in _map(verify, done, workers, f"{desc} (verify)"):
            split = report.split(task.split)
            if error is not None:
                split.failures.append((task.outputs[0], f"existing output unreadable: {error}"))
            else:
                split.verified += 1
                report.add_result(task, result)
    return report


# ----------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class SplitOutput:
    """Where one split's outputs live, for the end-of-run count.

    Attributes:
        folder: the output folder.
        suffix: file-name ending that counts as one output (``.png``,
            ``_gtFine_labelTrainIds.png``).
        expected: size of the official split (``None``: unknown).
        allowed_values: the label values the registration accepts (classes + ignore);
            anything else seen is flagged.
        recursive: count files in sub-folders too (Cityscapes' city folders).
        expected_what: what ``expected`` counts, for the summary line.
    """

    folder: Path
    suffix: str
    expected: Optional[int] = None
    allowed_values: Optional[frozenset] = None
    recursive: bool = False
    expected_what: str = "official split"


def count_files(folder: Path, suffix: str, recursive: bool = False) -> int:
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    if recursive:
        return sum(
            1
            for _, _, files in os.walk(folder)
            for name in files
            if name.endswith(suffix) and not name.startswith(".")
        )
    return sum(
        1
        for entry in os.scandir(folder)
        if entry.name.endswith(suffix) and not entry.name.startswith(".") and entry.is_file()
    )


def format_values(values: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7, 255]`` -> ``"0-3, 7, 255"``."""
    values = sorted(set(int(v) for v in values))
    if not values:
        return "(none)"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def summarize(
    title: str,
    report: PrepareReport,
    outputs: Dict[str, SplitOutput],
    *,
    stream=None,
    max_failures_listed: int = 50,
) -> int:
    """Print the end-of-run summary; return the exit status (1 when any file failed)."""
    stream = stream if stream is not None else sys.stdout
    lines = [f"===== {title}: summary ====="]
    for split_name, out in outputs.items():
        split = report.splits.get(split_name, SplitReport())
        present = count_files(out.folder, out.suffix, out.recursive)
        expected = "" if out.expected is None else f" ({out.expected_what}: {out.expected})"
        flag = ""
        if out.expected is not None and present != out.expected:
            flag = f"  <-- differs from the {out.expected_what}"
        lines.append(f"[{split_name}] {present} files in {out.folder}{expected}{flag}")
        lines.append(
            f"  this run: {split.written} written, {split.skipped} already done (skipped), "
            f"{len(split.failures)} failed"
        )
        counted = split.written + split.verified
        if split.counts:
            lines.append(
                "  totals over the files converted this run: "
                + ", ".join(f"{k} {v}" for k, v in sorted(split.counts.items()))
            )
        if counted and split.values:
            lines.append(
                f"  label values in the {counted} files converted"
                f"{' or verified' if split.verified else ''} this run: "
                f"{format_values(split.values)}"
            )
            if out.allowed_values is not None:
                stray = sorted(v for v in split.values if v not in out.allowed_values)
                if stray:
                    lines.append(
                        f"  UNEXPECTED label values (outside the registered classes and ignore "
                        f"value): {format_values(stray)} in "
                        f"{sum(split.values[v] for v in stray)} file(s)"
                    )
        elif split.skipped and not counted:
            lines.append("  (no file converted this run; --verify re-reads existing outputs)")
        for note, count in sorted(split.notes.items()):
            lines.append(f"  note: {note} ({count} file{'s' if count != 1 else ''})")
    failures = [(s, src, msg) for s, r in report.splits.items() for src, msg in r.failures]
    if failures:
        lines.append(f"FAILED: {len(failures)} file(s) could not be converted:")
        for split_name, source, message in failures[:max_failures_listed]:
            lines.append(
                f"  [{split_name}] {message if source in message else f'{source}: {message}'}"
            )
        if len(failures) > max_failures_listed:
            lines.append(f"  ... and {len(failures) - max_failures_listed} more")
        lines.append("Fix or re-download those files and rerun: finished outputs are skipped.")
    else:
        lines.append("No failures.")
    print("\n".join(lines), file=stream)
    return 1 if failures else 0


# ----------------------------------------------------------------------------- scripts


def annotation_folder_tasks(
    dataset_dir: Path,
    splits: Sequence[str],
    output_dirname: str,
    *,
    what: str,
    images_what: str,
    hint: str,
    official_sizes: Dict[str, int],
    allowed_values: Optional[frozenset],
    skip_names_containing: Optional[str] = None,
) -> Tuple[List[Task], Dict[str, SplitOutput]]:
    """Tasks and summary outputs of a download with one label PNG per image, by split folder.

    The layout is ``<dataset_dir>/annotations/<split>/*.png`` (label maps) next to
    ``<dataset_dir>/images/<split>``; each map becomes one task writing
    ``<dataset_dir>/<output_dirname>/<split>/<same name>``. For each split, before any work:
    the annotation folder must exist (``require_dir`` with ``what.format(split=split)`` and
    ``hint``), a missing image folder is warned about (``images_what.format(split=split)``)
    and so is a number of maps other than ``official_sizes[split]``. Hidden files and names
    containing ``skip_names_containing`` are not label maps.
    """
    tasks, outputs = [], {}
    for split in splits:
        raw_dir = require_dir(dataset_dir / "annotations" / split, what.format(split=split), hint)
        warn_if_missing(dataset_dir / "images" / split, images_what.format(split=split))
        raw_maps = sorted(
            p
            for p in raw_dir.iterdir()
            if p.suffix == ".png"
            and not p.name.startswith(".")
            and (skip_names_containing is None or skip_names_containing not in p.name)
        )
        check_input_count(str(raw_dir), len(raw_maps), official_sizes[split])
        out_dir = dataset_dir / output_dirname / split
        tasks += [Task(split, str(p), (str(out_dir / p.name),)) for p in raw_maps]
        outputs[split] = SplitOutput(out_dir, ".png", official_sizes[split], allowed_values)
    return tasks, outputs


def run_and_summarize(
    title: str,
    tasks: Sequence[Task],
    convert: Callable[[Task], TaskResult],
    outputs: Dict[str, SplitOutput],
    args: argparse.Namespace,
    *,
    desc: str,
    verify: Optional[Callable[[Task], TaskResult]] = read_back_outputs,
) -> int:
    """The end of every script: ``run_tasks`` then ``summarize``; returns the exit status.

    ``args`` are the options of ``build_argument_parser``: ``--workers``, ``--overwrite``,
    and ``--verify``, which re-reads skipped outputs with ``verify`` (``None``: never).
    """
    report = run_tasks(
        tasks,
        convert,
        workers=args.workers,
        desc=desc,
        overwrite=args.overwrite,
        verify=verify if args.verify else None,
    )
    return summarize(title, report, outputs)


def run_main(main: Callable[[Optional[Sequence[str]]], int]) -> None:
    """``sys.exit(main())``, turning a ``PrepareError`` into a message without a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        sys.exit(main(None))
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
