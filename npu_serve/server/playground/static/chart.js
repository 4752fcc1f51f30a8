// A small line chart on a <canvas>: the last `windowS` seconds of one series, drawn by the page
// itself (no chart library: the page loads nothing from elsewhere).
"use strict";

const LineChart = (() => {
  // The smallest of 1, 2, 5 x 10^k at or above v (a readable top for the y axis).
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function label(v) {
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1).replace(/\.0$/, "") : String(+v.toFixed(2));
  }

  // points: [{t: ms, v: number}], oldest first; now: ms. Sizes itself to its CSS box, sharp on
  // high-density (phone) screens.
  function draw(canvas, points, now, windowS) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const style = getComputedStyle(canvas);
    const ink = style.color, grid = style.getPropertyValue("--grid").trim() || "#ccc";
    const line = style.getPropertyValue("--line").trim() || ink;
    ctx.font = "11px system-ui, sans-serif";
    const left = 34, right = 6, top = 6, bottom = 16;
    const pw = w - left - right, ph = h - top - bottom;
    const visible = points.filter((p) => p.t >= now - windowS * 1000 && Number.isFinite(p.v));
    const top_ = niceCeil(Math.max(0, ...visible.map((p) => p.v)));

    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const f of [0, 0.5, 1]) {
      const y = top + ph * (1 - f);
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + pw, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(label(top_ * f), left - 4, y);
    }
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    ctx.fillText(`-${windowS} s`, left, h - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", left + pw, h - 3);

    if (visible.length < 2) return;
    const x = (t) => left + pw * (1 - (now - t) / (windowS * 1000));
    const y = (v) => top + ph * (1 - v / top_);
    ctx.strokeStyle = line;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    visible.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.stroke();
  }

  return { draw, niceCeil };
})();
