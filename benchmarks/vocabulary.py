"""The example's WordPiece vocabulary two ways, in one run on the same machine load: keras_hub's
`compute_word_piece_vocabulary` as the example calls it, and fp8demo.wordpiece (run before and
after keras_hub). Also times loading the reviews from their files and from the review cache.

    .venv/bin/python benchmarks/vocabulary.py [--subset N] [--vocab-size 20000] [--json PATH]

Defaults: the full 20,000 training reviews, vocabulary 20,000. Exits 1 if the lists differ.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, load_average, setup_env, table, write_json  # noqa: E402


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=0, help="reviews per split (0: all)")
    parser.add_argument("--vocab-size", type=int, default=20000)
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    home = setup_env()
    try:
        identical = compare(args, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # a temporary home with its own extraction
    sys.exit(0 if identical else 1)


def compare(args, home) -> bool:
    """Run both, print the table; True when the vocabularies are identical."""
    import keras_hub

    from fp8demo import data, wordpiece
    from fp8demo.config import RESERVED_TOKENS
    from fp8demo.env import tensorflow

    tf = tensorflow()
    wordpiece.tf_text_learner()  # imports done before anything is timed
    reserved = list(RESERVED_TOKENS)
    print(f"CPU: {cpu_model()}; load average {load_average()}")

    _, extract_s = timed(data.resolve_source, "", home, lambda *_: None)
    imdb, files_s = timed(data.load, "", args.subset, home, lambda *_: None)
    cached, cache_s = timed(data.load, "", args.subset, home, lambda *_: None)
    assert cached.train.texts == imdb.train.texts
    texts = imdb.train.texts
    print(f"{len(texts)} training reviews, vocabulary {args.vocab_size}")

    def ours():
        counts, count_s = timed(wordpiece.count_words, texts)
        vocabulary, learn_s = timed(wordpiece.learn, counts, args.vocab_size, reserved)
        return vocabulary[: args.vocab_size], count_s, learn_s

    def theirs():
        dataset = tf.data.Dataset.from_tensor_slices(texts).batch(1000).prefetch(2)
        return keras_hub.tokenizers.compute_word_piece_vocabulary(
            dataset, vocabulary_size=args.vocab_size, reserved_tokens=reserved
        )

    (vocabulary, count_s, learn_s), ours_s = timed(ours)
    reference, theirs_s = timed(theirs)
    (again, _, _), again_s = timed(ours)
    identical = vocabulary == reference == again
    print(
        table(
            ["step", "seconds"],
            [
                ["extract the archive (once per home)", f"{extract_s:.1f}"],
                ["load the reviews from the files (then cached)", f"{files_s:.2f}"],
                ["load the reviews from the review cache", f"{cache_s:.2f}"],
                ["keras_hub compute_word_piece_vocabulary", f"{theirs_s:.1f}"],
                ["fp8demo.wordpiece, before keras_hub", f"{ours_s:.1f}"],
                ["  of which counting words", f"{count_s:.1f}"],
                ["  of which learning", f"{learn_s:.1f}"],
                ["fp8demo.wordpiece, after keras_hub", f"{again_s:.1f}"],
            ],
        )
    )
    print(
        f"load average {load_average()}; {len(vocabulary)} tokens; identical to "
        f"keras_hub's list: {identical}"
    )
    if not identical:
        shorter = min(len(vocabulary), len(reference))
        first = next((i for i in range(shorter) if vocabulary[i] != reference[i]), shorter)
        print(
            f"first difference at {first}: ours {vocabulary[first : first + 3]}, keras_hub "
            f"{reference[first : first + 3]} (lengths {len(vocabulary)}, {len(reference)})"
        )
    write_json(
        args.json,
        dict(
            cpu=cpu_model(),
            reviews=len(texts),
            vocab_size=args.vocab_size,
            identical=identical,
            keras_hub_s=theirs_s,
            ours_s=ours_s,
            ours_again_s=again_s,
            count_words_s=count_s,
            learn_s=learn_s,
            load_files_s=files_s,
            load_cache_s=cache_s,
        ),
    )
    return identical


if __name__ == "__main__":
    main()
