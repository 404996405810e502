"""keras_hub's WordPiece vocabulary, word for word, computed with arrays instead of loops.

`keras_hub.tokenizers.compute_word_piece_vocabulary` splits the texts into words with
TensorFlow ops, counts them, and hands the counts to tensorflow_text's pure-Python learner
(`wordpiece_tokenizer_learner_lib.learn`). That learner binary-searches a count threshold; for
every threshold it makes four passes, and each pass counts substrings of every word.
Here the splitting is the same TensorFlow code and the learner's bookkeeping (filtering,
search bounds, final ordering) is tensorflow_text's own; only the passes are replaced, by code
that produces the same token counts:

- A pass picks start positions in each word (every position in the first pass, the starts of
  the word's greedy longest-match segmentation afterwards). From each start s it adds the
  word's count to every prefix w[s:e] of the rest of the word ("##"-joined when s > 0); then,
  longest first, each substring subtracts what is left of its count from all its prefixes.
  What is left of a substring is exactly the summed count of the (word, start) pairs whose
  whole rest w[s:] is that substring: its raw count is those pairs plus the raw counts of its
  one-char-longer extensions, and what its extensions subtract adds up to the latter. So a
  pass is one weighted histogram over the (word, start) pairs it picks, and every token is a
  whole word or a "##"-joined whole suffix.
- A segmentation needs, for each (word, start), the ends e at which w[s:e] is such a token: a
  match table built once, after which each pass is a membership lookup, a maximum per
  (word, start) and a walk along the segment starts, all vectorized over the words.
- The first pass does not depend on the threshold, so it runs once for the whole search.

Inputs outside what this models (a word beginning with the joiner, whose token could then
equal a joined suffix's; an empty joiner; a search that could probe a threshold below 1) go to
tensorflow_text's learner unchanged.
"""

import numpy as np

import fp8demo.env  # quiets TensorFlow before tensorflow_text imports it

# tensorflow_text's defaults for the arguments keras_hub does not pass to `learn`.
LEARN_DEFAULTS = dict(
    upper_thresh=int(1e7),
    lower_thresh=10,
    num_iterations=4,
    max_input_tokens=int(5e6),
    max_token_length=50,
    max_unique_chars=1000,
    slack_ratio=0.05,
)


def compute_word_piece_vocabulary(
    texts,
    vocabulary_size: int,
    reserved_tokens,
    suffix_indicator: str = "##",
    batch_size: int = 1000,
) -> list:
    """What `compute_word_piece_vocabulary(dataset of texts, vocabulary_size,
    reserved_tokens=...)` returns with its other defaults (no lowercasing or accent stripping,
    split on whitespace, punctuation and CJK characters)."""
    counts = count_words(texts, batch_size)
    vocabulary = learn(counts, vocabulary_size, list(reserved_tokens), joiner=suffix_indicator)
    return vocabulary[:vocabulary_size]


def tf_text_learner():
    """tensorflow_text's learner module (importing it imports TensorFlow)."""
    # lazy: TensorFlow loads in ~5 s
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib

    return wordpiece_tokenizer_learner_lib


# -- counting words ------------------------------------------------------------------------


def count_words(texts, batch_size: int = 1000) -> dict:
    """{word: count} over `texts`, split exactly as compute_word_piece_vocabulary splits them.

    The words are counted per batch and merged by TensorFlow, so Python only sees each
    distinct word once."""
    # lazy: keras loads in ~3 s
    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize

    tf = fp8demo.env.tensorflow()
    texts = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
    if not texts:
        raise ValueError("There are no texts to learn a WordPiece vocabulary from.")

    def distinct_words(batch):
        # The call compute_word_piece_vocabulary makes: lowercase, strip_accents, split,
        # split_on_cjk.
        words = pretokenize(batch, False, False, True, True).flat_values
        unique, _, counts = tf.unique_with_counts(words)
        return unique, counts

    batches = (
        tf.data.Dataset.from_tensor_slices(texts)
        .batch(batch_size)
        .map(distinct_words, num_parallel_calls=tf.data.AUTOTUNE)
    )
    words, counts = zip(*batches, strict=True)
    words, where = tf.unique(tf.concat(words, 0))
    counts = tf.math.unsorted_segment_sum(tf.concat(counts, 0), where, tf.shape(words)[0])
    if not words.shape[0]:
        raise ValueError("The texts hold no words to learn a WordPiece vocabulary from.")
    return dict(
        zip(
            [w.decode("utf-8") for w in words.numpy().tolist()],
            counts.numpy().tolist(),
            strict=True,
        )
    )


# -- learning the vocabulary -----------------------------------------------------------------


def learn(
    word_counts, vocab_size: int, reserved_tokens: list, joiner: str = "##", **options
) -> list:
    """tensorflow_text's `learn(word_counts, vocab_size, reserved_tokens,
    include_joiner_token=True, joiner=joiner, **options)`, the same list."""
    learner = tf_text_learner()
    options = {**LEARN_DEFAULTS, **options}
    word_counts = list(word_counts.items() if isinstance(word_counts, dict) else word_counts)
    if not word_counts:
        raise ValueError("There are no words to learn a WordPiece vocabulary from.")
    upper, lower = learner.get_search_threshs(
        word_counts, options["upper_thresh"], options["lower_thresh"]
    )
    all_counts = learner.get_input_words(word_counts, reserved_tokens, options["max_token_length"])
    allowed_chars = learner.get_allowed_chars(all_counts, options["max_unique_chars"])
    words = learner.filter_input_words(all_counts, allowed_chars, options["max_input_tokens"])

    lowest = lowest_probe(lower, upper)
    if (
        not joiner
        or lowest < 1
        or options["num_iterations"] < 1
        or any(word.startswith(joiner) for word, _ in words)
    ):
        return learner.learn(
            word_counts,
            vocab_size,
            reserved_tokens,
            include_joiner_token=True,
            joiner=joiner,
            **options,
        )
    passes = Passes(words, joiner, lowest)
    slack = max(options["slack_ratio"] * vocab_size, 0)
    # tensorflow_text's learn_binary_search, as a loop.
    while True:
        thresh = (upper + lower) // 2
        tokens = passes.tokens(thresh, options["num_iterations"])
        # The length of generate_final_vocabulary's list: the chars are among the tokens.
        size = len(set(reserved_tokens).union(tokens))
        within_slack = size <= vocab_size and vocab_size - size <= slack
        if within_slack or lower >= upper or thresh <= 1:
            return learner.generate_final_vocabulary(reserved_tokens, passes.chars, tokens)
        if size > vocab_size:
            lower = thresh + 1
        else:
            upper = thresh - 1


def lowest_probe(lower: int, upper: int) -> int:
    """The smallest threshold the binary search can try between these starting bounds.

    The search only continues while lower < upper, so a lowered upper bound (probe - 1) stays
    at least lower - 1, and every later probe at least (lower + lower - 1) // 2."""
    return (lower + min(upper, lower - 1)) // 2


class Passes:
    """The learner's passes over `words` ((word, count) pairs) for thresholds >= `lowest`.

    Rows are (word, start) pairs, numbered word after word: a row's number is
    `word_row[word] + start`, so the row after a piece ending at e is `word_row[word] + e`.
    Tokens are numbered too: whole words and chars first, then joined suffixes and chars."""

    def __init__(self, words: list, joiner: str, lowest: int):
        self.joiner, self.lowest = joiner, lowest
        words = [(word, count) for word, count in words if word]  # "" adds nothing to a pass
        texts = [word for word, _ in words]
        lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        self.word_row = np.cumsum(lengths) - lengths
        self.word_end = self.word_row + lengths
        # Float weights: bincount sums them exactly (counts stay far below 2**53).
        self.row_weight = np.repeat(np.array([count for _, count in words], float), lengths)
        self.chars = set("".join(texts))  # as the learner's extract_char_tokens

        # Token ids: a whole word (start 0) by its text, a joined suffix by its text without
        # the joiner. Every row ends at the token of its whole rest of the word.
        whole, joined = {}, {}
        row_token = []
        for text in texts:
            row_token.append(whole.setdefault(text, len(whole)))
            row_token.extend(joined.setdefault(text[s:], len(joined)) for s in range(1, len(text)))
        for char in sorted(self.chars):  # chars are always tokens, joined and not
            whole.setdefault(char, len(whole))
            joined.setdefault(char, len(joined))
        self.whole_texts, self.joined_texts = list(whole), list(joined)
        offset = len(whole)
        self.row_token = np.asarray(row_token, np.int64)
        self.row_token[np.arange(len(row_token)) != np.repeat(self.word_row, lengths)] += offset
        self.n_tokens = offset + len(joined)
        self.is_char = np.zeros(self.n_tokens, bool)
        self.is_char[[whole[c] for c in self.chars]] = True
        self.is_char[[offset + joined[c] for c in self.chars]] = True

        # The first pass takes every row.
        self.first_counts = self.histogram(np.arange(len(row_token)))
        # A later pass's token count never exceeds its first-pass count, so tokens below the
        # lowest threshold can never be current and need no place in the match table.
        possible = (self.first_counts >= lowest) | self.is_char
        self.match_row, self.match_end, self.match_token = self.match_table(whole, joined, possible)

    def histogram(self, rows: np.ndarray) -> np.ndarray:
        """Token counts of one pass that takes `rows`: each row's word count on its token."""
        counts = np.bincount(
            self.row_token[rows], weights=self.row_weight[rows], minlength=self.n_tokens
        )
        return np.rint(counts).astype(np.int64)

    def match_table(self, whole, joined, possible):
        """Every (row, end) at which a possible token of two or more chars ends.

        Returns rows, ends (both absolute row numbers) and tokens, sorted by row and end. A
        row's first char is always a token, so a row without entries ends its piece after one
        char. A row's matches depend only on its rest of the word, so they are found once per
        distinct rest (a word, or a suffix shared by many words) and then copied to its rows."""
        texts = list(whole) + list(joined)
        lookups = [
            self.prefix_table(whole, possible, 0),
            self.prefix_table(joined, possible, len(whole)),
        ]
        # Per token (a distinct rest): the lengths and tokens of its possible prefixes.
        lengths, tokens, first = [], [], [0]
        for token, text in enumerate(texts):
            lookup = lookups[token >= len(whole)]
            # Scan while the text is still a prefix of some possible token.
            for k in range(2, len(text) + 1):
                match = lookup.get(text[:k])
                if match is None:
                    break
                if match >= 0:
                    lengths.append(k)
                    tokens.append(match)
            first.append(len(lengths))
        first = np.asarray(first, np.int64)
        # Copy each rest's matches to every row that ends at it.
        per_row = (first[1:] - first[:-1])[self.row_token]
        rows = np.repeat(np.arange(len(self.row_token)), per_row)
        starts = np.cumsum(per_row) - per_row
        entries = np.repeat(first[:-1][self.row_token] - starts, per_row) + np.arange(len(rows))
        return (
            rows,
            rows + np.asarray(lengths, np.int64)[entries],
            np.asarray(tokens, np.int64)[entries],
        )

    @staticmethod
    def prefix_table(ids: dict, possible: np.ndarray, offset: int) -> dict:
        """{text: token id} of the possible tokens of two or more chars, and {prefix: -1} for
        their shorter prefixes that are no such token."""
        table = {}
        for text, token in ids.items():
            if len(text) > 1 and possible[offset + token]:
                for k in range(2, len(text)):
                    table.setdefault(text[:k], -1)
                table[text] = offset + token
        return table

    def segment_starts(self, current: np.ndarray) -> np.ndarray:
        """Rows at which each word's greedy longest-match segmentation starts a piece."""
        hit = np.flatnonzero(current[self.match_token])
        longest = np.arange(1, len(self.row_token) + 1)  # one char, always a token
        if hit.size:
            # Entries are sorted by row and end: a row's longest match is its last hit.
            hit_rows = self.match_row[hit]
            last = hit[np.append(hit_rows[1:] != hit_rows[:-1], True)]
            longest[self.match_row[last]] = self.match_end[last]
        rows, ends = self.word_row, self.word_end
        picked = []
        while rows.size:
            picked.append(rows)
            rows = longest[rows]
            more = rows < ends
            rows, ends = rows[more], ends[more]
        return np.concatenate(picked) if picked else rows

    def tokens(self, thresh: int, num_iterations: int) -> dict:
        """The learner's current tokens {text: count} after `num_iterations` passes."""
        if thresh < self.lowest:
            raise ValueError(f"The match table holds tokens for thresholds >= {self.lowest}.")
        counts = self.first_counts
        for _ in range(num_iterations - 1):
            current = (counts >= thresh) | self.is_char
            counts = self.histogram(self.segment_starts(current))
        kept = counts >= thresh
        current = np.flatnonzero(kept | self.is_char)
        values = np.where(kept[current], counts[current], 1)  # chars below thresh count 1
        return dict(zip(map(self.text, current.tolist()), values.tolist(), strict=True))

    def text(self, token: int) -> str:
        offset = len(self.whole_texts)
        if token < offset:
            return self.whole_texts[token]
        return self.joiner + self.joined_texts[token - offset]
