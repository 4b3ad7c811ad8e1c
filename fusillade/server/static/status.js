// The status page's script (served as /status.js; no build step, no dependencies).
// Polls /status.json every few seconds and redraws the tables from it. The API key, when
// one is entered, stays in this tab's sessionStorage and goes out only as the
// Authorization header of those polls. Every value is set as text (textContent), never
// parsed as HTML: batch metadata is user input. The markup matches what the server
// renders (fusillade/server/status_html.py).
"use strict";

(function () {
  const KEY = "fusillade-status-key";
  const body = document.body;
  const pollMs = 1000 * (Number(body.dataset.pollSeconds) || 2);
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0;

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY);
    } catch (e) {
      return null; // storage disabled: the key lives as long as the form's value
    }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY, key);
      else sessionStorage.removeItem(KEY);
    } catch (e) {
      /* storage disabled */
    }
  }

  // "2026-01-01T12:00:00Z" -> "2026-01-01 12:00:00" (the headers say UTC)
  const shortTime = (time) => time.replace("T", " ").replace(/Z$/, "");

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function progressCell(row, c) {
    const done = c.completed + c.failed + c.canceled;
    const td = document.createElement("td");
    const bar = document.createElement("progress");
    bar.setAttribute("value", String(done));
    bar.setAttribute("max", String(Math.max(c.total, 1)));
    const label = document.createElement("span");
    label.className = "counts";
    label.textContent =
      `${done}/${c.total} done: ${c.completed} completed, ${c.failed} failed, ` +
      `${c.canceled} canceled, ${c.in_progress} in flight`;
    td.append(bar, " ", label);
    row.appendChild(td);
  }

  function fill(tableId, items, columns, emptyText, makeRow) {
    const tbody = $(tableId).tBodies[0];
    const rows = items.map(makeRow);
    if (rows.length === 0) {
      const row = document.createElement("tr");
      const td = cell(row, emptyText, "empty");
      td.colSpan = columns;
      rows.push(row);
    }
    tbody.replaceChildren(...rows);
  }

  function metadataText(metadata) {
    return Object.keys(metadata)
      .sort()
      .map((k) => `${k}=${metadata[k]}`)
      .join("; ");
  }

  function render(data) {
    fill("batches", data.batches, 7, "no batches", (b) => {
      const row = document.createElement("tr");
      row.dataset.id = b.id;
      cell(row, b.id);
      cell(row, b.status);
      cell(row, b.owner);
      cell(row, b.models.join(", "));
      cell(row, metadataText(b.metadata), "metadata");
      progressCell(row, b.counts);
      cell(row, shortTime(b.created_at));
      return row;
    });
    fill("models", data.models, 5, "no requests in flight", (m) => {
      const row = document.createElement("tr");
      row.dataset.model = m.model;
      for (const v of [m.model, m.in_flight, m.completed, m.failed, m.per_second]) cell(row, v);
      return row;
    });
    fill("errors", data.errors, 5, "no failures", (e) => {
      const row = document.createElement("tr");
      const status = e.status === null ? e.reason : e.status;
      for (const v of [shortTime(e.time), e.model, e.batch_id, status, e.message]) cell(row, v);
      return row;
    });
    $("scope").textContent = data.owner === null ? "every owner" : `owner ${data.owner}`;
    $("updated").textContent = shortTime(data.now);
    $("message").textContent = "";
    $("content").hidden = false;
    body.dataset.live = data.now;
  }

  function needKey(message) {
    $("content").hidden = true;
    for (const id of ["batches", "models", "errors"]) $(id).tBodies[0].replaceChildren();
    $("scope").textContent = "enter an API key to see its batches";
    $("message").textContent = message;
    delete body.dataset.live;
  }

  async function poll() {
    clearTimeout(timer);
    // A poll started before the key changed must not draw (or ask for a key) after it.
    const mine = ++generation;
    const key = storedKey();
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    try {
      const answer = await fetch("/status.json", { headers, cache: "no-store" });
      const data = answer.ok ? await answer.json() : null;
      if (mine !== generation) return;
      if (answer.status === 401) {
        if (key) storeKey(null);
        needKey(key ? "That key was refused." : "This page needs an API key.");
        return; // nothing to poll for until a key is entered
      }
      if (data === null) {
        $("message").textContent = `The server answered ${answer.status}; retrying.`;
      } else {
        render(data);
      }
    } catch (e) {
      if (mine !== generation) return;
      $("message").textContent = "The server does not answer; retrying.";
    }
    timer = setTimeout(poll, pollMs);
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key");
    storeKey(input.value.trim());
    input.value = "";
    poll();
  });
  $("forget").addEventListener("click", () => {
    storeKey(null);
    poll();
  });
  poll();
})();
