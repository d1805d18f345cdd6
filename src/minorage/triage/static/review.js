// minorage review: keyboard and mouse decisions, each saved at once to the case.
"use strict";
const KEYS = {m: "minor", a: "adult", n: "not_face", u: "unsure"};

function cards() { return Array.from(document.querySelectorAll(".card")); }

function select(card) {
  if (!card) return;
  cards().forEach(c => c.classList.toggle("selected", c === card));
  card.focus();
  card.scrollIntoView({block: "nearest"});
}

function selected() { return document.querySelector(".card.selected") || cards()[0]; }

function say(text) { document.getElementById("status").textContent = text; }

async function decide(card, decision) {
  const note = card.querySelector(".note").value;
  say("saving…");
  let response;
  try {
    response = await fetch(document.body.dataset.api, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({face: Number(card.dataset.face), decision: decision, note: note}),
    });
  } catch (err) {
    say("NOT saved: the review server cannot be reached (" + err + ")");
    return false;
  }
  const answer = await response.json();
  if (!response.ok) { say("NOT saved: " + answer.error); return false; }
  card.dataset.decision = decision;
  card.classList.add("done");
  card.querySelector(".decision").textContent = answer.label;
  const progress = document.getElementById("progress");
  progress.textContent = answer.reviewed.toLocaleString("en") + " of " + answer.total.toLocaleString("en") + " reviewed";
  say("saved: " + answer.label);
  return true;
}

function move(step) {
  const all = cards(), here = all.indexOf(selected());
  select(all[Math.min(all.length - 1, Math.max(0, here + step))]);
}

document.addEventListener("keydown", async event => {
  if (event.target.classList && event.target.classList.contains("note")) {
    if (event.key === "Escape" || event.key === "Enter") { event.preventDefault(); select(event.target.closest(".card")); }
    return;
  }
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const card = selected();
  if (!card) return;
  if (KEYS[event.key]) {
    event.preventDefault();
    if (await decide(card, KEYS[event.key])) move(1);
  } else if (event.key === "ArrowRight" || event.key === "j") { event.preventDefault(); move(1); }
  else if (event.key === "ArrowLeft" || event.key === "k") { event.preventDefault(); move(-1); }
  else if (event.key === "e") { event.preventDefault(); card.querySelector(".note").focus(); }
  else if (event.key === "Enter" && card.dataset.photo && !document.getElementById("photo")) { window.location = card.dataset.photo; }
  else if (event.key === "]" && document.getElementById("next")) { window.location = document.getElementById("next").href; }
  else if (event.key === "[" && document.getElementById("previous")) { window.location = document.getElementById("previous").href; }
});

document.addEventListener("click", event => {
  const card = event.target.closest(".card");
  if (!card) return;
  select(card);
  const button = event.target.closest("button[data-decision]");
  if (button) decide(card, button.dataset.decision);
});

document.addEventListener("DOMContentLoaded", () => select(cards()[0]));
