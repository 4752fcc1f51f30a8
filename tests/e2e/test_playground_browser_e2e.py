"""The playground in headless Chromium against the real default model (smol_server: keys on, qwen3
reasoning parser): streamed chat with usage, reasoning shown apart, the stop button freeing the
request's KV blocks, the 401 message, the dashboard moving under a scripted load, its /metrics
parsing against prometheus_client, a phone-width window under the MaaS prefix. Screenshots:
tests/e2e/browser.py says where."""

from __future__ import annotations

import math
import re
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.browser import browser, screenshot  # noqa: F401 - `browser` is a fixture
from tests.e2e.conftest import API_KEY, SMOL_NAME
from tests.e2e.test_maas_clients_e2e import FEW_SHOT

pytestmark = pytest.mark.slow
PREFIX = "/v1/infers/8b7f4a52-5c1d-4e3f-9a0b-2c6d8e1f3a47"
# Records every distinct text of the newest answer as it changes, to see the stream arrive in pieces.
WATCH = """() => {
  window.__states = [];
  new MutationObserver(() => {
    const all = document.querySelectorAll('.msg.assistant .content');
    const text = all.length ? all[all.length - 1].textContent : '';
    if (text && window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture
def page(browser, smol_server):  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    # Console errors too (a Content-Security-Policy refusal lands there), but not Chromium's note on
    # each 401 the wrong-key test asks for.
    p.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text and errors.append(m.text))
    p.goto(smol_server.url + "/")
    yield p
    context.close()
    assert not errors, errors  # no script error, nothing the page's policy refused


def controls(page, key: str | None = API_KEY, **values) -> None:
    if key is not None:
        page.fill("#api-key", key)
    for name, value in values.items():
        if name == "ignore_eos":
            page.set_checked("#p-ignore_eos", value)
        else:
            page.fill(f"#p-{name}", str(value))


def ask(page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def last_answer(page):
    return page.locator(".msg.assistant").last


def wait_done(page, timeout_s: float = 60) -> str:
    page.wait_for_function("() => { const a = document.querySelectorAll('.msg.assistant');"
                           " return a.length && a[a.length - 1].dataset.state !== 'streaming'; }",
                           timeout=timeout_s * 1000)
    return last_answer(page).get_attribute("data-state")


def chat(server, messages, **params) -> dict:
    body = {"model": SMOL_NAME, "messages": messages, **params}
    return server.post("/v1/chat/completions", body).json()


def test_chat_streams_in_pieces_and_shows_usage_and_reasoning(page, smol_server):
    controls(page, temperature=0, max_tokens=40)
    page.evaluate(WATCH)
    prompt = "Write two sentences about the sea."
    ask(page, prompt)
    assert wait_done(page) == "done"
    states = page.evaluate("window.__states")
    final = last_answer(page).locator(".content").inner_text()
    # Greedy, so the page must show exactly what the API answers to the same request.
    expected = chat(smol_server, [{"role": "user", "content": prompt}], temperature=0, max_tokens=40)
    assert final == expected["choices"][0]["message"]["content"]
    assert len(states) >= 4, states  # arrived in pieces, each a continuation of the one before
    assert all(b.startswith(a) for a, b in zip(states, states[1:])) and states[-1] == final
    usage = expected["usage"]
    meta = last_answer(page).locator(".meta").inner_text()
    assert f"finish_reason: {expected['choices'][0]['finish_reason']}" in meta
    assert (f"usage: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion = "
            f"{usage['total_tokens']} tokens") in meta
    # The tokens/s series is a number from the first answer on (a server's first scrape lists no
    # histogram lines at all: that is 0 tokens, not NaN).
    page.wait_for_timeout(1500)
    points = page.evaluate("Dashboard.points()")
    assert points and all(math.isfinite(p["v"]) for p in points) and any(p["v"] > 0 for p in points), points
    screenshot(page, "desktop-chat")

    # A thinking answer: the model imitates tagged examples (test_maas_clients_e2e), the qwen3 parser
    # splits them, the page shows the reasoning in its own folded block and the answer apart.
    page.click("#clear")
    page.evaluate("turns => window.PlaygroundChat.history.push(...turns)", FEW_SHOT[:-1])
    controls(page, key=None, max_tokens=30)
    ask(page, FEW_SHOT[-1]["content"])
    assert wait_done(page) == "done"
    message = chat(smol_server, FEW_SHOT, temperature=0, max_tokens=30)["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]  # the premise
    reasoning = last_answer(page).locator("details.reasoning")
    assert reasoning.is_visible() and reasoning.get_attribute("open") is None  # folded once the answer began
    assert reasoning.locator(".reasoning-text").text_content() == message["reasoning_content"]
    assert last_answer(page).locator(".content").inner_text() == message["content"]
    reasoning.locator("summary").click()
    assert reasoning.locator(".reasoning-text").is_visible()
    screenshot(page, "desktop-reasoning")


def aborted(server) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "npu_serve:request_success_total" and s.labels["finished_reason"] == "abort")


def test_stop_ends_a_long_answer_and_frees_its_blocks(page, smol_server):
    aborted_before = aborted(smol_server)
    controls(page, max_tokens=900, ignore_eos=True)
    ask(page, "Count from one to a thousand.")
    page.wait_for_function("() => (document.querySelector('.msg.assistant .content') || {}).textContent?.length > 40",
                           timeout=60_000)
    assert smol_server.engine.stats().running == 1  # still generating: far from 900 tokens
    page.wait_for_function("() => document.getElementById('m-running').textContent === '1'", timeout=10_000)
    screenshot(page, "desktop-stop-running")
    page.click("#stop")
    assert wait_done(page, 10) == "stopped"
    assert last_answer(page).locator(".meta").inner_text().startswith("stopped")
    assert smol_server.wait_kv_free(10)[0] == 0  # every KV block of the request is free again
    assert smol_server.engine.stats().running == 0
    assert aborted(smol_server) == aborted_before + 1  # the server saw the client go: finish_reason abort
    page.wait_for_function("() => document.getElementById('m-running').textContent === '0'", timeout=10_000)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_a_wrong_key_shows_the_401_message_and_the_key_stays_in_this_tab(page, smol_server):
    controls(page, key="sk-not-a-key", max_tokens=4)
    ask(page, "Hello")
    assert wait_done(page) == "error"
    assert last_answer(page).locator(".error").inner_text() == "401: Invalid API key."
    page.fill("#api-key", "")
    ask(page, "Hello")
    assert wait_done(page) == "error"
    assert last_answer(page).locator(".error").inner_text().startswith("401: Missing API key")
    # The key is kept for this tab only: sessionStorage, never localStorage; back after a reload.
    page.fill("#api-key", API_KEY)
    page.reload()
    assert page.input_value("#api-key") == API_KEY
    assert page.evaluate("() => localStorage.length") == 0
    other = page.context.browser.new_context().new_page()
    other.goto(smol_server.url + "/")
    assert other.input_value("#api-key") == ""
    other.context.close()


def _load(server, stop: threading.Event, sent: list[int]) -> None:
    from openai import OpenAI

    client = OpenAI(api_key=API_KEY, base_url=server.url + "/v1")
    while not stop.is_set():
        stream = client.chat.completions.create(model=SMOL_NAME, max_tokens=16, stream=True,
                                                messages=[{"role": "user", "content": "Tell me about rivers."}])
        for _ in stream:
            pass
        sent.append(1)


def test_the_dashboard_moves_under_load(page, smol_server):
    controls(page)
    page.wait_for_function("() => document.getElementById('f-model').textContent !== '–'", timeout=10_000)
    facts = {k: page.inner_text(f"#f-{k}") for k in ("model", "device", "dtype", "version")}
    version = requests.get(smol_server.url + "/version", timeout=10).json()
    assert facts == {"model": SMOL_NAME, "device": "cpu", "dtype": "float32", "version": version["version"]}
    chart_before = page.evaluate("() => document.getElementById('tps-chart').toDataURL()")

    stop, sent, seen = threading.Event(), [], {"running": set(), "tps": 0.0, "kv": set()}
    threads = [threading.Thread(target=_load, args=(smol_server, stop, sent)) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (seen["tps"] > 0 and max(seen["running"], default=0) >= 1
                                                    and len(sent) >= 2):
            seen["running"].add(int(page.inner_text("#m-running").replace("–", "0")))
            seen["kv"].add(page.inner_text("#m-kv-blocks"))
            tps = page.inner_text("#m-tps")
            seen["tps"] = max(seen["tps"], float(tps) if tps != "–" else 0.0)
            page.wait_for_timeout(200)
        screenshot(page, "desktop-dashboard-load")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert seen["tps"] > 0 and max(seen["running"]) >= 1 and len(seen["kv"]) >= 2, seen
    points = page.evaluate("Dashboard.points()")
    assert any(p["v"] > 0 for p in points) and all(math.isfinite(p["v"]) for p in points)
    assert page.evaluate("() => document.getElementById('tps-chart').toDataURL()") != chart_before
    # The latency table counts the requests of the last 60 s: at least those the load finished.
    page.wait_for_function(f"() => +document.querySelector('#lat-ttft td:nth-child(5)').textContent >= {len(sent)}"
                           " && document.getElementById('lat-window').textContent === 'last 60 s'", timeout=10_000)
    assert re.fullmatch(r"[\d.]+ m?s", page.inner_text("#lat-ttft td:nth-child(2)"))
    assert re.fullmatch(r"[\d.]+ m?s", page.inner_text("#lat-itl td:nth-child(4)"))
    _check_promtext(page, smol_server)


def _prometheus_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile (promql/quantile.go, bucketQuantile), written out in Python."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, (_, c) in enumerate(buckets) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, count = (0.0, buckets[b][1]) if b == 0 else (buckets[b - 1][0], buckets[b][1] - buckets[b - 1][1])
    if b > 0:
        rank -= buckets[b - 1][1]
    return start + (buckets[b][0] - start) * rank / count


def _check_promtext(page, server) -> None:
    """promtext.js, in the page's own browser, against prometheus_client's parser and the quantile above."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for hist in ("npu_serve:time_to_first_token_seconds", "npu_serve:inter_token_latency_seconds"):
        py = sorted((float(s.labels["le"]), s.value) for s in fams[hist].samples if s.name.endswith("_bucket"))
        got = page.evaluate("([t, h]) => { const s = PromText.parse(t); const b = PromText.buckets(s, h);"
                            " return {b: b.map(([le, c]) => [String(le), c]),"
                            " q: [0.5, 0.9, 0.99].map(q => PromText.quantile(q, b))}; }", [text, hist])
        assert [(float(le.replace("Infinity", "inf")), c) for le, c in got["b"]] == py
        for q, value in zip([0.5, 0.9, 0.99], got["q"]):
            assert value == pytest.approx(_prometheus_quantile(q, py)), (hist, q)
    got = page.evaluate("t => { const s = PromText.parse(t); return [PromText.sum(s, 'npu_serve:kv_cache_blocks_total'),"
                        " PromText.info(s, 'npu_serve:engine_info')]; }", text)
    assert got[0] == fams["npu_serve:kv_cache_blocks_total"].samples[0].value
    assert got[1] == fams["npu_serve:engine_info"].samples[0].labels
    # Hand-made cases: interpolation inside a bucket, the +Inf bucket, a window (diff) and a reset.
    cases = page.evaluate("""() => {
      const b = [[0.1, 0], [0.2, 10], [0.4, 20], [Infinity, 22]];
      return [PromText.quantile(0.25, b), PromText.quantile(0.75, b), PromText.quantile(0.99, b),
              PromText.quantile(0.5, [[1, 0], [Infinity, 0]]),
              PromText.diff([[1, 5], [Infinity, 9]], [[1, 2], [Infinity, 3]]),
              PromText.diff([[1, 1], [Infinity, 1]], [[1, 2], [Infinity, 3]]),
              PromText.parse('a{x="q\\\\"uo\\\\\\\\te",le="+Inf"} 3 1700000000\\nb 1e-3').get('a')[0]];
    }""")
    assert cases[0] == pytest.approx(0.155) and cases[1] == pytest.approx(0.2 + 0.2 * 6.5 / 10)
    assert cases[2] == 0.4 and math.isnan(cases[3])  # no observations: NaN, shown as "–"
    assert cases[4] == [[1, 3], [math.inf, 6]] and cases[5] is None
    assert cases[6] == {"labels": {"x": 'q"uo\\te', "le": "+Inf"}, "value": 3}


def test_phone_width_under_the_maas_prefix(browser, smol_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, color_scheme="dark")  # the dark theme gets its screenshot too
    page = context.new_page()
    api_calls: list[str] = []
    page.on("request", lambda r: api_calls.append(r.url) if r.resource_type == "fetch" else None)
    page.goto(smol_server.url + PREFIX)  # the bare prefix: redirected to PREFIX + "/"
    assert page.url == smol_server.url + PREFIX + "/"
    assert page.locator("#settings").get_attribute("open") is None  # folded on a phone
    page.click("#settings summary")
    controls(page, temperature=0, max_tokens=12)
    ask(page, "What is the capital of France?")
    assert wait_done(page) == "done"
    assert "usage:" in last_answer(page).locator(".meta").inner_text()
    page.wait_for_function("() => document.getElementById('f-model').textContent !== '–'", timeout=10_000)
    assert page.inner_text("#dash-status") == ""  # /metrics under the prefix, with the key
    page.wait_for_function("() => document.getElementById('m-running').textContent === '0'", timeout=10_000)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, width  # nothing sticks out sideways
    box = page.locator("#send").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    dash = page.locator("#dashboard").bounding_box()
    assert dash["y"] > page.locator("#chat").bounding_box()["y"]  # one column: chat first, then the dashboard
    assert api_calls and all(u.startswith(smol_server.url + PREFIX + "/") for u in api_calls), api_calls
    assert {u.rsplit("/", 1)[1] for u in api_calls} >= {"models", "completions", "metrics"}
    screenshot(page, "phone-prefix", full_page=True)
    context.close()
