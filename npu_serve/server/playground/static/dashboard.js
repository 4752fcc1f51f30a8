// The dashboard: polls `metrics` (relative: /metrics, or /v1/infers/<id>/metrics under the prefix)
// once a second with the page's key, and shows what an operator looks at first.
//
// - running / waiting requests and KV cache use: gauges, as scraped;
// - output tokens/s: the growth of the TTFT + inter-token histogram counts between two scrapes.
//   Those grow by one per token as tokens are produced (a request's first token in TTFT, every later
//   one in inter-token), while npu_serve:generation_tokens_total grows only when a request ends, which
//   would show a long answer as one spike at its end. (With n > 1 only the longest choice counts.)
// - TTFT and inter-token percentiles over the last 60 s: bucket counts now minus those of the oldest
//   scrape in the window, then Prometheus' histogram_quantile estimate (promtext.js); "since start"
//   (the cumulative buckets) when the window saw none;
// - model, device, dtype, version, context: the labels of npu_serve:engine_info.
// A 401 (a missing or wrong key with --metrics-require-key, or any keyless call under the prefix)
// pauses the polling until the key changes, so a keyless page does not fill the refusal counter.
"use strict";

const Dashboard = (() => {
  const POLL_MS = 1000, WINDOW_S = 60;
  const TTFT = "npu_serve:time_to_first_token_seconds", ITL = "npu_serve:inter_token_latency_seconds";
  const scrapes = []; // {t, tokens, ttft, itl}: the last WINDOW_S seconds of scrapes
  const points = []; // {t, v}: output tokens/s between consecutive scrapes
  let paused = false, timer = null;
  const $ = (id) => document.getElementById(id);

  function fmtSeconds(s) {
    if (!Number.isFinite(s)) return "–";
    return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(2)} s`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function latencyRow(rowId, cumulative, base) {
    const window = PromText.diff(cumulative, base);
    const useWindow = window && PromText.count(window) > 0;
    const b = useWindow ? window : cumulative;
    const cells = $(rowId).querySelectorAll("td");
    [0.5, 0.9, 0.99].forEach((q, i) => (cells[i].textContent = fmtSeconds(PromText.quantile(q, b))));
    cells[3].textContent = String(PromText.count(b));
    return useWindow;
  }

  // Observations of a histogram; prometheus_client writes no line for a labelled histogram that
  // never observed anything (a server that has not answered yet): that is 0, not unknown.
  function observed(samples, name) {
    const n = PromText.sum(samples, name + "_count");
    return Number.isFinite(n) ? n : 0;
  }

  function show(samples, now) {
    const running = PromText.sum(samples, "npu_serve:num_requests_running");
    const waiting = PromText.sum(samples, "npu_serve:num_requests_waiting");
    const usage = PromText.sum(samples, "npu_serve:kv_cache_usage_perc");
    setText("m-running", Number.isFinite(running) ? String(running) : "–");
    setText("m-waiting", Number.isFinite(waiting) ? String(waiting) : "–");
    setText("m-kv", Number.isFinite(usage) ? `${(usage * 100).toFixed(1)} %` : "–");
    const used = PromText.sum(samples, "npu_serve:kv_cache_blocks_used");
    const total = PromText.sum(samples, "npu_serve:kv_cache_blocks_total");
    setText("m-kv-blocks", Number.isFinite(total) ? `${used} / ${total} blocks` : "");

    const scrape = {
      t: now,
      tokens: observed(samples, TTFT) + observed(samples, ITL),
      ttft: PromText.buckets(samples, TTFT),
      itl: PromText.buckets(samples, ITL),
    };
    const prev = scrapes[scrapes.length - 1];
    if (prev && scrape.tokens < prev.tokens) scrapes.length = 0; // the server restarted: start over
    else if (prev) {
      points.push({ t: now, v: (scrape.tokens - prev.tokens) / ((now - prev.t) / 1000) });
    }
    scrapes.push(scrape);
    while (scrapes.length > 1 && scrapes[0].t < now - WINDOW_S * 1000) scrapes.shift();
    while (points.length && points[0].t < now - (WINDOW_S + 5) * 1000) points.shift();
    const last = points[points.length - 1];
    setText("m-tps", last ? last.v.toFixed(1) : "–");
    LineChart.draw($("tps-chart"), points, now, WINDOW_S);

    const base = scrapes[0] === scrape ? null : scrapes[0];
    const inWindow = latencyRow("lat-ttft", scrape.ttft, base && base.ttft);
    latencyRow("lat-itl", scrape.itl, base && base.itl);
    setText("lat-window", inWindow ? "last 60 s" : "since start");

    const facts = PromText.info(samples, "npu_serve:engine_info") || {};
    setText("f-model", facts.model_name || "–");
    setText("f-device", facts.device || "–");
    setText("f-dtype", facts.dtype || "–");
    setText("f-version", facts.version || "–");
    setText("f-context", facts.max_model_len ? `${facts.max_model_len} tokens, block ${facts.block_size}` : "–");
  }

  // One chain of polls; a key change starts a new chain (`chain` tells a stale answer to stop).
  let chain = 0;

  async function poll(mine) {
    timer = null;
    try {
      const response = await Api.call("metrics");
      if (mine !== chain) return;
      if (!response.ok) {
        setText("dash-status", await Api.errorMessage(response));
        paused = response.status === 401;
      } else {
        const text = await response.text();
        setText("dash-status", "");
        show(PromText.parse(text), Date.now());
      }
    } catch (e) {
      setText("dash-status", `metrics unreachable: ${e.message}`);
    }
    if (!paused && mine === chain) timer = setTimeout(() => poll(mine), POLL_MS);
  }

  function restart(delay) {
    paused = false;
    if (timer !== null) clearTimeout(timer);
    const mine = ++chain;
    timer = setTimeout(() => poll(mine), delay);
  }

  document.addEventListener("DOMContentLoaded", () => {
    window.addEventListener("npu-key-changed", () => restart(300)); // once the typing settles
    window.addEventListener("resize", () => LineChart.draw($("tps-chart"), points, Date.now(), WINDOW_S));
    restart(0);
  });

  // For tests and curious operators (the console): copies, read-only.
  return { points: () => points.slice(), scrapes: () => scrapes.length };
})();
