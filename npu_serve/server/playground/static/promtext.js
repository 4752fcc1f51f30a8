// Reading the Prometheus text exposition of /metrics, and percentiles from histogram buckets.
// Pure functions (no DOM): tests/e2e/test_playground_browser_e2e.py runs them in the browser
// against prometheus_client's own parser and a Python estimate of the same quantiles.
"use strict";

const PromText = (() => {
  const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$/;
  const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;

  function number(text) {
    if (text === "+Inf" || text === "Inf") return Infinity;
    if (text === "-Inf") return -Infinity;
    return Number(text); // NaN for "NaN" and for garbage alike
  }

  function unescape(value) {
    return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }

  function labels(text) {
    const out = {};
    if (!text) return out;
    LABEL.lastIndex = 0;
    let m;
    while (LABEL.lastIndex < text.length && (m = LABEL.exec(text)) !== null) out[m[1]] = unescape(m[2]);
    return out;
  }

  // name -> [{labels, value}], every sample line in order (comments and blank lines skipped).
  function parse(text) {
    const samples = new Map();
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line || line.startsWith("#")) continue;
      const m = LINE.exec(line);
      if (!m) continue;
      if (!samples.has(m[1])) samples.set(m[1], []);
      samples.get(m[1]).push({ labels: labels(m[2]), value: number(m[3]) });
    }
    return samples;
  }

  // The sum over every label set of `name` (NaN if absent): one model per server, but be exact.
  function sum(samples, name) {
    const list = samples.get(name);
    if (!list || !list.length) return NaN;
    return list.reduce((acc, s) => acc + s.value, 0);
  }

  // Labels of the first sample of `name` (an info gauge's facts), or null.
  function info(samples, name) {
    const list = samples.get(name);
    return list && list.length ? list[0].labels : null;
  }

  // Cumulative buckets of histogram `name` as [[le, count], ...] sorted by le (+Inf last),
  // summed over label sets that differ in anything but `le`.
  function buckets(samples, name) {
    const byLe = new Map();
    for (const s of samples.get(name + "_bucket") || []) {
      const le = number(s.labels.le);
      byLe.set(le, (byLe.get(le) || 0) + s.value);
    }
    return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
  }

  // now - then, bucket by bucket (the observations between two scrapes); null after a counter
  // reset (a restarted server) or when the bucket layouts differ.
  function diff(now, then) {
    if (!then || now.length !== then.length) return null;
    const out = [];
    for (let i = 0; i < now.length; i++) {
      if (now[i][0] !== then[i][0] || now[i][1] < then[i][1]) return null;
      out.push([now[i][0], now[i][1] - then[i][1]]);
    }
    return out;
  }

  // The q-quantile (0..1) as Prometheus' histogram_quantile estimates it: find the bucket that
  // holds the rank, interpolate linearly inside it (from 0 for the first bucket); a rank in the
  // +Inf bucket gives the largest finite bound. NaN without observations.
  function quantile(q, cumulative) {
    if (!cumulative.length) return NaN;
    const total = cumulative[cumulative.length - 1][1];
    if (!(total > 0)) return NaN;
    const rank = q * total;
    let lower = 0, below = 0;
    for (const [le, count] of cumulative) {
      if (count >= rank && count > below) {
        if (le === Infinity) return lower;
        return lower + (le - lower) * (rank - below) / (count - below);
      }
      lower = le === Infinity ? lower : le;
      below = count;
    }
    return lower;
  }

  function count(cumulative) {
    return cumulative.length ? cumulative[cumulative.length - 1][1] : 0;
  }

  return { parse, sum, info, buckets, diff, quantile, count };
})();
