"""Content moderation through the real server: input refused with MaaS's 403, output cut mid-stream.

The sensitive terms are taken from what the tiny model actually generates (seeded sampling, so the
same every time), cut at the unmoderated stream's chunk boundaries: a chunk holds one or more whole
tokens, so a term spanning k chunks reaches the moderator split across at least k tokens.
The moderated server runs over the same engine as `tiny_server` (moderation off), so the two can be
compared output for output.
"""

from __future__ import annotations

import json

import pytest

from npu_serve.server.moderation import MODERATION_ERROR_BODY
from tests.e2e.conftest import LiveServer, sse_lines

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PROMPT = "Once upon a time, in a small village,"
MSGS = [{"role": "user", "content": "Tell me about the weather."}]
INPUT_TERMS = ["forbidden topic", "机密"]
CLEAN_TERM = "a-term-the-model-never-writes"  # long, so the hold-back is long too



def completion_body(**kw):
    body = {"model": "tiny", "prompt": PROMPT, "temperature": 1.0, "seed": 1, "max_tokens": 24, "ignore_eos": True}
    body.update(kw)
    return body


def chat_body(**kw):
    body = {"model": "tiny", "messages": MSGS, "temperature": 1.0, "seed": 7, "max_tokens": 24, "ignore_eos": True}
    body.update(kw)
    return body


def stream_events(server, path, body) -> list[dict]:
    r = server.post(path, body)
    assert r.status_code == 200, r.text
    payloads = sse_lines(r.content)
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def completion_text(events) -> str:
    return "".join(c["text"] for e in events for c in e["choices"])


def chat_text(events) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


def term_over_tokens(tokens: list[str], span: int, taken: list[str], start: int) -> str:
    """A term made of `span` whole consecutive pieces from index `start` on, free of edge whitespace
    (the word list strips lines), whose first occurrence in the whole text is where it was cut out."""
    text = "".join(tokens).lower()
    for k in range(start, len(tokens) - span + 1):
        piece = "".join(tokens[k:k + span])
        offset = len("".join(tokens[:k]))
        if (all(t.strip() == t for t in (tokens[k], tokens[k + span - 1])) and piece.strip() == piece
                and text.find(piece.lower()) == offset and piece not in taken):
            return piece
    pytest.skip(f"no clean {span}-piece term in the tiny model's output: {tokens!r}")


@pytest.fixture(scope="module")
def probe(tiny_server):
    """The unmoderated outputs the terms are cut from, as the pieces the stream delivered them in."""
    events = stream_events(tiny_server, COMPLETIONS, completion_body(stream=True))
    pieces = [c["text"] for e in events for c in e["choices"] if c["text"]]
    assert "".join(pieces) == tiny_server.post(COMPLETIONS, completion_body()).json()["choices"][0]["text"]
    events = stream_events(tiny_server, CHAT, chat_body(stream=True))
    chat_pieces = [c["delta"]["content"] for e in events for c in e["choices"] if c["delta"].get("content")]
    assert "".join(chat_pieces) == tiny_server.post(CHAT, chat_body()).json()["choices"][0]["message"]["content"]
    return pieces, chat_pieces


@pytest.fixture(scope="module")
def terms(probe):
    tokens, chat_tokens = probe
    taken: list[str] = []
    by_span = {}
    for span in (2, 3, 5):
        # Start the search past the first few tokens so some clean text precedes each term.
        term = term_over_tokens(tokens, span, taken, start=2 + span)
        taken.append(term)
        by_span[span] = term
    chat_term = term_over_tokens(chat_tokens, 3, taken, start=3)
    return by_span, chat_term


@pytest.fixture(scope="module")
def moderated(tiny_server, terms, tmp_path_factory):
    """A second live server over the same engine, with a word list holding one term at a time
    (so each test sees exactly which term cut the stream)."""
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    servers = {}
    words_dir = tmp_path_factory.mktemp("moderation")

    def get(term: str) -> LiveServer:
        if term not in servers:
            path = words_dir / f"words{len(servers)}.txt"
            path.write_text("# test list\n\n" + "\n".join([*INPUT_TERMS, term]) + "\n", encoding="utf-8")
            config = ServerConfig(served_model_name="tiny", moderation_words=str(path), warmup=False)
            servers[term] = LiveServer(build_app(tiny_server.engine, config)).start()
        return servers[term]

    yield get
    for s in servers.values():
        s.stop()


# --- input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_input_refused_with_maas_body(moderated, terms, stream):
    server = moderated(terms[0][2])
    bad_chat = chat_body(stream=stream, messages=[{"role": "system", "content": "be nice"},
                                                   {"role": "user", "content": "Tell me the FORBIDDEN Topic now"}])
    for path, body in ((CHAT, bad_chat), (COMPLETIONS, completion_body(stream=stream, prompt="关于机密文件"))):
        r = server.post(path, body)
        assert r.status_code == 403
        assert r.json() == MODERATION_ERROR_BODY
        assert r.headers["content-type"].startswith("application/json")
    assert server.wait_kv_free()[0] == 0


def test_input_clean_passes(moderated):
    server = moderated(CLEAN_TERM)
    assert server.post(COMPLETIONS, completion_body(prompt="Tell me about secret plans")).status_code == 200


# --- output, non-streaming --------------------------------------------------------------------------

def test_output_match_non_streaming_is_403(moderated, terms):
    by_span, chat_term = terms
    r = moderated(by_span[3]).post(COMPLETIONS, completion_body())
    assert r.status_code == 403 and r.json() == MODERATION_ERROR_BODY
    r = moderated(chat_term).post(CHAT, chat_body())
    assert r.status_code == 403 and r.json() == MODERATION_ERROR_BODY


# --- output, streaming --------------------------------------------------------------------------------

@pytest.mark.parametrize("span", [2, 3, 5])
def test_term_split_across_tokens_never_streamed(moderated, tiny_server, probe, terms, span):
    term = terms[0][span]
    full = "".join(probe[0])
    server = moderated(term)
    events = stream_events(server, COMPLETIONS, completion_body(stream=True, stream_options={"include_usage": True}))
    *body, usage_chunk = events
    sent = ""
    for e in body:  # every prefix the client ever held
        for c in e["choices"]:
            sent += c["text"]
            assert term.lower() not in sent.lower()
    assert full.startswith(sent) and len(sent) <= full.lower().index(term.lower())
    assert body[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert all(c["finish_reason"] is None for e in body[:-1] for c in e["choices"])
    assert usage_chunk["choices"] == [] and 0 < usage_chunk["usage"]["completion_tokens"] <= 24
    assert server.wait_kv_free()[0] == 0  # the aborted request's blocks are back


def test_chat_stream_cut_with_content_filter_usage_then_done(moderated, probe, terms):
    chat_term = terms[1]
    full = "".join(probe[1])
    server = moderated(chat_term)
    events = stream_events(server, CHAT, chat_body(stream=True, stream_options={"include_usage": True}))
    *body, usage_chunk = events
    assert body[0]["choices"][0]["delta"] == {"role": "assistant"}
    sent = chat_text(body)
    assert chat_term.lower() not in sent.lower() and full.startswith(sent)
    end = body[-1]["choices"][0]
    assert end["finish_reason"] == "content_filter"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] < 24
    u = usage_chunk["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert server.wait_kv_free()[0] == 0


@pytest.mark.parametrize("span", [2, 5])
def test_all_text_before_the_term_is_sent(moderated, probe, terms, span):
    term = terms[0][span]
    full = "".join(probe[0])
    events = stream_events(moderated(term), COMPLETIONS, completion_body(stream=True))
    assert completion_text(events) == full[:full.lower().index(term.lower())]


def test_all_chat_text_before_the_term_is_sent(moderated, probe, terms):
    full = "".join(probe[1])
    events = stream_events(moderated(terms[1]), CHAT, chat_body(stream=True))
    assert chat_text(events) == full[:full.lower().index(terms[1].lower())]


def test_clean_stream_identical_with_moderation_on(moderated, tiny_server):
    """Moderation on, nothing matches: the same text byte for byte, the same ending and usage."""
    on = moderated(CLEAN_TERM)
    body = completion_body(stream=True, stream_options={"include_usage": True})
    off_events = stream_events(tiny_server, COMPLETIONS, body)
    off_text = completion_text(off_events)
    assert CLEAN_TERM not in off_text and len(off_text) > len(CLEAN_TERM)
    on_events = stream_events(on, COMPLETIONS, body)
    assert completion_text(on_events).encode() == off_text.encode()
    assert on_events[-1] == off_events[-1] | {"id": on_events[-1]["id"], "created": on_events[-1]["created"]}
    assert on_events[-2]["choices"][0]["finish_reason"] == off_events[-2]["choices"][0]["finish_reason"] == "length"
    chat_off = stream_events(tiny_server, CHAT, chat_body(stream=True))
    chat_on = stream_events(on, CHAT, chat_body(stream=True))
    assert chat_text(chat_on).encode() == chat_text(chat_off).encode()
    assert chat_on[-1]["choices"][0]["finish_reason"] == chat_off[-1]["choices"][0]["finish_reason"] == "length"
    assert on.wait_kv_free()[0] == 0
