"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import luigi
import pytest

# the authors' real validation split, where this machine has it (a link next to the checkout; never committed)
REAL_RELEASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cmkp"


@pytest.fixture
def set_luigi_config():
    """`set_luigi_config({section: {option: value}})` sets luigi config options for one test; afterwards each
    option is restored to what it was (removed again where it was absent), so no test leaks its settings."""
    config = luigi.configuration.get_config()
    saved: dict[tuple[str, str], str | None] = {}

    def override(values: dict[str, dict[str, object]]) -> None:
        for section, options in values.items():
            if not config.has_section(section):
                config.add_section(section)
            for option, value in options.items():
                saved.setdefault((section, option), config.get(section, option, None))
                config.set(section, option, str(value))

    yield override
    for (section, option), value in saved.items():
        if value is None:
            config.remove_option(section, option)
        else:
            config.set(section, option, value)


@pytest.fixture
def real_release() -> Path:
    """The directory of the real CMKP release files (`valid_src.txt`, ...); the test is skipped where it is absent."""
    if not (REAL_RELEASE / "valid_src.txt").exists():
        pytest.skip(f"real CMKP data not found at {REAL_RELEASE.resolve()} (../shared/data/cmkp)")
    return REAL_RELEASE


# words of the test posts (tests/test_text_embedding.py, tests/tag_fixture.py): known to the tiny encoder
TINY_ENCODER_WORDS = ("so excited for the game tonight new album out now url happy birthday user number years look "
                      "at this sunset rain again in city go team limited today and with friends morning cup brew "
                      "cafe latte coffee time kitty purr nap whiskers paws cat life stars galaxy night telescope "
                      "cosmos deep space").split()


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory) -> Path:
    """A sentence encoder in Hugging Face layout: a 2-layer, 32-wide BERT with seeded random weights, its WordPiece
    vocabulary, mean pooling and 64 positions."""
    import json

    import torch
    import transformers

    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<", ">", "!", "."]
                               + list(dict.fromkeys(TINY_ENCODER_WORDS))) + "\n")
    tokenizer = transformers.BertTokenizer(str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return directory
