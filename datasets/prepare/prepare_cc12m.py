#!/usr/bin/env python3
"""CC12M (SynSeg's training set): index the image-caption pairs with their noun phrases.

Registers as ``cc12m_train`` (``sed_d2/data/datasets/cc12m.py``).

Input: $DETECTRON2_DATASETS/cc12m as written by img2dataset (its cc12m example, from
cc12m.tsv of github.com/google-research-datasets/conceptual-12m), either layout:
  00000/000000001.jpg + 000000001.txt (caption)       --output_format files
  00000.tar holding 000000001.jpg + 000000001.txt       --output_format webdataset
Output, one JSON-lines file per shard (written atomically, so a rerun resumes by shard):
  sed_d2_index/<shard>.jsonl   {"key", "caption", "image": {...}, "nouns": [...]} per sample
  sed_d2_index/extractor.json  which extractor and exclusion lists built the index

Noun phrases follow the SynSeg appendix:
1. Extraction. With spaCy and ``en_core_web_sm`` installed (``pip install spacy &&
   python -m spacy download en_core_web_sm``): the caption's noun chunks that contain at
   least one token tagged NOUN, lower-cased, without leading determiners, pronouns, numbers
   and punctuation ("a black dog" -> "black dog"). Without spaCy, a documented fallback
   (``heuristic-v1``): a noun phrase is a maximal run of words between function words
   (articles, pronouns, prepositions, conjunctions, auxiliaries, number words), punctuation,
   digits, adverbs in -ly and verb forms in -ing/-ed (minus a list of nouns with those
   endings), cut to its last three words. It has no part-of-speech tagger, so adjectives used alone
   and bare verbs slip through; install spaCy for the paper's procedure. The extractor's
   name is stored in extractor.json, and a rerun with a different one refuses to mix the two
   unless --overwrite.
2. Generic-phrase filter. The paper drops every phrase containing a term of a manual
   exclusion list as a *substring* ("reflection", "southwest", "background" are its
   examples); the list itself is not published. The default here keeps the paper's rule
   for long, unambiguous terms (EXCLUDED_SUBSTRINGS) and drops short generic words only
   when they are the whole phrase, or every word of it (EXCLUDED_PHRASES: "view", "top",
   "one"; "top view"), because as substrings they would remove "laptop" or "stone".
   --exclude-substrings / --exclude-phrases FILE replace the lists (one term per line).
CC12M writes ``<PERSON>`` where a caption named someone; it is read as "person".
"""

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402
from sed_d2.data.datasets.cc12m import (  # noqa: E402
    CC12M_DIRNAME,
    INDEX_DIRNAME,
    Shard,
    iter_shard_samples,
    list_shards,
)

SPLIT = "cc12m"
EXTRACTOR_FILE = "extractor.json"
SPACY_MODEL = "en_core_web_sm"
HEURISTIC_NAME = "heuristic-v1"

# fmt: off
EXCLUDED_SUBSTRINGS = (
    "background", "reflection", "southwest", "southeast", "northwest", "northeast",
    "stock photo", "stock image", "stock footage", "royalty free", "royalty-free",
    "illustration", "clipart", "clip art", "vector", "copy space", "copyspace", "watermark",
)
EXCLUDED_PHRASES = (
    "image", "images", "photo", "photos", "photograph", "photography", "picture", "pictures",
    "view", "views", "top", "side", "sides", "front", "back", "bottom", "left", "right",
    "middle", "center", "centre", "close", "closeup", "close-up", "detail", "details",
    "time", "times", "day", "days", "year", "years", "way", "ways", "lot", "lots", "kind",
    "type", "types", "part", "parts", "thing", "things", "something", "someone", "one",
    "ones", "others", "couple", "set", "collection", "concept", "idea", "ideas", "design",
    "style", "version", "example", "series", "number", "variety", "range", "selection",
    "group", "piece", "pieces", "use", "free", "high", "quality", "resolution", "size",
)
# fmt: on

_PERSON_TOKEN = re.compile(r"<\s*person\s*>", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z][a-z'\-]*|[0-9]+[a-z0-9]*|[^\sa-z0-9]")
_FUNCTION_WORDS = frozenset("""
    a an the this that these those some any each every all both either neither no another
    my your his her its our their mine yours hers ours theirs such
    i me you he him she it we us they them myself yourself himself herself itself ourselves
    themselves who whom whose which what whoever whatever there here
    of in on at by for with without from to into onto upon over under above below across
    along around through between among behind beside besides near off out up down about
    against during before after since until till within via per like than as inside outside
    and or but nor so yet if then because while although though whether
    is are was were be been being am has have had having do does did done will would shall
    should can could may might must get gets got make makes made take takes see sees look
    looks show shows use uses go goes come comes stand stands sit sits hold holds wear wears
    walk walks play plays find finds buy buys keep keeps put puts let lets give gives
    not very too also just only even still really quite rather more most less least much
    many few several now when where why how today tonight tomorrow yesterday next
    one two three four five six seven eight nine ten
    """.split())
_NOUNS_IN_ING = frozenset("""
    building painting ceiling clothing ring king thing wing string spring morning evening
    wedding swing sling sibling dumpling pudding icing frosting stuffing seasoning dressing
    bedding railing flooring lighting housing parking awning earring duckling seedling
    sapling herring offspring viking siding landing drawing
    """.split())
_NOUNS_IN_ED = frozenset("""
    bed red shed sled bread head thread seed weed reed speed steed tweed breed flowerbed
    seabed riverbed sunbed hotbed bobsled homestead forehead bedspread spread greed need
    """.split())
_NOUNS_IN_LY = frozenset("""
    family lily belly jelly butterfly dragonfly firefly holly rally assembly supply bully
    dolly ally italy july fly
    """.split())


def _is_boundary(word: str) -> bool:
    if not word[0].isalpha():
        return True
    if word in _FUNCTION_WORDS:
        return True
    # plurals ("buildings") do not end in -ing/-ed/-ly and stay content words
    if word.endswith("ing") and word not in _NOUNS_IN_ING:
        return True
    if word.endswith("ed") and len(word) > 4 and word not in _NOUNS_IN_ED:
        return True
    if word.endswith("ly") and len(word) > 4 and word not in _NOUNS_IN_LY:
        return True
    return False


def normalize_caption(caption: str) -> str:
    return _PERSON_TOKEN.sub("person", caption)


def heuristic_noun_phrases(caption: str, max_words: int = 3) -> List[str]:
    """``heuristic-v1``: runs of words between boundaries, cut to their last ``max_words``."""
    words = [w[:-2] if w.endswith("'s") else w.strip("'-") for w in _TOKEN.findall(caption.lower())]
    phrases, run = [], []
    for word in words + ["."]:
        if not word or _is_boundary(word):
            if run:
                phrases.append(" ".join(run[-max_words:]))
            run = []
        else:
            run.append(word)
    return phrases


class PhraseFilter:
    """The generic-phrase filter (see the module docstring)."""

    def __init__(self, substrings: Sequence[str], phrases: Sequence[str]):
        self.substrings = tuple(s.lower() for s in substrings)
        self.phrases = frozenset(p.lower() for p in phrases)

    def keep(self, phrase: str) -> bool:
        if len(phrase) < 2 or not any(c.isalpha() for c in phrase):
            return False
        if any(term in phrase for term in self.substrings):
            return False
        if phrase in self.phrases or all(w in self.phrases for w in phrase.split()):
            return False
        return True

    def __call__(self, phrases: Iterable[str]) -> List[str]:
        kept, seen = [], set()
        for phrase in phrases:
            phrase = " ".join(phrase.split())
            if phrase not in seen and self.keep(phrase):
                seen.add(phrase)
                kept.append(phrase)
        return kept


class NounPhraseExtractor:
    """Captions -> filtered noun phrases, with spaCy (``backend="spacy"``) or the fallback."""

    def __init__(self, backend: str, substrings: Sequence[str], phrases: Sequence[str]):
        self.backend = backend
        self.filter = PhraseFilter(substrings, phrases)
        self._nlp = None
        if backend == "spacy":
            import spacy

            self._nlp = spacy.load(SPACY_MODEL, disable=["ner", "lemmatizer"])
            self.name = f"spacy:{SPACY_MODEL}-{self._nlp.meta.get('version', '?')}"
        elif backend == "heuristic":
            self.name = HEURISTIC_NAME
        else:
            raise ValueError(f"unknown noun-phrase backend {backend!r}")

    def _spacy_phrases(self, doc) -> List[str]:
        phrases = []
        for chunk in doc.noun_chunks:
            if not any(token.pos_ == "NOUN" for token in chunk):
                continue
            tokens = list(chunk)
            while tokens and tokens[0].pos_ in ("DET", "PRON", "NUM", "PUNCT"):
                tokens = tokens[1:]
            if tokens:
                phrases.append(" ".join(t.text for t in tokens).lower())
        return phrases

    def extract_many(self, captions: Sequence[str]) -> List[List[str]]:
        texts = [normalize_caption(c) for c in captions]
        if self._nlp is not None:
            raw = [self._spacy_phrases(doc) for doc in self._nlp.pipe(texts, batch_size=256)]
        else:
            raw = [heuristic_noun_phrases(t) for t in texts]
        return [self.filter(phrases) for phrases in raw]


def spacy_available() -> bool:
    if importlib.util.find_spec("spacy") is None:
        return False
    try:
        import spacy

        spacy.load(SPACY_MODEL, disable=["ner", "lemmatizer"])
        return True
    except (OSError, ImportError, ValueError):
        return False


_EXTRACTORS: Dict[Tuple, NounPhraseExtractor] = {}


def _extractor(
    backend: str, substrings: Tuple[str, ...], phrases: Tuple[str, ...]
) -> NounPhraseExtractor:
    # One per worker process: loading the spaCy model takes a second.
    key = (backend, substrings, phrases)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = NounPhraseExtractor(backend, substrings, phrases)
    return _EXTRACTORS[key]


def convert(task: pu.Task) -> pu.TaskResult:
    shard_fields, dataset_dir, backend, substrings, phrases = task.payload
    shard = Shard(*shard_fields)
    try:
        samples = list(iter_shard_samples(shard, dataset_dir))
    except Exception as e:  # an unreadable tar or folder: this shard fails, others go on
        raise pu.CorruptInputError(
            f"{shard.path}: cannot read shard ({type(e).__name__}: {e})"
        ) from e
    usable = [s for s in samples if s.problem is None]
    nouns = _extractor(backend, substrings, phrases).extract_many([s.caption for s in usable])
    lines = [
        json.dumps(
            {"key": s.key, "caption": s.caption, "image": s.image, "nouns": n}, ensure_ascii=False
        )
        for s, n in zip(usable, nouns)
    ]
    with pu.atomic_output(Path(task.outputs[0])) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    counts = {
        "samples indexed": len(usable),
        "samples skipped (no image or caption)": len(samples) - len(usable),
        "samples without any noun phrase": sum(1 for n in nouns if not n),
        "noun phrases": sum(len(n) for n in nouns),
    }
    notes = tuple(sorted({s.problem.split(": ", 1)[-1] for s in samples if s.problem}))
    return pu.TaskResult(counts=counts, notes=notes)


def _read_terms(path: Path) -> Tuple[str, ...]:
    return tuple(pu.read_split_list(pu.require_file(path, "exclusion list", "one term per line")))


def main(argv=None) -> int:
    parser = pu.build_argument_parser(__doc__)
    parser.add_argument(
        "--nlp",
        choices=("auto", "spacy", "heuristic"),
        default="auto",
        help=f"noun-phrase extractor (auto: spaCy {SPACY_MODEL} when installed, else the "
        f"{HEURISTIC_NAME} fallback)",
    )
    parser.add_argument(
        "--exclude-substrings",
        type=Path,
        default=None,
        help="file replacing EXCLUDED_SUBSTRINGS (one term per line)",
    )
    parser.add_argument(
        "--exclude-phrases",
        type=Path,
        default=None,
        help="file replacing EXCLUDED_PHRASES (one term per line)",
    )
    args = parser.parse_args(argv)
    dataset_dir = pu.resolve_root(args.root) / CC12M_DIRNAME
    hint = (
        "Download CC12M with img2dataset into that folder (--output_format files or "
        "webdataset; see datasets/README.md)."
    )
    pu.require_dir(dataset_dir, "CC12M download", hint)
    try:
        shards = list_shards(str(dataset_dir))
    except ValueError as e:
        raise pu.InputMissingError(str(e)) from e
    if not shards:
        raise pu.InputMissingError(
            f"CC12M shards not found: {dataset_dir} holds no 00000/ folder or 00000.tar.\n{hint}"
        )

    backend = args.nlp
    if backend == "spacy" and not spacy_available():
        raise pu.PrepareError(
            f"--nlp spacy: spaCy or its {SPACY_MODEL} model is not installed: pip install spacy "
            f"&& python -m spacy download {SPACY_MODEL}"
        )
    if backend == "auto":
        backend = "spacy" if spacy_available() else "heuristic"
        if backend == "heuristic":
            print(
                f"spaCy with {SPACY_MODEL} is not installed: using the {HEURISTIC_NAME} "
                "fallback (see --help). For the paper's extraction: pip install spacy && "
                f"python -m spacy download {SPACY_MODEL}",
                file=sys.stderr,
            )
    substrings = (
        _read_terms(args.exclude_substrings) if args.exclude_substrings else EXCLUDED_SUBSTRINGS
    )
    phrases = _read_terms(args.exclude_phrases) if args.exclude_phrases else EXCLUDED_PHRASES
    extractor = NounPhraseExtractor(backend, substrings, phrases)

    index_dir = dataset_dir / INDEX_DIRNAME
    index_dir.mkdir(exist_ok=True)
    settings = {
        "extractor": extractor.name,
        "exclude_substrings": list(substrings),
        "exclude_phrases": list(phrases),
    }
    settings_path = index_dir / EXTRACTOR_FILE
    if settings_path.is_file() and not args.overwrite:
        with open(settings_path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous != settings:
            raise pu.PrepareError(
                f"{index_dir} was built with other settings ({settings_path}: extractor "
                f"{previous.get('extractor')!r}, now {extractor.name!r}, or other exclusion "
                "lists); pass --overwrite to rebuild the whole index rather than mix the two"
            )
    with pu.atomic_output(settings_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=1)

    tasks = [
        pu.Task(
            SPLIT,
            shard.path,
            (str(index_dir / f"{shard.name}.jsonl"),),
            ((shard.name, shard.path, shard.kind), str(dataset_dir), backend, substrings, phrases),
        )
        for shard in shards
    ]
    outputs = {SPLIT: pu.SplitOutput(index_dir, ".jsonl", len(shards), expected_what="shards")}
    return pu.run_and_summarize(
        "prepare_cc12m",
        tasks,
        convert,
        outputs,
        args,
        desc=f"CC12M ({extractor.name})",
        verify=None,
    )


if __name__ == "__main__":
    pu.run_main(main)
