// What the chat and the dashboard share: the API key, calls that carry it, error text, SSE reading.
//
// The key lives in sessionStorage only (gone when the tab closes; never localStorage, never a
// cookie), and every call the page makes sends it as `Authorization: Bearer`, like any client:
// the page gets no way around the server's key check.
"use strict";

const Api = (() => {
  const STORAGE = "npu-serve.api-key";

  function key() {
    return sessionStorage.getItem(STORAGE) || "";
  }

  function setKey(value) {
    if (value) sessionStorage.setItem(STORAGE, value);
    else sessionStorage.removeItem(STORAGE);
    window.dispatchEvent(new Event("npu-key-changed"));
  }

  // fetch(path) with the key; `path` is relative to the page, so the MaaS prefix carries over.
  function call(path, options = {}) {
    const headers = Object.assign({}, options.headers);
    if (key()) headers.Authorization = "Bearer " + key();
    return fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  }

  // "401: Invalid API key." from the flat error body (vLLM's `message`), MaaS moderation's
  // `error_msg`, or an in-band stream error's `error.message`; else the status and raw text.
  function messageOf(status, text) {
    try {
      const body = JSON.parse(text);
      const message = body.message || body.error_msg || (body.error && body.error.message);
      if (message) return `${status}: ${message}`;
    } catch (e) {
      // not JSON: fall through
    }
    return `${status}${text ? ": " + text.slice(0, 300) : ""}`;
  }

  async function errorMessage(response) {
    return messageOf(response.status, await response.text());
  }

  // The `data:` payloads of a text/event-stream body, as they arrive.
  async function* sse(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  }

  return { key, setKey, call, errorMessage, messageOf, sse };
})();

document.addEventListener("DOMContentLoaded", () => {
  const field = document.getElementById("api-key");
  field.value = Api.key();
  // On every keystroke, so a click on Send right after typing already uses the new key.
  field.addEventListener("input", () => Api.setKey(field.value.trim()));
});
