"""Hashtag segmentation (pipeline/segment.py) and the cmkp-segment command."""
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

from pipeline.segment import (MAPPING_FILE_NAME, SegmenterConfig, build_segmenter, default_mapping_file, learn_mappings,
                              main, mixed_counts, read_mapping_file, web_counts)

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
    """A wheel built from the sources carries the mapping list as data under share/cmkp/, and the package installed
    from it into a fresh environment (away from any checkout) finds it there."""
    source = tmp_path / "src"
    (source / "data").mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md", f"data/{MAPPING_FILE_NAME}"):
        shutil.copy(REPO / name, source / name)
    for package in ("pipeline", "model", "workflows"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source],
                   check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("cmkp-*.whl")
    shipped = f".data/data/share/cmkp/{MAPPING_FILE_NAME}"
    assert any(name.endswith(shipped) for name in zipfile.ZipFile(wheel).namelist())

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
    script = "import pipeline.segment as s; print(s.__file__); print(s.default_mapping_file())"
    result = subprocess.run([env_python, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    module_file, mapping_file = result.stdout.split("\n")[:2]
    assert Path(module_file).is_relative_to(env_site)
    assert Path(mapping_file) == env / "share" / "cmkp" / MAPPING_FILE_NAME
    assert Path(mapping_file).read_bytes() == (REPO / "data" / MAPPING_FILE_NAME).read_bytes()
