"""What the benchmark sends: prompts, synthetic or from a dataset, made fresh for every run.

Freshness: every prompt of a run starts with the run's *salt*, a few words derived from a per-run
nonce, so a server's prefix cache cannot reuse blocks across runs (or across invocations: the nonce is
random unless `--salt` fixes it). Within a run, synthetic prompts differ from their first word after
the salt. What a chat template puts before the user message (a default system prompt) is the same for
every request and may still be cached; that holds for every server alike.

Synthetic prompt length is counted in tokens of the user text (the salt included): exactly, with the
model's tokenizer (`--tokenizer DIR`); otherwise as one token per word of `WORDS`, an approximation
that holds exactly for the default model and closely for other BPE tokenizers. The server's usage
reports the real prompt length (chat template included) either way. Dataset prompts are drawn
with replacement (seeded), so a run may ask for more prompts than the file holds.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from npu_serve.bench.errors import BenchError
from npu_serve.bench.tokens import TokenCounter
from npu_serve.bench.words import WORDS

SALT_WORDS = 4  # 416**4 ~ 3e10 distinct salts


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # tokens of `text` by the run's TokenCounter (exact or approximate, as it says)


@dataclass(frozen=True)
class PromptSource:
    """Where a run's prompts come from: synthetic lengths `input_tokens` = (lo, hi), or a dataset."""

    input_tokens: tuple[int, int] = (256, 256)
    dataset: tuple[str, ...] | None = None  # the dataset's prompts, loaded once


def salt_words(salt: str) -> list[str]:
    """The words a salt string stands for (deterministic: the same salt, the same words)."""
    digest = hashlib.sha256(salt.encode("utf-8")).digest()
    return [WORDS[int.from_bytes(digest[4 * i:4 * i + 4], "big") % len(WORDS)] for i in range(SALT_WORDS)]


def make_prompts(source: PromptSource, count: int, *, seed: int, salt: str, counter: TokenCounter) -> list[Prompt]:
    """`count` prompts for one run. The same (seed, salt) gives the same prompts; a new salt, new ones."""
    prefix = salt_words(salt)
    rng = random.Random(f"{seed}:{salt}")
    if source.dataset is not None:
        texts = [" ".join(prefix) + " " + source.dataset[rng.randrange(len(source.dataset))] for _ in range(count)]
        return [Prompt(t, counter.count(t)) for t in texts]
    lo, hi = source.input_tokens
    return [_synthetic(rng.randint(lo, hi), prefix, rng, counter) for _ in range(count)]


def _synthetic(target: int, prefix: list[str], rng: random.Random, counter: TokenCounter) -> Prompt:
    words = list(prefix[:target])
    while len(words) < target:
        words.append(rng.choice(WORDS))
    if not counter.exact:
        text = " ".join(words)
        return Prompt(text, counter.count(text))
    # With a real tokenizer a word may be several tokens: drop words while too long, add while too short.
    n = counter.count(" ".join(words))
    while n > target and len(words) > 1:
        words.pop()
        n = counter.count(" ".join(words))
    while n < target:
        words.append(rng.choice(WORDS))
        n = counter.count(" ".join(words))
    text = " ".join(words)
    if n > target:  # the last word overshot: cut at the token boundary instead
        text = counter.truncate(text, target)
    return Prompt(text, counter.count(text))


def load_dataset(path: str | Path) -> tuple[str, ...]:
    """Prompts from a ShareGPT-style file: JSON Lines (one object a line) or one JSON array, each item
    `{"conversations": [{"from": "human", "value": ...}, ...]}` (the first human turn is the prompt),
    or `{"prompt": "..."}`. Items without a usable prompt are skipped; none at all is an error."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"--dataset {path}: cannot read it ({e})") from e
    items = _parse_items(raw, path)
    prompts = [t for t in (_prompt_of(item) for item in items) if t]
    if not prompts:
        raise BenchError(f"--dataset {path}: no prompts found; each item needs 'conversations' with a "
                         "human turn ({'from': 'human', 'value': ...}) or a 'prompt' string")
    return tuple(prompts)


def _parse_items(raw: str, path: str | Path) -> list:
    stripped = raw.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise BenchError(f"--dataset {path}: not valid JSON ({e})") from e
        return list(data)
    items = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BenchError(f"--dataset {path}: line {lineno} is not valid JSON ({e.msg})") from e
    return items


def _prompt_of(item) -> str | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("prompt"), str):
        return item["prompt"].strip() or None
    for turn in item.get("conversations") or item.get("conversation") or []:
        if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("human", "user"):
            value = turn.get("value", turn.get("content"))
            return value.strip() or None if isinstance(value, str) else None
    return None
