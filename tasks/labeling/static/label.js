// The labeling page: one task at a time, ranked by clicks or number keys. Every text from the server is set
// with textContent, so a response containing markup shows its characters and never runs.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let name = sessionStorage.getItem("labeler") || "";
  let task = null;
  let picked = []; // response indices, best first
  let busy = false;

  function show(section) {
    for (const id of ["name-section", "task-section", "done-section"]) $(id).hidden = id !== section;
  }

  function status(message) {
    $("status").textContent = message;
  }

  function setProgress(p) {
    $("progress").textContent = `Done: ${p.done} · Left: ${p.remaining}`;
  }

  async function call(url, options) {
    const res = await fetch(url, options);
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    return body;
  }

  async function loadNext() {
    status("");
    const body = await call(`/api/next?labeler=${encodeURIComponent(name)}`);
    setProgress(body.progress);
    task = body.task;
    picked = [];
    if (!task) {
      show("done-section");
      return;
    }
    show("task-section");
    $("who").textContent = name;
    $("prompt").textContent = task.prompt;
    $("kmax").textContent = String(task.responses.length);
    const list = $("responses");
    list.replaceChildren();
    task.responses.forEach((r, pos) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "response";
      button.dataset.index = String(r.index);
      const key = document.createElement("span");
      key.className = "key";
      key.textContent = String(pos + 1);
      const rank = document.createElement("span");
      rank.className = "rank";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = r.text;
      button.append(key, rank, text);
      button.addEventListener("click", () => pick(r.index));
      li.append(button);
      list.append(li);
    });
    render();
    list.querySelector("button").focus();
  }

  function render() {
    const k = task ? task.responses.length : 0;
    for (const button of document.querySelectorAll("#responses .response")) {
      const at = picked.indexOf(Number(button.dataset.index));
      const badge = button.querySelector(".rank");
      badge.textContent = at < 0 ? "" : `#${at + 1}`;
      button.setAttribute("aria-pressed", at < 0 ? "false" : "true");
      const key = button.querySelector(".key").textContent;
      button.setAttribute("aria-label", `Response ${key}` + (at < 0 ? ", not ranked" : `, ranked ${at + 1} of ${k}`));
    }
    $("submit").disabled = picked.length !== k || k === 0;
  }

  function pick(index) {
    if (!task || picked.includes(index)) return;
    picked.push(index);
    const rest = task.responses.map((r) => r.index).filter((i) => !picked.includes(i));
    if (rest.length === 1) picked.push(rest[0]); // the last one has only one place left
    render();
    if (picked.length === task.responses.length) $("submit").focus();
  }

  function undo() {
    if (!task) return;
    const k = task.responses.length;
    picked.pop();
    if (picked.length === k - 1) picked.pop(); // the automatic last place goes with the pick that caused it
    render();
  }

  async function send(action) {
    if (!task || busy) return;
    if (action === "rank" && picked.length !== task.responses.length) return;
    busy = true;
    try {
      const payload = { task_id: task.id, labeler: name, action: action };
      if (action === "rank") payload.ranking = picked;
      await call("/api/submit", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload),
      });
      await loadNext();
    } catch (e) {
      status(`Not saved: ${e.message}`);
    } finally {
      busy = false;
    }
  }

  $("name-form").addEventListener("submit", (event) => {
    event.preventDefault();
    name = $("name").value.trim();
    if (!name) return;
    sessionStorage.setItem("labeler", name);
    loadNext().catch((e) => status(e.message));
  });
  $("change-name").addEventListener("click", () => {
    sessionStorage.removeItem("labeler");
    task = null;
    show("name-section");
    $("name").focus();
  });
  $("submit").addEventListener("click", () => send("rank"));
  $("skip").addEventListener("click", () => send("skip"));
  $("flag").addEventListener("click", () => send("flag"));
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (event) => {
    if (!task || $("task-section").hidden || event.target.tagName === "INPUT") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const n = Number(event.key);
    if (Number.isInteger(n) && n >= 1 && n <= task.responses.length) {
      event.preventDefault();
      pick(task.responses[n - 1].index);
    } else if (event.key === "Backspace") {
      event.preventDefault();
      undo();
    } else if (event.key === "Enter" && event.target.tagName !== "BUTTON") {
      event.preventDefault();
      send("rank");
    }
  });

  if (name) {
    loadNext().catch((e) => status(e.message));
  } else {
    show("name-section");
    $("name").focus();
  }
})();
