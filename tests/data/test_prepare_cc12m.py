"""prepare_cc12m.py: noun-phrase index over img2dataset shards (files and webdataset layouts)."""

import json

import pytest


def _index(base):
    lines = {}
    for path in sorted((base / "sed_d2_index").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            lines[entry["key"]] = entry
    return lines


def test_cc12m_index_with_heuristic_nouns(raw, datasets_root, capsys):
    base = raw.write_cc12m_raw(datasets_root)
    assert raw.run_prepare("prepare_cc12m", datasets_root, "--nlp", "heuristic") == 0
    index = _index(base)
    assert sorted(index) == ["000000000", "000000001", "000010000"]
    for key, nouns in raw.CC12M_HEURISTIC_NOUNS.items():
        assert index[key]["nouns"] == nouns, key
        assert index[key]["caption"] == raw.CC12M_CAPTIONS[key]
    assert index["000000000"]["image"] == {"image": "00000/000000000.jpg"}
    tar_image = index["000010000"]["image"]
    assert tar_image["tar"] == "00001.tar" and tar_image["member"] == "000010000.jpg"
    # the recorded offset/size point at the JPEG bytes inside the archive
    data = (base / "00001.tar").read_bytes()[
        tar_image["offset"] : tar_image["offset"] + tar_image["size"]
    ]
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"

    settings = json.loads((base / "sed_d2_index" / "extractor.json").read_text())
    assert settings["extractor"] == "heuristic-v1"
    summary = capsys.readouterr().out
    assert "samples indexed 3" in summary and "samples skipped (no image or caption) 2" in summary
    assert "note: caption without image (1 file)" in summary
    assert "note: image without caption (1 file)" in summary

    # resumable: a second run skips both shards; another extractor refuses to mix.
    assert raw.run_prepare("prepare_cc12m", datasets_root, "--nlp", "heuristic") == 0
    assert "0 written, 2 already done (skipped)" in capsys.readouterr().out
    from sed_d2.data.prepare_utils import PrepareError

    with pytest.raises(PrepareError, match="built with other settings"):
        raw.run_prepare(
            "prepare_cc12m",
            datasets_root,
            "--nlp",
            "heuristic",
            "--exclude-phrases",
            str(_write_terms(datasets_root / "terms.txt", ["dog"])),
        )


def _write_terms(path, terms):
    path.write_text("\n".join(terms) + "\n")
    return path


def test_cc12m_broken_tar_is_reported_and_other_shards_indexed(raw, datasets_root, capsys):
    base = raw.write_cc12m_raw(datasets_root)
    (base / "00002.tar").write_bytes(b"not a tar archive at all" * 40)
    assert raw.run_prepare("prepare_cc12m", datasets_root, "--nlp", "heuristic") == 1
    assert "00002.tar: cannot read shard" in capsys.readouterr().out
    assert sorted(p.name for p in (base / "sed_d2_index").glob("*.jsonl")) == [
        "00000.jsonl",
        "00001.jsonl",
    ]


def test_heuristic_extractor_rules(raw):
    module = raw.load_prepare_script("prepare_cc12m")
    extract = module.NounPhraseExtractor(
        "heuristic", module.EXCLUDED_SUBSTRINGS, module.EXCLUDED_PHRASES
    )
    assert extract.extract_many(
        [
            "The old stone building with a laptop on the desk, top view",
            "Two girls are playing with their dog's red ball in the background",
            "Happy family standing next to a beautiful wedding cake",
        ]
    ) == [
        # "stone"/"laptop" survive (no substring match on the short generic "one"/"top");
        # "top view" is made of generic words only
        ["old stone building", "laptop", "desk"],
        # number words and "are playing" are boundaries; "background" is an excluded substring
        ["girls", "dog red ball"],
        # "family" and "wedding" are nouns despite their -ly / -ing endings
        ["happy family", "beautiful wedding cake"],
    ]


def test_phrase_filter_follows_paper_substring_rule(raw):
    module = raw.load_prepare_script("prepare_cc12m")
    phrase_filter = module.PhraseFilter(["reflection", "southwest"], ["view"])
    assert phrase_filter(
        ["water reflection", "southwest corner", "view", "sea view", "lake", "lake", "7"]
    ) == ["sea view", "lake"]


def test_spacy_chunk_rule_on_a_hand_parsed_doc(raw):
    """Noun chunks with a NOUN token, leading determiners dropped (no model download needed)."""
    spacy = pytest.importorskip("spacy", reason="spaCy not installed: its chunk rule is untestable")
    from spacy.tokens import Doc

    module = raw.load_prepare_script("prepare_cc12m")
    words = ["A", "black", "dog", "runs", "on", "the", "sandy", "beach", "near", "it", "."]
    pos = ["DET", "ADJ", "NOUN", "VERB", "ADP", "DET", "ADJ", "NOUN", "ADP", "PRON", "PUNCT"]
    heads = [2, 2, 3, 3, 3, 7, 7, 4, 3, 8, 3]
    deps = ["det", "amod", "nsubj", "ROOT", "prep", "det", "amod", "pobj", "prep", "pobj", "punct"]
    doc = Doc(spacy.blank("en").vocab, words=words, pos=pos, heads=heads, deps=deps)
    extractor = module.NounPhraseExtractor.__new__(module.NounPhraseExtractor)
    # "it" is a noun chunk without a NOUN token: dropped, as in the paper
    assert extractor._spacy_phrases(doc) == ["black dog", "sandy beach"]


def test_spacy_extractor_when_installed(raw):
    module = raw.load_prepare_script("prepare_cc12m")
    if not module.spacy_available():
        pytest.skip(
            "spaCy with en_core_web_sm not installed: the paper's extractor is not testable here"
        )
    extract = module.NounPhraseExtractor(
        "spacy", module.EXCLUDED_SUBSTRINGS, module.EXCLUDED_PHRASES
    )
    (nouns,) = extract.extract_many(["A black dog runs on the sandy beach."])
    assert "black dog" in nouns and "sandy beach" in nouns
