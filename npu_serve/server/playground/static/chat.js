// The chat: streams `v1/chat/completions` (relative, so the MaaS prefix carries over) exactly as a
// client would (stream + include_usage), shows reasoning_content apart in a collapsible block, the
// answer as it grows, then finish_reason and usage, or the error's message.
// Stop aborts the fetch: the server sees the disconnect and aborts the request, freeing its KV blocks.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NUMBERS = ["temperature", "top_p", "top_k", "max_tokens", "presence_penalty", "frequency_penalty", "seed"];
  const history = []; // the conversation sent with each request: {role, content}
  let model = null; // from v1/models, fetched once
  let controller = null; // the running request's AbortController

  // The sampling fields as typed; an empty (or unreadable) field is left out, so the server's
  // default applies, and a value the server refuses comes back as its 400 message.
  function sampling() {
    const body = {};
    for (const name of NUMBERS) {
      const text = $("p-" + name).value.trim();
      if (text !== "" && Number.isFinite(Number(text))) body[name] = Number(text);
    }
    const stop = $("p-stop").value.split("\n").filter((s) => s.length > 0);
    if (stop.length) body.stop = stop;
    if ($("p-ignore_eos").checked) body.ignore_eos = true;
    return body;
  }

  async function servedModel() {
    if (model) return model;
    const response = await Api.call("v1/models");
    if (!response.ok) throw new Error(await Api.errorMessage(response));
    model = (await response.json()).data[0].id;
    return model;
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text) el.textContent = text; // text only: model output is never parsed as HTML
    return el;
  }

  // One assistant turn in the page: reasoning (collapsible), answer, a meta line, an error line.
  function turn() {
    const box = element("div", "msg assistant");
    box.dataset.state = "streaming";
    const reasoning = element("details", "reasoning");
    reasoning.open = true;
    reasoning.hidden = true;
    reasoning.append(element("summary", "", "reasoning"));
    const thought = element("div", "reasoning-text");
    reasoning.append(thought);
    const answer = element("div", "content");
    const meta = element("div", "meta");
    const error = element("p", "error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    box.append(reasoning, answer, meta, error);
    $("messages").append(box);
    const scroll = () => ($("messages").scrollTop = $("messages").scrollHeight);
    return {
      think(text) { reasoning.hidden = false; thought.textContent += text; scroll(); },
      say(text) {
        if (!answer.textContent && !reasoning.hidden) reasoning.open = false; // thinking done: fold it
        answer.textContent += text;
        scroll();
      },
      end(state, line) { box.dataset.state = state; meta.textContent = line; scroll(); },
      fail(message) { box.dataset.state = "error"; error.hidden = false; error.textContent = message; scroll(); },
    };
  }

  function usageLine(finish, usage, seconds) {
    const parts = [`finish_reason: ${finish || "–"}`];
    if (usage) {
      parts.push(`usage: ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ` +
                 `${usage.total_tokens} tokens`);
      if (seconds > 0) parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tokens/s`);
    }
    parts.push(`${seconds.toFixed(2)} s`);
    return parts.join(" · ");
  }

  function busy(on) {
    $("send").disabled = on;
    $("stop").disabled = !on;
  }

  async function send(text) {
    $("chat-hint").hidden = true;
    $("messages").append(element("div", "msg user", text));
    history.push({ role: "user", content: text });
    const view = turn();
    busy(true);
    controller = new AbortController();
    const started = performance.now();
    let answer = "", finish = null, usage = null;
    try {
      const system = $("p-system").value.trim();
      const body = Object.assign({
        model: await servedModel(),
        messages: (system ? [{ role: "system", content: system }] : []).concat(history),
        stream: true,
        stream_options: { include_usage: true },
      }, sampling());
      const response = await Api.call("v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) throw new Error(await Api.errorMessage(response));
      for await (const data of Api.sse(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(Api.messageOf(chunk.error.code, JSON.stringify(chunk.error)));
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.reasoning_content) view.think(delta.reasoning_content);
          if (delta.content) { answer += delta.content; view.say(delta.content); }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      view.end("done", usageLine(finish, usage, (performance.now() - started) / 1000));
    } catch (e) {
      if (e.name === "AbortError") {
        view.end("stopped", `stopped · ${((performance.now() - started) / 1000).toFixed(2)} s`);
      } else {
        view.fail(e.message);
      }
    } finally {
      controller = null;
      busy(false);
    }
    if (answer) history.push({ role: "assistant", content: answer });
    else history.pop(); // nothing came back: do not resend this turn with the next one
  }

  document.addEventListener("DOMContentLoaded", () => {
    const prompt = $("prompt");
    $("prompt-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = prompt.value.trim();
      if (!text || controller) return;
      prompt.value = "";
      send(text);
    });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("prompt-form").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => controller && controller.abort());
    $("clear").addEventListener("click", () => {
      if (controller) controller.abort();
      history.length = 0;
      $("messages").querySelectorAll(".msg").forEach((el) => el.remove());
      $("chat-hint").hidden = false;
    });
    // The conversation so far, for the console (and tests): push earlier turns to continue one.
    window.PlaygroundChat = { history };
    // Phones: the settings start folded, so the conversation gets the screen.
    if (window.matchMedia("(max-width: 700px)").matches) $("settings").open = false;
  });
})();
