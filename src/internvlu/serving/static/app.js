// InternVL-U web UI: a plain client of the server's public OpenAI-compatible API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: "internvlu", history: [], gallery: [] };

// ---------------------------------------------------------------- API helpers
function headers(json = true) {
  const h = {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error ? body.error.message : JSON.stringify(body)}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// POST and read a server-sent-event stream; onEvent gets each parsed `data:` JSON object.
async function postStream(path, body, onEvent) {
  const isForm = body instanceof FormData;
  const response = await fetch(path, { method: "POST", headers: headers(!isForm), body: isForm ? body : JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        onEvent(event);
      }
    }
  }
}

function fileToDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function b64ToBlob(b64, type = "image/png") {
  const bytes = atob(b64);
  const array = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) array[i] = bytes.charCodeAt(i);
  return new Blob([array], { type });
}

function showThumbs(input, target) {
  target.replaceChildren();
  for (const file of input.files) {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = file.name;
    target.appendChild(img);
  }
}

// ---------------------------------------------------------------- status
async function refreshStatus() {
  try {
    const health = await (await fetch("/health")).json();
    $("health").textContent = health.status + (health.queue ? ` (queue ${health.queue})` : "");
    $("health").className = "badge " + (health.status === "ok" ? "ok" : "bad");
    const models = await fetch("/v1/models", { headers: headers(false) });
    if (models.ok) {
      const list = await models.json();
      state.model = list.data[0].id;
      $("model-name").textContent = "model: " + state.model;
    } else {
      $("model-name").textContent = models.status === 401 ? "enter the API key" : "model: ?";
    }
  } catch (err) {
    $("health").textContent = "offline";
    $("health").className = "badge bad";
  }
}

// ---------------------------------------------------------------- chat
function addMessage(role, text, images = []) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  for (const src of images) {
    const img = document.createElement("img");
    img.src = src;
    div.appendChild(img);
  }
  let thought = null;
  if (role === "assistant") {
    thought = document.createElement("details");
    thought.className = "thought";
    thought.open = true;
    thought.hidden = true;
    thought.innerHTML = "<summary>Thought</summary>";
    thought.appendChild(document.createElement("div"));
    div.appendChild(thought);
  }
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  div.appendChild(content);
  $("chat-log").appendChild(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return { div, content, thought };
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  const files = Array.from($("chat-images").files);
  if (!text && !files.length) return;
  showError("");
  const urls = await Promise.all(files.map(fileToDataURL));
  const parts = [...urls.map((url) => ({ type: "image_url", image_url: { url } })), { type: "text", text }];
  state.history.push({ role: "user", content: parts });
  addMessage("user", text, urls);
  $("chat-input").value = "";
  $("chat-images").value = "";
  $("chat-thumbs").replaceChildren();
  const think = $("chat-think").checked;
  const view = addMessage("assistant", "");
  view.div.classList.add("pending");
  $("chat-send").disabled = true;
  let answer = "";
  let reasoning = "";
  try {
    await postStream("/v1/chat/completions", {
      model: state.model, messages: state.history, stream: true, think,
      max_tokens: Number($("chat-max-tokens").value) || undefined,
    }, (chunk) => {
      const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
      if (delta.reasoning_content) {
        reasoning += delta.reasoning_content;
        view.thought.hidden = false;
        view.thought.lastChild.textContent = reasoning;
      }
      if (delta.content) {
        answer += delta.content;
        view.content.textContent = answer;
      }
    });
    if (think && !reasoning) {
      view.thought.hidden = false;
      view.thought.lastChild.textContent = "(the model answered without a separate thought)";
    }
    state.history.push({ role: "assistant", content: answer });
  } catch (err) {
    showError("Chat failed: " + err.message);
    state.history.pop();
  } finally {
    view.div.classList.remove("pending");
    view.div.classList.add("done");
    $("chat-send").disabled = false;
  }
}

// ---------------------------------------------------------------- images (create + edit)
function addToGallery(item, target) {
  state.gallery.unshift(item);
  $("gallery-count").textContent = String(state.gallery.length);
  for (const container of [target, $("gallery")]) {
    const card = document.createElement("div");
    card.className = "card";
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = item.prompt;
    const caption = document.createElement("div");
    caption.className = "prompt";
    caption.textContent = item.prompt;
    caption.title = item.prompt;
    const meta = document.createElement("div");
    meta.className = "muted";
    meta.textContent = `${item.mode} · ${item.size} · seed ${item.seed}`;
    const link = document.createElement("a");
    link.className = "download";
    link.href = item.url;
    link.download = `internvlu-${item.mode}-${item.seed}.png`;
    link.textContent = "Download PNG";
    card.append(img, caption, meta, link);
    container.prepend(card);
  }
}

async function runImages(kind, path, body) {
  const progress = $(`${kind}-progress`);
  const status = $(`${kind}-status`);
  const thoughtBox = $(`${kind}-thought-box`);
  const button = $(`${kind}-go`);
  showError("");
  progress.value = 0;
  progress.max = 1;
  status.textContent = "queued…";
  thoughtBox.hidden = true;
  button.disabled = true;
  let made = 0;
  try {
    await postStream(path, body, (event) => {
      if (event.type === "internvlu.phase") {
        status.textContent = event.phase + "…";
      } else if (event.type === "internvlu.progress") {
        progress.max = event.total;
        progress.value = event.step;
        status.textContent = `step ${event.step} / ${event.total}`;
      } else if (event.type && event.type.endsWith(".completed")) {
        made += 1;
        if (event.revised_prompt) {
          thoughtBox.hidden = false;
          $(`${kind}-thought`).textContent = event.revised_prompt;
        }
        const url = URL.createObjectURL(b64ToBlob(event.b64_json));
        const prompt = body instanceof FormData ? body.get("prompt") : body.prompt;
        addToGallery({ url, prompt, seed: event.seed, size: event.size, mode: kind === "gen" ? "generate" : "edit" },
          $(`${kind}-results`));
      }
    });
    progress.value = progress.max;
    status.textContent = `done: ${made} image${made === 1 ? "" : "s"}`;
  } catch (err) {
    status.textContent = "failed";
    showError((kind === "gen" ? "Generation" : "Edit") + " failed: " + err.message);
  } finally {
    button.disabled = false;
  }
}

function optionalInt(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function sendGenerate(event) {
  event.preventDefault();
  const prompt = $("gen-prompt").value.trim();
  if (!prompt) return showError("Write a prompt first.");
  runImages("gen", "/v1/images/generations", {
    model: state.model, prompt, stream: true, size: $("gen-size").value.trim() || "auto",
    n: optionalInt("gen-n"), num_inference_steps: optionalInt("gen-steps"), seed: optionalInt("gen-seed"),
    think: $("gen-think").checked,
  });
}

function sendEdit(event) {
  event.preventDefault();
  const prompt = $("edit-prompt").value.trim();
  const files = Array.from($("edit-images").files);
  if (!files.length) return showError("Choose an input image first.");
  if (!prompt) return showError("Write the edit instruction first.");
  const form = new FormData();
  for (const file of files) form.append("image[]", file, file.name);
  form.append("prompt", prompt);
  form.append("model", state.model);
  form.append("stream", "true");
  form.append("size", $("edit-size").value.trim() || "auto");
  form.append("think", $("edit-think").checked ? "true" : "false");
  for (const [field, id] of [["num_inference_steps", "edit-steps"], ["seed", "edit-seed"]]) {
    const value = optionalInt(id);
    if (value !== undefined) form.append(field, String(value));
  }
  runImages("edit", "/v1/images/edits", form);
}

// ---------------------------------------------------------------- wiring
function selectTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === "tab-" + name);
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("internvlu-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("internvlu-api-key", $("api-key").value.trim());
    refreshStatus();
  });
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => selectTab(button.dataset.tab));
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) sendChat(e); });
  $("chat-images").addEventListener("change", () => showThumbs($("chat-images"), $("chat-thumbs")));
  $("chat-clear").addEventListener("click", () => { state.history = []; $("chat-log").replaceChildren(); });
  $("gen-form").addEventListener("submit", sendGenerate);
  $("edit-form").addEventListener("submit", sendEdit);
  $("edit-images").addEventListener("change", () => showThumbs($("edit-images"), $("edit-thumbs")));
  refreshStatus();
  setInterval(refreshStatus, 10000);
});
