"""The character tokenizer: the seed's fixed id table, pure Python (no torch, no numpy needed).

Ids: 0 `<?>` (unknown), 1-10 digits, 11-36 a-z, 37-68 `string.punctuation` in order,
69-74 whitespace (space, tab, newline, CR, VT, FF), 75-81 special tokens, 82-87 reserved.
Text is lowercased before lookup, so "ROMEO" and "romeo" encode the same.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from picogpt.errors import PicoError

UNKNOWN_ID = 0
UNKNOWN_TOKEN = "<?>"
SPECIAL_TOKENS = ("<P>", "<S>", "</S>", "<Q>", "</Q>", "<A>", "</A>")
WHITESPACE = " \t\n\r\x0b\x0c"
VOCAB_SIZE = 88
TOKENIZER_FORMAT = "picogpt-char-1"


def seed_vocab() -> list[str]:
    """The seed's id -> string table (88 entries; reserved ids are empty strings)."""
    chars = list(string.digits) + list(string.ascii_lowercase) + list(string.punctuation) + list(WHITESPACE)
    vocab = [UNKNOWN_TOKEN] + chars + list(SPECIAL_TOKENS)
    vocab += [""] * (VOCAB_SIZE - len(vocab))
    return vocab


@dataclass
class Encoded:
    """Token ids plus how many input characters had no id (they became `<?>`)."""

    ids: list[int]
    unknown: int


class CharTokenizer:
    """Lowercasing character tokenizer with a handful of multi-character special tokens."""

    def __init__(self, vocab: list[str] | None = None) -> None:
        self.vocab = list(vocab) if vocab is not None else seed_vocab()
        self.char_to_id = {s: i for i, s in enumerate(self.vocab) if len(s) == 1}
        self.special_to_id = {s: i for i, s in enumerate(self.vocab) if len(s) > 1 and i != UNKNOWN_ID}
        # Special tokens are matched before single characters, so "<Q>" is one id, not three.
        if self.special_to_id:
            alternatives = "|".join(re.escape(s) for s in sorted(self.special_to_id, key=len, reverse=True))
            self._special_re: re.Pattern[str] | None = re.compile(f"({alternatives})")
        else:
            self._special_re = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def text_ids(self) -> list[int]:
        """Ids of ordinary characters: not <?>, not the special tokens, not the padding of the table."""
        return sorted(self.char_to_id.values())

    def encode_counted(self, text: str, allow_special: bool = True) -> Encoded:
        """Encode `text`; characters outside the table become id 0 and are counted."""
        lookup = self.char_to_id
        ids: list[int] = []
        unknown = 0
        pieces = self._special_re.split(text) if (allow_special and self._special_re) else [text]
        for piece in pieces:
            special = self.special_to_id.get(piece) if allow_special else None
            if special is not None:
                ids.append(special)
                continue
            for ch in piece:
                i = lookup.get(ch)
                if i is None:
                    low = ch.lower()
                    i = lookup.get(low, UNKNOWN_ID) if len(low) == 1 else UNKNOWN_ID
                    unknown += i == UNKNOWN_ID
                ids.append(i)
        return Encoded(ids, unknown)

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Encode `text` to ids (lowercased; unknown characters map to 0)."""
        return self.encode_counted(text, allow_special).ids

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        """Ids back to text; reserved ids decode to nothing, unknown to `<?>`."""
        vocab = self.vocab
        n = len(vocab)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise PicoError(f"tokenizer: id {i} is outside the vocabulary (0..{n - 1})")
            out.append(vocab[i])
        return "".join(out)

    def to_json(self) -> str:
        """A small JSON string describing the table (embedded in checkpoints and ONNX files)."""
        d = {"format": TOKENIZER_FORMAT, "lowercase": True, "unknown_id": UNKNOWN_ID, "vocab": self.vocab}
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> CharTokenizer:
        try:
            d = json.loads(s)
        except ValueError as exc:
            raise PicoError(f"tokenizer: invalid JSON ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != TOKENIZER_FORMAT or not isinstance(d.get("vocab"), list):
            raise PicoError(f"tokenizer: not a {TOKENIZER_FORMAT} tokenizer description")
        return cls(d["vocab"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.vocab == other.vocab
