"""Turns raw user text into the corpus's tokens and back. Knows nothing of vocabularies, ids, models or HTTP.

Two conventions (a bundle's manifest names one):

- "wikitext": tokenized WikiText-2 (v1), i.e. Moses `tokenizer.perl -l en -a` plus WikiText's number
  separators, case kept. Each rule below was checked against the corpus's train.txt:
  every symbol other than letters, digits, `.` `'` `,` `-` is a token of its own (`(` `"` `:` `;` `!`
  `?` `$` `%` `&` `/` `£` `—` `–`, emoji: `$ 14`, `94 %`, `buck & ball`, `2 : 33`); `,` `.` inside a
  number become `@,@` `@.@` and a hyphen between letters or digits `@-@` (`1 @,@ 000 @.@ 5`,
  `role @-@ playing`, `3 @-@ 0`); a hyphen elsewhere stays put (`18- to`, ` - `); a run of dots is
  one token (`...`, `....`); a word's final period is split off (`lit . Valkyria`) unless the word
  has an inner period (`U.S.`, `e.g.`, `p.m.`, `Media.Vision`) or is a known abbreviation (`Dr.`,
  `St.`, `A.`; `No.` and `Op.` before a number), both also at the end of a line (`World War I.`),
  or the next word starts lower-case (`Jr. and`); an apostrophe between letters starts the
  next token (`wasn 't`, `game 's`, `May 'n`, `O 'Brien`, `'n'roll`), `'s` after a digit too
  (`1990 's`), any other apostrophe stands alone (`Girls ' Friendly`, `' Is this`).
  Curly quotes are made straight first (the corpus keeps few, split oddly: `father ’ s`), and `…`
  becomes `...`, as the corpus nearly always writes it.
- "whitespace": split on whitespace only.

Both: NFC; control and format characters and variation selectors dropped (a whitespace control
counts as a space); each line break is one `<eos>`, as every corpus line ends with one; `<unk>` and
`<eos>` typed literally stay tokens. No token is ever empty. `detokenize` undoes what it can:
`detokenize(tokenize(s)) == s` for ordinary English (not for curly quotes, `…`, spacing around
symbols, or the rare `'` it guesses wrong).

Why not sacremoses: it reads the corpus back less exactly (tools/compare_tokenizers.py; the numbers are in
docs/benchmarks.md), and where it misses matters here: an apostrophe at the very start or end of a text stays
on the word (`the gods'` gives `gods'`, where the corpus writes `gods '`: Moses pads the line with spaces,
sacremoses strips it), and at the end of a /predict text that is the word the prediction follows; and a CJK
run is split into characters (`戦場` gives `戦 場`). It is slower on the /predict path too.
"""

from __future__ import annotations

import re
import string
import unicodedata

from service.bundle import TEXT_CONVENTIONS

CONVENTIONS: tuple[str, ...] = tuple(TEXT_CONVENTIONS)  # the bundle contract names them; this module implements each
EOS = "<eos>"

_LINE_BREAK = re.compile(r"\r\n|[\r\n\u2028\u2029]")
_SPECIAL = re.compile(r"(<unk>|<eos>)")  # kept whole, never split into < unk >
_VARIATION_SELECTOR = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")  # emoji style hints
_STRAIGHTEN = str.maketrans({"“": '"', "”": '"', "„": '"', "‟": '"', "‘": "'", "’": "'", "‚": "'", "‛": "'",
                             "…": "..."})

# tokenize, wikitext: applied in this order to the text between specials, padded with a space each side
# (a letter where it touches `<unk>`, so `<unk>'s` splits like `game's`)
_SYMBOL = re.compile(r"[^\w\s.'`,\-]")  # each becomes its own token (combining marks excepted)
_DOTS = re.compile(r"\.{2,}")
_IN_NUMBER = re.compile(r"(?<=\d)([.,])(?=\d)")  # 1,000.5 -> 1 @,@ 000 @.@ 5
_COMMA = re.compile(r"(?<!@),(?!@)")  # every other comma
_HYPHEN = re.compile(r"(?<=[^\W_])-(?=[^\W_])")  # role-playing -> role @-@ playing
_APOSTROPHE = (  # Moses' five rules, same order, same non-overlapping matches (hence 'n'roll)
    (re.compile(r"([\W\d_])'([\W\d_])"), r"\1 ' \2"),
    (re.compile(r"([\W_])'([^\W\d_])"), r"\1 ' \2"),
    (re.compile(r"([^\W\d_])'([\W\d_])"), r"\1 ' \2"),
    (re.compile(r"([^\W\d_])'([^\W\d_])"), r"\1 '\2"),
    (re.compile(r"(\d)'(s)"), r"\1 '\2"),
)
# Words whose final period stays (a trimmed Moses nonbreaking_prefix.en), and its single capitals A-Z
_ABBREVIATIONS = frozenset(
    "Adj Adm Adv Asst Bldg Brig Bros Capt Cmdr Col Comdr Corp Cpl Dr Drs Ens Gen Gov Hon Hosp Insp Lt Maj "
    "Messrs Mlle Mme Mr Mrs Ms Msgr Ph Prof Pvt Rep Reps Rev Rt Sen Sens Sgt Sr St Supt Surg v vs".split()
    + list(string.ascii_uppercase))
_BEFORE_NUMBER = frozenset("No Nos Op Art Nr pp".split())  # `No. 1`, `Op. 27`, `pp. 12`

# detokenize, wikitext
_JOINERS = {"@-@": "-", "@,@": ",", "@.@": "."}
_NO_SPACE_BEFORE = frozenset(", . ; : ! ? ) ] } % ... .... n't".split())
_NO_SPACE_AFTER = frozenset("( [ { $ £ € ¥ ₹ #".split())
_BETWEEN_DIGITS = frozenset(":–")  # 2 : 33 -> 2:33, 15 – 18 -> 15–18
_CLITIC = re.compile(r"'[^\W\d_]")  # 's 't 're 'n 'Brien: split off the word before


def dropped(ch: str) -> bool:
    """Characters the tokenizer drops or splits on: whitespace, control and format characters, variation selectors."""
    code = ord(ch)
    return (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") or 0xFE00 <= code <= 0xFE0F
            or 0xE0100 <= code <= 0xE01EF)


def has_word(text: str) -> bool:
    """Whether tokenize() finds at least one token in text, whatever the convention."""
    return any(not dropped(ch) for ch in text)


def _clean(text: str) -> str:
    kept = (ch if unicodedata.category(ch) not in ("Cc", "Cf", "Cs") or ch in "\n\r"
            else " " if ch.isspace() else "" for ch in _VARIATION_SELECTOR.sub("", text))
    return unicodedata.normalize("NFC", "".join(kept))


def _symbol(m: re.Match) -> str:
    ch = m.group()
    return ch if unicodedata.category(ch).startswith("M") else f" {ch} "


def _moses(piece: str, pads: str) -> str:
    text = _SYMBOL.sub(_symbol, f"{pads[0]}{piece}{pads[1]}")
    text = _DOTS.sub(r" \g<0> ", text)
    text = _IN_NUMBER.sub(lambda m: f" @{m.group(1)}@ ", text)
    text = _HYPHEN.sub(" @-@ ", _COMMA.sub(" , ", text))
    for pattern, repl in _APOSTROPHE:
        text = pattern.sub(repl, text)
    return text[1:-1]  # the rules above never move or drop the two pad characters


def _keeps_period(pre: str, after: str) -> bool:
    return (("." in pre and any(ch.isalpha() for ch in pre)) or pre in _ABBREVIATIONS or after[:1].islower()
            or (pre in _BEFORE_NUMBER and after[:1].isdigit()))


def _wikitext_line(line: str) -> list[str]:
    line = line.translate(_STRAIGHTEN)
    pieces = _SPECIAL.split(line)  # text, special, text, ..., text
    for i in range(0, len(pieces), 2):  # text touching `<unk>` sees a letter there: `<unk>'s` -> `<unk> 's`
        pieces[i] = _moses(pieces[i], ("a" if i else " ") + ("a" if i + 1 < len(pieces) else " "))
    words = " ".join(pieces).split()
    tokens = []
    for i, word in enumerate(words):
        after = words[i + 1] if i + 1 < len(words) else ""
        if word.endswith(".") and word.strip(".") and not _keeps_period(word[:-1], after):
            tokens += [word[:-1], "."]
        else:
            tokens.append(word)
    return tokens


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown text convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")


def tokenize(text: str, convention: str) -> list[str]:
    """Raw text -> corpus tokens, each line break an `<eos>`."""
    _check(convention)
    split = _wikitext_line if convention == "wikitext" else str.split
    tokens: list[str] = []
    for i, line in enumerate(_LINE_BREAK.split(_clean(text))):
        if i:
            tokens.append(EOS)
        tokens += split(line)
    return tokens


def _wikitext_join(tokens: list[str]) -> str:
    out: list[str] = []
    glue = True  # no space before the next token
    double_open = single_open = False
    for i, tok in enumerate(tokens):
        before, after = (tokens[i - 1] if i else ""), (tokens[i + 1] if i + 1 < len(tokens) else "")
        left = right = False  # attach to the token before / after
        if tok in _JOINERS:
            tok, left, right = _JOINERS[tok], True, True
        elif tok == '"':  # alternate: an opening quote hugs the next word, a closing one the word before
            left, right, double_open = double_open, not double_open, not double_open
        elif tok == "'":  # closing quote or plural possessive (Girls ' -> Girls'), else opening
            if single_open or before.endswith("s"):
                left, single_open = True, False
            else:
                right = single_open = True
        elif tok in _BETWEEN_DIGITS and before[-1:].isdigit() and after[:1].isdigit() or tok == "/":
            left = right = True
        elif tok in _NO_SPACE_BEFORE or _CLITIC.match(tok):
            left = True
        elif tok in _NO_SPACE_AFTER:
            right = True
        if out and not (glue or left):
            out.append(" ")
        out.append(tok)
        glue = right
    return "".join(out)


def detokenize(tokens: list[str], convention: str) -> str:
    """Corpus tokens -> readable text; `<eos>` becomes a line break."""
    _check(convention)
    join = _wikitext_join if convention == "wikitext" else " ".join
    lines: list[list[str]] = [[]]
    for tok in tokens:
        if tok == EOS:
            lines.append([])
        else:
            lines[-1].append(tok)
    return "\n".join(join(line) for line in lines)
