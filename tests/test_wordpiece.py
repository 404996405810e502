"""fp8demo.wordpiece returns keras_hub's WordPiece vocabulary, token for token."""

import pytest

from fp8demo import data, wordpiece
from fp8demo.config import RESERVED_TOKENS
from fp8demo.env import tensorflow

RESERVED = list(RESERVED_TOKENS)
# Texts the word splitting must treat exactly as keras_hub does.
AWKWARD = [
    "",
    "   ",
    "a film <br /><br />with html",
    "émotions, 映画 and emoji 🎬🍿",
    "UPPER case kept (lowercase=False)",
    "hash#tags ##joined## and [UNK] [PAD]",
    "tab\tnew\nline\u00a0nbsp\u200bzero-width",
    "don't stop-believing... 10/10!!!",
    "x" * 70 + " supercalifragilisticexpialidocious " * 3,
]


@pytest.fixture(scope="module")
def reviews(imdb_folder, tmp_path_factory):
    """The first 200 training reviews of the real split, as the example sees them."""
    home = tmp_path_factory.mktemp("wordpiece-home")
    return data.load(str(imdb_folder), subset=200, home=home, progress=lambda *_: None).train.texts


def keras_hub_vocabulary(texts, vocabulary_size):
    """The example's call, on a dataset of the texts."""
    import keras_hub

    dataset = tensorflow().data.Dataset.from_tensor_slices(texts).batch(1000)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        dataset, vocabulary_size, reserved_tokens=RESERVED
    )


@pytest.mark.parametrize("n_reviews", [60, 200])
@pytest.mark.parametrize("vocabulary_size", [300, 1000, 3000])
def test_vocabulary_is_keras_hubs(reviews, n_reviews, vocabulary_size):
    texts = reviews[:n_reviews]
    ours = wordpiece.compute_word_piece_vocabulary(texts, vocabulary_size, RESERVED)
    assert ours == keras_hub_vocabulary(texts, vocabulary_size)
    assert ours[:2] == RESERVED and len(ours) <= vocabulary_size


def test_awkward_texts_give_keras_hubs_words_and_vocabulary(reviews):
    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize

    texts = AWKWARD + reviews[:20]
    tf = tensorflow()
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(7)
    # compute_word_piece_vocabulary's own counting: its split, then tensorflow_text's count.
    theirs = wordpiece.tf_text_learner().count_words(
        dataset.map(lambda t: pretokenize(t, False, False, True, True))
    )
    assert wordpiece.count_words(texts, batch_size=4) == dict(theirs)
    for size in (150, 400):
        assert wordpiece.compute_word_piece_vocabulary(
            texts, size, RESERVED
        ) == keras_hub_vocabulary(texts, size)


# Word counts the array passes must handle as tensorflow_text's loops do: an empty word, "#"
# inside words, words longer than max_token_length, reserved tokens as words, rare chars.
ODD_COUNTS = {
    "": 50,
    "bat": 30,
    "sat": 20,
    "pat": 12,
    "mat": 11,
    "at": 9,
    "a#": 15,
    "#": 99,
    "q" * 51: 100,
    "[UNK]": 40,
    "ünïcode": 13,
    "映画": 17,
    "batsat": 10,
    "satpat": 10,
}


@pytest.mark.parametrize(
    "counts",
    [
        ODD_COUNTS,
        {
            **ODD_COUNTS,
            "##joined": 25,
        },  # a word starting with the joiner: tensorflow_text's learner
    ],
)
@pytest.mark.parametrize("vocab_size", [5, 12, 20, 40])
def test_learner_matches_tensorflow_texts_on_odd_counts(counts, vocab_size):
    theirs = wordpiece.tf_text_learner().learn(
        counts, vocab_size, RESERVED, include_joiner_token=True, joiner="##"
    )
    assert wordpiece.learn(counts, vocab_size, RESERVED) == theirs


def test_learner_options_reach_the_search(reviews):
    """Other thresholds, iteration counts and slack: still tensorflow_text's list."""
    counts = wordpiece.count_words(reviews[:60])
    learner = wordpiece.tf_text_learner()
    for options in (
        dict(lower_thresh=3, num_iterations=2),
        dict(upper_thresh=50, slack_ratio=0.2),
        dict(max_unique_chars=20, max_token_length=6, num_iterations=5),
    ):
        theirs = learner.learn(
            counts, 400, RESERVED, include_joiner_token=True, joiner="##", **options
        )
        assert wordpiece.learn(counts, 400, RESERVED, **options) == theirs, options


def test_no_words_is_a_clear_error():
    with pytest.raises(ValueError, match="no texts"):
        wordpiece.compute_word_piece_vocabulary([], 100, RESERVED)
    with pytest.raises(ValueError, match="no words"):
        wordpiece.compute_word_piece_vocabulary(["", "  \n "], 100, RESERVED)
