"""Counting prompt tokens on the client side: with the model's tokenizer, or one token per word.

Only the prompt's length is counted here (to size synthetic prompts and to report what was sent);
output tokens come from the server's usage, or from its chunks (see client.py).
The `tokenizers` library reads `tokenizer.json` directly, so counting never loads torch or
transformers into the benchmark process.
"""

from __future__ import annotations

from pathlib import Path

from npu_serve.bench.errors import BenchError

APPROXIMATION = "1 token per whitespace-separated word (pass --tokenizer DIR for exact counts)"


class TokenCounter:
    """`count(text)`: tokens of `text` without special tokens. `exact` says whether a real tokenizer
    counts them; `method` says how, in words, for the results file."""

    def __init__(self, tokenizer=None, source: str | None = None):
        self._tok = tokenizer
        self.exact = tokenizer is not None
        self.method = f"tokenizer {source}" if self.exact else APPROXIMATION

    @classmethod
    def from_path(cls, path: str | None) -> TokenCounter:
        if path is None:
            return cls()
        from tokenizers import Tokenizer

        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise BenchError(f"--tokenizer {path}: no tokenizer.json there (give a Hugging Face model directory "
                             "with a tokenizer.json, or the file itself)")
        try:
            return cls(Tokenizer.from_file(str(file)), str(file))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions for bad files
            raise BenchError(f"--tokenizer {path}: cannot load {file} ({e})") from e

    def count(self, text: str) -> int:
        if self._tok is None:
            return len(text.split())
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, n: int) -> str:
        """The text of the first `n` tokens of `text` (exact counters only)."""
        if self._tok is None:
            return " ".join(text.split()[:n])
        ids = self._tok.encode(text, add_special_tokens=False).ids[:n]
        return self._tok.decode(ids)
