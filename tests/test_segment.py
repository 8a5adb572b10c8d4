"""Hashtag segmentation (pipeline/segment/) and the cmkp-segment command."""
import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pip as pip_module
import pytest
from click.testing import CliRunner

from pipeline.segment import (FEATURES, MAPPING_FILE_NAME, SegmenterConfig, WordStats, build_segmenter,
                              VOTING_FEATURES, candidate_features, default_mapping_file, learn_mappings, main,
                              mixed_counts, read_cmkp_src, read_mapping_file, reranker_examples, web_counts,
                              with_source_votes)
from pipeline.segment.features import feature_matrix

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter()


@pytest.fixture
def cmkp_src(tmp_path):
    """A tiny CMKP release file: text<sep>kp1;kp2<sep>url."""
    path = tmp_path / "train_src.txt"
    path.write_text(
        "so proud of the team tonight <url><sep>zorblax fans;go team<sep>https://example.org/1.jpg\n"
        "zorblax fans meet up at <number> pm<sep>zorblax fans<sep>https://example.org/2.jpg\n"
        "lovely reptiles today<sep>her pet ology;herpetology;her pet ology<sep>https://example.org/3.jpg\n",
        encoding="utf-8")
    return path


def test_mapping_wins_over_everything(tmp_path, cmkp_src):
    mapping = tmp_path / "mine.tsv"
    # a deliberately odd entry, so only the mapping can produce it; it overrides the learned `her pet ology`
    mapping.write_text("# comment line\n#HerpeTology\therpe tology\n#ZorblaxFans\tzor blaxfans\n", encoding="utf-8")
    seg = build_segmenter(learn_from=[cmkp_src], mappings=[default_mapping_file(), mapping])
    assert seg.segment("#herpetology") == "herpe tology"
    assert seg.segment("ZorblaxFans") == "zor blaxfans"  # CamelCase would say "zorblax fans"
    assert seg.segment("#ThrowbackThursday") == "throwback thursday"  # from the project's own list


def test_default_mapping_file_is_valid_and_small():
    assert default_mapping_file() == REPO / "data" / MAPPING_FILE_NAME  # a checkout reads its own data/
    entries = read_mapping_file(default_mapping_file())
    assert 10 <= len(entries) <= 500
    for key, words in entries.items():
        assert words == words.lower() and "  " not in words and words.replace(" ", "") == key


def test_mapping_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("savehakeem\tsave hakeem\nsavehakeem\tsave the hakeem\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: segmentation 'save the hakeem' does not spell"):
        read_mapping_file(bad)
    bad.write_text("savehakeem save hakeem\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected hashtag<TAB>segmentation"):
        read_mapping_file(bad)


def test_learned_mappings_take_the_majority_segmentation():
    learned = learn_mappings(["spider man", "spiderman", "spider man", "Save  Hakeem", ""])
    assert learned == {"spiderman": "spider man", "savehakeem": "save hakeem"}


def test_learn_from_cmkp_file(cmkp_src):
    seg = build_segmenter(learn_from=[cmkp_src], mappings=())
    assert seg.segment("herpetology") == "her pet ology"  # 2 of 3 instances say so
    assert seg.segment("#ZORBLAXFANS") == "zorblax fans"
    assert seg.segment("goteam") == "go team"


def test_camel_case_is_used_where_present(segmenter):
    assert segmenter.segment("#TheLegoMovie") == "the lego movie"
    assert segmenter.segment("#BTSArmy") == "bts army"  # an acronym before a capitalised word
    assert segmenter.segment("#SaveHakeem") == "save hakeem"
    # a lowercase run inside CamelCase is still searched: Savethe -> save the
    assert segmenter.segment("#SavetheDate") == "save the date"


def test_digits(segmenter):
    assert segmenter.segment("#ToyStory4") == "toy story 4"
    assert segmenter.segment("worldbookday2019") == "world book day 2019"
    assert segmenter.segment("10yearchallenge") == "10 year challenge"  # a digit run is never cut
    assert segmenter.segment("#Top10") == "top 10"


def test_hash_case_and_spacing_are_normalised(segmenter):
    outputs = {segmenter.segment(h) for h in ("#climatechange", "climatechange", "#CLIMATECHANGE",
                                              "  #ClimateChange \n", "#climate_change")}
    assert outputs == {"climate change"}
    assert segmenter.segment("") == ""
    assert segmenter.segment("#") == ""


# hashtags with an unambiguous segmentation, chosen by hand (lowercase: no CamelCase help)
KNOWN = {
    "savetheplanet": "save the planet", "climatechange": "climate change", "worldcupfinal": "world cup final",
    "happybirthday": "happy birthday", "lovewins": "love wins", "mentalhealthawareness": "mental health awareness",
    "earthday": "earth day", "gameofthrones": "game of thrones", "nationaldogday": "national dog day",
    "blackfriday": "black friday", "superbowl": "super bowl", "marchmadness": "march madness",
    "photooftheday": "photo of the day", "bookstagram": "bookstagram", "avengersendgame": "avengers endgame",
    "veteransday": "veterans day", "fathersday": "fathers day", "worldenvironmentday": "world environment day",
    "electionday": "election day", "nationalpetday": "national pet day", "internationalwomensday":
    "international womens day", "royalwedding": "royal wedding", "stanleycup": "stanley cup",
    "backtoschool": "back to school", "wimbledon": "wimbledon", "breakingnews": "breaking news",
    "foodporn": "food porn", "nationalsiblingsday": "national siblings day", "tbt": "tbt", "nba": "nba",
}


def test_exact_accuracy_on_known_hashtags(segmenter):
    got = {hashtag: segmenter.segment(hashtag) for hashtag in KNOWN}
    assert got == KNOWN


def test_statistics_alone_on_known_hashtags():
    # without the manual list three come out glued (the web counts and wordfreq's Twitter words know them as one
    # token): that is what the list is for; everything else is right
    seg = build_segmenter(mappings=())
    wrong = {hashtag: seg.segment(hashtag) for hashtag in KNOWN if seg.segment(hashtag) != KNOWN[hashtag]}
    assert wrong == {"photooftheday": "photooftheday", "superbowl": "superbowl", "gameofthrones": "gameofthrones"}


def test_search_matches_ekphrasis_recursion(segmenter):
    """The dynamic programme finds exactly what ekphrasis's own `Segmenter.find_segment` finds on the same counts
    (inputs without two adjacent digits, where our no-cut rule does not apply)."""
    from ekphrasis.classes.segmenter import Segmenter

    viterbi = segmenter.viterbi
    for text in [*KNOWN, "savehakeem", "toystory4", "ff14", "choosespain", "speedofart", "bwfc", "x", "a1b2c3"]:
        reference_logp, reference_words = Segmenter.find_segment(viterbi, text)
        logp, words = viterbi.find_segment(text)
        assert words == reference_words and logp == pytest.approx(reference_logp, abs=1e-9), text


def test_other_scripts_are_kept_whole(segmenter):
    assert segmenter.segment("#東京") == "東京"
    assert segmenter.segment("#CaféDeFlore") == "cafédeflore"  # no CamelCase rule outside ASCII, nothing dropped
    assert segmenter.segment("#Paris_Café") == "paris café"


def test_corpus_counts_take_their_configured_share():
    config = SegmenterConfig(wordfreq_weight=0, lexicon_weight=0, single_letter_factor=1, corpus_weight=0.5)
    unigrams, bigrams = mixed_counts(["alpha beta <url>", "Alpha"], [], config)
    web_unigrams, web_bigrams = web_counts()
    share = 0.5 * sum(web_unigrams.values()) / 3  # 3 corpus words in all, placeholders dropped
    assert unigrams["alpha"] - web_unigrams["alpha"] == round(2 * share)
    assert unigrams["beta"] - web_unigrams["beta"] == round(share)
    assert bigrams["alpha_beta"] - web_bigrams.get("alpha_beta", 0) == round(share)
    assert "url" not in unigrams or unigrams["url"] == web_unigrams["url"]


def test_corpus_texts_change_the_statistics():
    without = build_segmenter(mappings=()).segment("zorblaxfans")
    with_corpus = build_segmenter(corpus_texts=["the zorblax are here", "zorblax zorblax fans"] * 5,
                                  mappings=()).segment("zorblaxfans")
    assert without != "zorblax fans"
    assert with_corpus == "zorblax fans"


def test_hashtags_mentions_urls_of_raw_posts_are_not_counted():
    raw_posts = ["free him #savehakeem @savehakeem https://savehakeem.example/savehakeem"] * 20
    assert build_segmenter(corpus_texts=raw_posts, mappings=()).segment("savehakeem") == "save hakeem"
    # the same word counted as a word would glue it
    assert build_segmenter(corpus_texts=["savehakeem"] * 20, mappings=()).segment("savehakeem") == "savehakeem"


def test_cli_round_trip_with_each_option(tmp_path, cmkp_src):
    corpus = tmp_path / "posts.txt"
    corpus.write_text("the quibbleton parade was great\nquibbleton parade again tomorrow\n" * 5, encoding="utf-8")
    mapping = tmp_path / "extra.tsv"
    mapping.write_text("goteam\tgo te am\n", encoding="utf-8")
    runner = CliRunner()
    stdin = "#ToyStory4\n\nquibbletonparade\n#HERPETOLOGY\ngoteam\n"
    plain = runner.invoke(main, [], input=stdin)
    assert plain.exit_code == 0, plain.output
    assert plain.output.split("\n")[:2] == ["toy story 4", ""]  # one line out per line in, blank stays blank
    full = runner.invoke(main, ["--stats-from", str(corpus), "--learn-from", str(cmkp_src),
                                "--mapping", str(mapping)], input=stdin)
    assert full.exit_code == 0, full.output
    assert full.output == "toy story 4\n\nquibbleton parade\nher pet ology\ngo te am\n"
    assert plain.output.split("\n")[2:5] != ["quibbleton parade", "her pet ology", "go te am"]
    missing = runner.invoke(main, ["--stats-from", str(tmp_path / "absent.txt")], input="x\n")
    assert missing.exit_code != 0 and "absent.txt" in missing.output


def test_stats_are_never_downloaded(tmp_path):
    """With an empty home, no network and a forbidden urlretrieve, building and segmenting works and leaves no
    `~/.ekphrasis` behind."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent("""
        import socket, urllib.request
        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        urllib.request.urlretrieve = refuse
        from pipeline.segment import build_segmenter
        print(build_segmenter().segment("#WorldBookDay2019"))
    """)
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "world book day 2019\n"
    assert list(home.iterdir()) == []


def test_installed_wheel_finds_its_mapping_list(tmp_path):
    """A wheel built from the sources carries the mapping list and luigi.cfg as data under share/cmkp/, and the
    package installed from it into a fresh environment (away from any checkout) finds them there."""
    source = tmp_path / "src"
    (source / "data").mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "luigi.cfg", f"data/{MAPPING_FILE_NAME}"):
        shutil.copy(REPO / name, source / name)
    # every top-level package setup.cfg ships
    found = configparser.ConfigParser()
    found.read(REPO / "setup.cfg")
    packages = [name for name in found["options.packages.find"]["include"].split() if "." not in name]
    assert {"durable", "pipeline", "model", "workflows"} <= set(packages)
    for package in packages:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source],
                   check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("cmkp-*.whl")
    for shipped in (f".data/data/share/cmkp/{MAPPING_FILE_NAME}", ".data/data/share/cmkp/luigi.cfg"):
        assert any(name.endswith(shipped) for name in zipfile.ZipFile(wheel).namelist()), shipped

    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    env_python = env / "bin" / "python"
    # pip runs inside the fresh environment (this one's pip package lent on PYTHONPATH), so it sees, installs and
    # could uninstall nothing but that environment's packages; this environment's own install is never touched
    lent = tmp_path / "lent-pip"
    lent.mkdir()
    (lent / "pip").symlink_to(Path(pip_module.__file__).parent)
    subprocess.run([env_python, *pip[1:], "install", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(lent)})
    env_site = subprocess.run([env_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies (click) from this environment's site-packages, after the installed package
    (Path(env_site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    shutil.rmtree(source)  # no checkout left to fall back on
    script = ("import luigi.configuration, pipeline.segment as s; print(s.__file__); print(s.default_mapping_file());"
              " print(luigi.configuration.get_config().get('retcode', 'task_failed'))")
    # without PYTHONPATH: a checkout lent that way would be imported instead of the installed package
    isolated = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run([env_python, "-c", script], cwd=tmp_path, env=isolated, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    module_file, mapping_file, task_failed_code = result.stdout.split("\n")[:3]
    assert Path(module_file).is_relative_to(env_site)
    assert Path(mapping_file) == env / "share" / "cmkp" / MAPPING_FILE_NAME
    assert Path(mapping_file).read_bytes() == (REPO / "data" / MAPPING_FILE_NAME).read_bytes()
    assert task_failed_code == "30"  # the shipped luigi.cfg's exit codes, read away from any checkout


def test_candidates_are_the_best_segmentations_best_first(segmenter):
    viterbi = segmenter.viterbi
    for text in [*KNOWN, "savehakeem", "toystory4", "ff14", "a1b2c3", "x"]:
        candidates = viterbi.candidates(text, 10)
        logp, words = viterbi.find_segment(text)
        assert candidates[0][1] == words and candidates[0][0] == pytest.approx(logp, abs=1e-9), text
        scores = [score for score, _ in candidates]
        assert scores == sorted(scores, reverse=True) and 1 <= len(candidates) <= 10
        splits = [tuple(words) for _, words in candidates]
        assert len(set(splits)) == len(splits)
        assert all("".join(words) == text for words in splits)
    assert len(viterbi.candidates("worldbookday", 10)) == 10
    # no candidate cuts a run of digits
    for text in ("ff14", "route66north", "2019worldcup"):
        for _, words in viterbi.candidates(text, 10):
            assert not any(first[-1].isdigit() and second[0].isdigit() for first, second in zip(words, words[1:]))


def test_a_digit_run_longer_than_a_word_is_kept_whole(segmenter):
    digits = "1234567890" * 3  # longer than max_split_length (20)
    assert segmenter.segment(digits) == digits
    assert segmenter.segment(f"#Top{digits}") == f"top {digits}"
    assert segmenter.viterbi.candidates(digits, 5) == [(pytest.approx(segmenter.viterbi.find_segment(digits)[0]),
                                                        [digits])]


def test_candidate_features(segmenter):
    stats = WordStats(["my cat s are here", "cat s"], ["cat s", "new york", "newyork"],
                      learned={"bookday": "book day", "catlover": "catlover"})
    features = candidate_features(["cat", "lover", "s", "i", "book", "day", "2", "a"], -30.0, 0,
                                  segmenter.viterbi.Pw, stats)
    assert tuple(features) == FEATURES  # by name, in the feature matrix's column order
    assert features["search log10 P"] == -30.0 and features["search's best"] == 1
    assert features["words"] == 8
    assert features["lone letters"] == 1  # `s`; `a`, `i` are words and counted apart, `2` is a number
    assert features["lone a or i"] == 2
    assert features["letter-digit cuts"] == 2  # day|2, 2|a
    assert features["lexicon words"] == 2 and features["lexicon pairs"] == 0  # cat, s; cat_lover never seen
    assert features["corpus pairs"] == 0
    assert features["learned keys split"] == 0  # no word of this candidate is a key the training keyphrases split
    assert features["learned pairs glued"] == 1  # cat + lover: the training keyphrases glue `catlover`
    assert features["vowel-less words"] == 0  # `s` is a lone letter, `2` a number
    acronyms = candidate_features(["a", "fcb", "my", "nfl", "7"], -20.0, 1, segmenter.viterbi.Pw, stats)
    assert acronyms["vowel-less words"] == 2  # `fcb`, `nfl`; `y` is a vowel (`my`), `a` one letter, `7` a number
    split = candidate_features(["bookday"], -9.0, 3, segmenter.viterbi.Pw, stats)
    assert split["learned keys split"] == 1 and split["search's best"] == 0 and split["longest word share"] == 1
    # an unknown word costs more the longer it is, in every source
    short, long = (candidate_features([word], -9.0, 1, segmenter.viterbi.Pw, stats)
                   for word in ("qzx", "qzxqzx"))
    for source in ("web log10 P", "wordfreq log10 P", "corpus log10 P", "lexicon log10 P"):
        assert long[source] == pytest.approx(short[source] - 3), source
    # the reranker's matrix puts each feature in its own column and refuses names it does not know
    assert feature_matrix([features, split])[1].tolist() == [float(split[name]) for name in FEATURES]
    with pytest.raises(ValueError, match="not the reranker's"):
        feature_matrix([{**split, "extra": 1.0}])
    with pytest.raises(ValueError, match="not the reranker's"):
        feature_matrix([{name: value for name, value in split.items() if name != "words"}])


def test_release_file_errors_name_the_line(tmp_path):
    path = tmp_path / "train_src.txt"
    path.write_text("a post <url><sep> Go  Team ;;zorblax<sep>https://example.org/1.jpg\n\n"
                    "a post without its url<sep>go team\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train_src.txt:3: expected 3 fields separated by <sep>, got 2"):
        read_cmkp_src(path)
    path.write_text("a post <url><sep> Go  Team ;;zorblax<sep>https://example.org/1.jpg\n", encoding="utf-8")
    assert read_cmkp_src(path) == [("a post <url>", ["Go Team", "zorblax"])]
    path.write_bytes(b"caf\xe9<sep>cafe<sep>https://example.org/1.jpg\n")
    with pytest.raises(ValueError, match=r"train_src.txt:1: invalid_utf8"):
        read_cmkp_src(path)


def test_source_votes_mark_each_sources_favourite():
    import numpy as np

    features = np.zeros((3, len(FEATURES)))
    web, lexicon_pairs = FEATURES.index("web log10 P"), FEATURES.index("lexicon pairs")
    features[:, web] = [-12.0, -9.5, -11.0]
    features[:, lexicon_pairs] = [1, 0, 1]
    voted = with_source_votes(features)
    assert voted.shape == (3, len(FEATURES) + len(VOTING_FEATURES))
    assert (voted[:, :len(FEATURES)] == features).all()
    votes = dict(zip(VOTING_FEATURES, voted[:, len(FEATURES):].T.tolist()))
    assert votes["web log10 P"] == [0, 1, 0]
    assert votes["lexicon pairs"] == [1, 0, 1]  # a tie: both vote
    assert votes["corpus log10 P"] == [1, 1, 1]  # all equal: no candidate stands out


# a labelling convention the statistics do not follow: plurals with their `s` split off (the search keeps lone
# letters rare on purpose, so it says `cats`)
NOUNS = ("cat dog book tree car house bird flower star game song movie friend girl boy dream heart road ship river "
         "lake cloud rock hill farm horse apple cake shoe coat bike train plane phone card gift toy ball lamp door "
         "chair table bag hat cup plate spoon fork knife glass bottle candle clock photo poem story letter map "
         "key coin stone wave").split()


@pytest.fixture
def plural_convention(tmp_path):
    path = tmp_path / "plurals_src.txt"
    path.write_text("".join(f"we love our {noun} so much<sep>{noun} s<sep>https://example.org/{i}.jpg\n"
                            for i, noun in enumerate(NOUNS)), encoding="utf-8")
    return path


def test_reranker_learns_the_labelled_convention(plural_convention):
    config = SegmenterConfig(rerank_min_examples=20)
    unseen = ["elephants", "windows", "gardens", "mountains"]
    search = build_segmenter(stats_from=[plural_convention], learn_from=[plural_convention], mappings=(),
                             config=config, rerank=False)
    assert [search.segment(hashtag) for hashtag in unseen] == unseen
    reranked = build_segmenter(learn_from=[plural_convention], mappings=(), config=config)
    assert reranked.reranker is not None
    assert [reranked.segment(hashtag) for hashtag in unseen] == [hashtag[:-1] + " s" for hashtag in unseen]
    assert reranked.segment("cats") == "cat s"  # a learned mapping
    assert [reranked.segment(hashtag[:-1]) for hashtag in unseen] == [hashtag[:-1] for hashtag in unseen]


def test_reranker_examples_never_see_their_own_label(plural_convention):
    posts = [(f"post {i}", [f"{noun} s"]) for i, noun in enumerate(NOUNS)]
    posts += [("a walk in the park", ["dinosaur park"]), ("again", ["cat s"])]
    config = SegmenterConfig()
    examples, skipped = reranker_examples([], [], posts, ["dog"], config)
    keys = [key for key, _, _ in examples]
    assert len(keys) == len(set(keys))
    # `cats` is labelled in both folds (posts 0 and 61): the other fold's learned mapping answers it, no example
    assert "cats" not in keys and "dogs" in keys
    # every distinct key of each fold is an example or skipped with a reason
    assert len(examples) + sum(skipped.values()) == len(NOUNS) + 1 + 1
    assert skipped["answered by a mapping"] == 2  # cats, in each fold
    _, features, index = next(example for example in examples if example[0] == "dinosaurpark")
    label = features[index]
    # its own keyphrase is not in the lexicon it is scored with: neither word nor the pair was counted
    assert label["lexicon words"] == 0 and label["lexicon pairs"] == 0
    _, features, index = next(example for example in examples if example[0] == "dogs")
    assert features[index]["lexicon words"] == 1  # `s`, from the other fold's plurals


def test_reranker_partition_seed_shuffles_the_parts():
    import random

    posts = [(f"post {i}", [f"{noun} s"]) for i, noun in enumerate(NOUNS)]
    posts += [("a walk in the park", ["dinosaur park"]), ("again", ["cat s"])]
    parity, _ = reranker_examples([], [], posts, [], SegmenterConfig())
    seeded, skipped = reranker_examples([], [], posts, [], SegmenterConfig(rerank_partition_seed=3))
    assert reranker_examples([], [], posts, [], SegmenterConfig(rerank_partition_seed=3))[0] == seeded
    assert seeded != parity
    order = list(range(len(posts)))
    random.Random(3).shuffle(order)
    parts = [{key for position, index in enumerate(order) if position % 2 == part
              for key in (k.replace(" ", "") for k in posts[index][1])} for part in (0, 1)]
    assert len(seeded) + sum(skipped.values()) == len(parts[0]) + len(parts[1])
    # `cats` (posts 0 and 61) is answered by the other part's mapping exactly when the shuffle parts them
    assert ("cats" in [key for key, _, _ in seeded]) == ("cats" not in parts[0] & parts[1])


def test_rerank_needs_enough_examples(cmkp_src):
    with pytest.raises(ValueError, match=r"gives? the reranker \d+ examples, fewer than 100"):
        build_segmenter(learn_from=[cmkp_src], mappings=(), rerank=True)
    assert build_segmenter(learn_from=[cmkp_src], mappings=()).reranker is None  # by default: the search alone
    result = CliRunner().invoke(main, ["--learn-from", str(cmkp_src), "--rerank"], input="goteam\n")
    assert result.exit_code != 0 and "fewer than 100" in str(result.exception)
    result = CliRunner().invoke(main, ["--learn-from", str(cmkp_src), "--no-rerank"], input="goteam\n")
    assert result.output == "go team\n"
