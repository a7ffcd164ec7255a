"""Tests for service/tokenizer.py: corpus conventions, round trips, unicode, the whitespace convention."""

from __future__ import annotations

import random

import pytest

from service.tokenizer import CONVENTIONS, detokenize, tokenize


def wt(text: str) -> list[str]:
    return tokenize(text, "wikitext")


# (raw text, the tokens the corpus writes for it, space-joined). Every right-hand side occurs verbatim
# in WikiText-2's train.txt: tools/compare_tokenizers.py checks that (the suite never reads the corpus).
CORPUS_FRAGMENTS = [
    ("a tactical role-playing video game", "a tactical role @-@ playing video game"),
    ("it wasn't until 1985", "it wasn 't until 1985"),
    ("Couldn't Help", "Couldn 't Help"),
    ("I don't know", "I don 't know"),
    ("The game's opening theme was sung by May'n.", "The game 's opening theme was sung by May 'n ."),
    ("The Girls' Friendly Society", "The Girls ' Friendly Society"),
    ("Danny O'Brien.", "Danny O 'Brien ."),
    ("of the 1990's.", "of the 1990 's ."),
    ("increased to $30,000", "increased to $ 30 @,@ 000"),
    ("just 1% of the", "just 1 % of the"),
    ("48.2% chance of", "48 @.@ 2 % chance of"),
    ("buck & ball", "buck & ball"),
    ("Blackie paid £25 for", "Blackie paid £ 25 for"),
    ("with 2:33 remaining", "with 2 : 33 remaining"),
    ("won 2-1 in", "won 2 @-@ 1 in"),
    ("all 18- to", "all 18- to"),
    ("by them — not in", "by them — not in"),
    ("May 15 – 18,", "May 15 – 18 ,"),
    ("the U.S. Navy", "the U.S. Navy"),
    ("Dr. Kaplan describes", "Dr. Kaplan describes"),
    ("No. 1 on", "No. 1 on"),
    ("Moody, Jr. and", "Moody , Jr. and"),
    ("World War I.", "World War I."),
    ("the street from Oslo Ø. However", "the street from Oslo Ø . However"),  # Moses' single capitals are A-Z
    ("Japanese: 戦場のヴァルキュリア3, lit. Valkyria of the Battlefield 3)",
     "Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the Battlefield 3 )"),
    ("developed by Sega and Media.Vision for", "developed by Sega and Media.Vision for"),
    ('follows the "Nameless", a penal', 'follows the " Nameless " , a penal'),
    ("Wish for...\"", 'Wish for ... "'),
    ("(e.g. the", "( e.g. the"),
]


@pytest.mark.parametrize("raw, fragment", CORPUS_FRAGMENTS)
def test_corpus_conventions(raw, fragment):
    assert wt(raw) == fragment.split(" ")


@pytest.mark.parametrize("raw, tokens", [
    ("", []),
    ("   ", []),
    ("Hello, world!", ["Hello", ",", "world", "!"]),
    ("1,000.5", ["1", "@,@", "000", "@.@", "5"]),
    ("Wait… what?", ["Wait", "...", "what", "?"]),
    ("“Quoted” and ‘single’ don’t", ['"', "Quoted", '"', "and", "'", "single", "'", "don", "'t"]),
    ("rock'n'roll", ["rock", "'n'roll"]),
    ("<unk>'s <unk>-based", ["<unk>", "'s", "<unk>", "@-@", "based"]),
    ("It rained.\nThen", ["It", "rained", ".", "<eos>", "Then"]),
    ("a\r\nb\n", ["a", "<eos>", "b", "<eos>"]),
    ("the end. and so", ["the", "end.", "and", "so"]),  # Moses keeps a period before a lower-case word
    ("etc. The", ["etc", ".", "The"]),
    ("and/or", ["and", "/", "or"]),
    ("a @ b", ["a", "@", "b"]),
])
def test_tokenize_table(raw, tokens):
    assert wt(raw) == tokens


ROUND_TRIP = [
    "The game's opening theme was sung by May'n.",
    "It wasn't until 1,000.5 people arrived.",
    'He said, "Hello there." Then he left.',
    "A role-playing game (RPG) costs $5 or 10% more.",
    "The players' union met in the U.S. in 2011.",
    "Dr. Smith won't go; she's tired!",
    "Rock'n'roll is here to stay.",
    "Wait... what?",
    "The score was 3-0 at 2:33 in the second half.",
    "In the 1990's, O'Brien said 'no'.",
    "I paid £25 for 3 books & a pen [sic].",
    "Couldn't you see it, Mr. Jones? No. 5 is on St. Mark's Place.",
    "She scored 12 points in the 2010–11 season.",
    "He stood up — slowly — and left.",
    "Use a knife and/or a fork, e.g. at dinner.",
    'The "Nameless" unit (a penal unit) fought in 1,200 battles.',
    "They've said we'll see; I'd say I'm sure you're right.",
    "Population: 3,456,789 (est. 2020); area 12.5 km.",
    "It rained.\nThen it stopped.\n",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text):
    assert detokenize(wt(text), "wikitext") == text


@pytest.mark.parametrize("tokens, text", [
    (["The", "game", "'s", "role", "@-@", "playing", "mode", "."], "The game's role-playing mode."),
    (["$", "1", "@,@", "000", "@.@", "5", "million"], "$1,000.5 million"),
    (['"', "Nameless", '"', ",", "a", '"', "unit", '"'], '"Nameless", a "unit"'),
    (["(", "born", "1990", ")", "n't"], "(born 1990)n't"),
    (["a", "<eos>", "<eos>", "b", "."], "a\n\nb."),
    (["<eos>"], "\n"),
    ([], ""),
])
def test_detokenize_table(tokens, text):
    assert detokenize(tokens, "wikitext") == text


@pytest.mark.parametrize("text, tokens", [
    ("Café naïve", ["Café", "naïve"]),
    ("Cafe\u0301", ["Café"]),  # NFC: e + combining acute -> é
    ("東京は晴れ。", ["東京は晴れ", "。"]),
    ("I ❤️ NY 🎉!", ["I", "❤", "NY", "🎉", "!"]),  # the variation selector (a mark) is dropped
    ("a\x00b\x07c\u200bd\ufeffe", ["abcde"]),  # control and format characters dropped
    ("a\tb\x0bc\xa0d", ["a", "b", "c", "d"]),  # whitespace controls and no-break space separate
    ("\ud800lone surrogate", ["lone", "surrogate"]),
    ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),  # combining vowel signs stay inside their word
])
def test_unicode(text, tokens):
    assert wt(text) == tokens


def test_never_crashes_nor_returns_empty_tokens():
    rng = random.Random(7)
    alphabet = "aZ9 .,'\"-@$%&()…—–’“\n\r\t\x00\u0301\u200d\ufe0f😀東é<unk>" + "".join(map(chr, range(0x2000, 0x2070)))
    for convention in CONVENTIONS:
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
            tokens = tokenize(text, convention)
            assert all(tok and not tok.isspace() and " " not in tok for tok in tokens), (text, tokens)
            assert isinstance(detokenize(tokens, convention), str)


def test_whitespace_convention():
    text = "Don't  split (this), role-playing  1,000.\nNext line"
    expected = ["Don't", "split", "(this),", "role-playing", "1,000.", "<eos>", "Next", "line"]
    assert tokenize(text, "whitespace") == expected
    assert detokenize(["a", "b,", "<eos>", "c"], "whitespace") == "a b,\nc"
    assert detokenize(tokenize("one two\nthree", "whitespace"), "whitespace") == "one two\nthree"


@pytest.mark.parametrize("call", [lambda: tokenize("x", "moses"), lambda: detokenize(["x"], "WikiText")])
def test_unknown_convention_raises(call):
    with pytest.raises(ValueError, match="unknown text convention"):
        call()


def test_conventions_listed():
    assert CONVENTIONS == ("wikitext", "whitespace")
