"""What counts as text, and how much of it a text encoder reads: one rule for queries, subtitles and
the search.

- A text with no visible character is empty: whitespace of any kind (U+00A0 no-break space, U+3000
  ideographic space, line and paragraph separators), format characters (category Cf: U+200B
  zero-width space, U+FEFF, joiners, bidirectional marks), control characters, combining marks with
  no base character, and the letters Unicode defines as blank fillers (U+3164 Hangul filler...).
  Empty queries are a data problem (``data.on_problem.empty_text``), empty subtitle lines are left
  out, and the search refuses an empty query.
- A text longer than its encoder's limit (``text.max_length`` tokens for hf-text, start and end tokens
  included; CLIP's context length for clip-text) is cut to the limit, as the PRVR reference recipe cuts
  TVR queries to 30 tokens: the same cut in QueryFeatures, SubtitleFeatures and the search, never
  silent (a warning, and a count in the stage manifest; the search logs it).
"""

from __future__ import annotations

import unicodedata

# Not visible on their own: separators, controls, format characters, combining marks, unassigned and
# surrogate code points.
_INVISIBLE_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf", "Cn", "Cs", "Mn", "Me"}
# Letters and symbols that render as blank space.
_BLANK_FILLERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character (see the module docstring)."""
    return not any(char not in _BLANK_FILLERS and unicodedata.category(char) not in _INVISIBLE_CATEGORIES
                   and not char.isspace() for char in text)


def over_limit(encoder, texts: list[str]) -> list[tuple[int, int]]:
    """(index, token count) of each text the encoder cuts: more tokens than ``encoder.max_length``."""
    return [(index, count) for index, count in enumerate(encoder.token_counts(texts)) if count > encoder.max_length]


def truncation_note(what: str, n_cut: int, n_total: int, examples: list[str], limit: int) -> str:
    """The warning for texts cut to the encoder's limit, naming a few of them."""
    listed = ", ".join(examples[:3]) + (f" and {n_cut - 3} more" if n_cut > 3 else "")
    return (f"{n_cut} of {n_total} {what} have more than {limit} tokens (text.max_length, start and end tokens "
            f"included) and are cut to {limit}: {listed}")
