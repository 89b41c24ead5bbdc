// The rating page. It knows items only by opaque assignment ids; the server decides what is shown.
// An answer is kept (in memory and localStorage) until the server confirms it, and re-sent when
// the server comes back: killing the server mid-answer loses nothing.
"use strict";

const KEY = "rating-key";
const PENDING = "rating-pending";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") || sessionStorage.getItem("rating-token") || "";
if (token) sessionStorage.setItem("rating-token", token);

let item = null;       // the current assignment as /api/next returned it
let answers = {};      // question id -> "left" | "right" | "same" | {left, right}
let questionIndex = 0;
let scoreDraft = [];   // score mode: the scores typed so far for the current question
let shownAt = 0;
let busy = false;

function headers(json) {
  const h = {};
  const key = localStorage.getItem(KEY);
  if (key) h["X-Rater-Key"] = key;
  if (token) h["X-Study-Token"] = token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function show(state) {
  for (const id of ["welcome", "rating", "done"]) $(id).hidden = id !== state;
  document.body.dataset.state = state;
}

function status(text) { $("status").textContent = text || ""; }

async function api(method, path, body) {
  const response = await fetch(path, {method, headers: headers(body !== undefined), credentials: "same-origin",
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  let data = {};
  try { data = await response.json(); } catch (e) { data = {}; }
  return {status: response.status, data};
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function start(name) {
  const {status: code, data} = await api("POST", "/api/rater", {name});
  if (code !== 200) { status(data.error || "could not start"); return; }
  localStorage.setItem(KEY, data.key);
  await next();
}

async function next() {
  busy = true;
  try {
    if (!(await flushPending())) return;
    let result;
    for (;;) {
      try { result = await api("GET", "/api/next"); } catch (e) { result = null; }
      if (result && result.status < 500) break;
      status("The server is not reachable; retrying…");
      await sleep(1000);
    }
    status("");
    if (result.status === 401) { localStorage.removeItem(KEY); show("welcome"); return; }
    const data = result.data;
    updateProgress(data.answered, data.total);
    if (data.done) { stopVideos(); show("done"); return; }
    render(data);
  } finally {
    busy = false;
  }
}

function updateProgress(answered, total) {
  $("progress").max = Math.max(total, 1);
  $("progress").value = answered;
  $("progress-text").textContent = answered >= total ? `${total} of ${total} done`
    : `Pair ${answered + 1} of ${total}`;
}

function render(data) {
  item = data;
  answers = {};
  questionIndex = 0;
  scoreDraft = [];
  shownAt = performance.now();
  $("prompt").textContent = data.prompt;
  $("pairwise-buttons").hidden = data.mode !== "pairwise";
  $("score-buttons").hidden = data.mode !== "score";
  loadVideos(data.videos.left, data.videos.right);
  showQuestion();
  show("rating");
}

function showQuestion() {
  const questions = item.questions;
  const q = questions[questionIndex];
  const prefix = questions.length > 1 ? `(${questionIndex + 1}/${questions.length}) ` : "";
  $("question").textContent = prefix + (item.mode === "score" ? `${q.text} Score each video from 1 to 10.` : q.text);
  $("undo-hint").hidden = questionIndex === 0;
  for (const b of document.querySelectorAll(".score-row button")) {
    const side = b.parentElement.dataset.side;
    b.classList.toggle("chosen", Number(b.textContent) === (side === "left" ? scoreDraft[0] : scoreDraft[1]));
  }
}

// -- videos: both load, start together, loop in step (the right one follows the left) ----------
const left = () => $("video-left");
const right = () => $("video-right");

function loadVideos(leftUrl, rightUrl) {
  const l = left(), r = right();
  let ready = 0;
  const go = () => {
    ready += 1;
    if (ready < 2) return;
    l.currentTime = 0; r.currentTime = 0;
    l.play().catch(() => {}); r.play().catch(() => {});
  };
  l.oncanplay = () => { l.oncanplay = null; go(); };
  r.oncanplay = () => { r.oncanplay = null; go(); };
  l.src = leftUrl; r.src = rightUrl;
}

function stopVideos() {
  for (const v of [left(), right()]) { v.pause(); v.removeAttribute("src"); v.load(); }
}

function keepInStep() {
  const l = left(), r = right();
  if (!l.paused && !r.paused && Math.abs(l.currentTime - r.currentTime) > 0.08 && l.currentTime < r.duration) {
    r.currentTime = l.currentTime;
  }
  requestAnimationFrame(keepInStep);
}
requestAnimationFrame(keepInStep);

// -- answering ------------------------------------------------------------------------------------
function choose(value) {
  if (busy || !item || document.body.dataset.state !== "rating") return;
  answers[item.questions[questionIndex].id] = value;
  questionIndex += 1;
  scoreDraft = [];
  if (questionIndex < item.questions.length) { showQuestion(); return; }
  submit();
}

function undo() {
  if (busy || !item) return;
  if (item.mode === "score" && scoreDraft.length) { scoreDraft.pop(); showQuestion(); return; }
  if (questionIndex === 0) return;
  questionIndex -= 1;
  delete answers[item.questions[questionIndex].id];
  showQuestion();
}

function typeScore(value) {
  if (busy || !item) return;
  scoreDraft.push(value);
  showQuestion();
  if (scoreDraft.length === 2) choose({left: scoreDraft[0], right: scoreDraft[1]});
}

async function submit() {
  const payload = {assignment: item.assignment, answers,
                   elapsed_ms: Math.max(0, Math.round(performance.now() - shownAt))};
  localStorage.setItem(PENDING, JSON.stringify(payload));
  await next();  // sends the pending answer first, then loads the next pair
}

// Send the kept answer until the server has it. True when there is nothing (left) to send.
async function flushPending() {
  const raw = localStorage.getItem(PENDING);
  if (!raw) return true;
  const payload = JSON.parse(raw);
  for (;;) {
    let result = null;
    try { result = await api("POST", "/api/answer", payload); } catch (e) { result = null; }
    if (result && result.status === 200) break;
    if (result && result.status === 409) break;  // saved by an earlier try whose reply was lost, or stale
    if (result && result.status === 401) { localStorage.removeItem(PENDING); localStorage.removeItem(KEY);
                                           show("welcome"); return false; }
    if (result && result.status >= 400 && result.status < 500) {
      localStorage.removeItem(PENDING);
      status(`Answer not accepted: ${result.data.error || result.status}`);
      return true;
    }
    status("The server is not reachable; your answer is kept and will be sent when it is back…");
    await sleep(1000);
  }
  localStorage.removeItem(PENDING);
  status("");
  return true;
}

document.addEventListener("keydown", (event) => {
  if (document.body.dataset.state !== "rating" || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "Backspace") { event.preventDefault(); undo(); return; }
  if (!item) return;
  if (item.mode === "pairwise") {
    const choice = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "0": "same",
                    "ArrowDown": "same"}[event.key];
    if (choice) { event.preventDefault(); choose(choice); }
  } else if (/^[0-9]$/.test(event.key)) {
    event.preventDefault();
    typeScore(event.key === "0" ? 10 : Number(event.key));
  }
});

for (const button of document.querySelectorAll("#pairwise-buttons button")) {
  button.addEventListener("click", () => choose(button.dataset.choice));
}
for (const row of document.querySelectorAll(".score-row")) {
  for (let value = 1; value <= 10; value += 1) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = String(value);
    b.addEventListener("click", () => {
      if (!item) return;
      // A click sets that side's score whatever was typed: left is scoreDraft[0], right [1].
      const index = row.dataset.side === "left" ? 0 : 1;
      if (index === 1 && scoreDraft.length === 0) { status("Score the left video first."); return; }
      scoreDraft = scoreDraft.slice(0, index);
      typeScore(value);
    });
    row.appendChild(b);
  }
}

$("name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start($("name").value);
});

if (localStorage.getItem(KEY)) { next(); } else { show("welcome"); }
