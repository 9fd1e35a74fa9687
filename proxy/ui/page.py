"""The status page's HTML: rendered once from a snapshot (it works without script: its forms post
and come back), then kept current by its inline script from /ui/events. Every value from the
server goes into the page escaped here or as text by the script: model names come from users."""

from __future__ import annotations

import time
from html import escape

from proxy.activity import Record
from proxy.ui.snapshot import GpuView, RunnerView, Snapshot
from supervisor.pull.inflight import PullStatus
from supervisor.runners.process import OUTPUT_LINES
from supervisor.version import VERSION

_MB = 1 << 20


def _mb(n: int) -> str:
    return f"{n / _MB:.{1 if n < 10 * _MB else 0}f} MB"


def _left(s: int) -> str:
    if s >= 3600:
        return f"{s // 3600}h {s // 60 % 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


# The script's runnerFields and pullFields say the same as these two, for its updates.
def _runner_fields(r: RunnerView) -> dict[str, str]:
    return {"name": r.name, "kind": r.kind, "state": r.state, "rss": _mb(r.rss), "processor": r.processor,
            "context": str(r.context),
            "slots": f"{r.busy} / {r.slots}", "waiting": str(r.waiting),
            "keep_alive": r.keep_alive or _left(r.expires_in or 0), "log": "\n".join(r.log)}


def _gpus_text(gpus: list[GpuView]) -> str:
    if not gpus:
        return "none: models run on the CPU"
    return "; ".join(f"{g.name} {g.description}: {_mb(g.used)} of ours, {_mb(g.free)} free of {_mb(g.total)}"
                     for g in gpus)


def _pull_fields(p: PullStatus) -> dict[str, str]:
    return {"name": p.name, "status": "failed" if p.error else p.status,
            "bytes": f"{_mb(p.completed)} / {_mb(p.total)}" if p.total else "", "error": p.error}


def _request_cells(r: Record) -> list[str]:
    tps = f"{r.tokens_per_second:.1f}" if r.tokens_per_second is not None else ""
    return [time.strftime("%H:%M:%S", time.localtime(r.time)), r.route, r.model, str(r.status),
            f"{r.seconds * 1000:.0f} ms", f"{r.prompt_tokens} / {r.generated_tokens}", tps]


_RUNNER = """<article class="runner" data-key="{key}" data-state="{state}">\
<h3><span data-f="name">{name}</span> <small data-f="kind">{kind}</small> <span class="state" data-f="state">{state}\
</span></h3><dl>\
<dt>memory (RSS)</dt><dd data-f="rss">{rss}</dd>\
<dt>processor</dt><dd data-f="processor">{processor}</dd>\
<dt>context</dt><dd data-f="context">{context}</dd>\
<dt>slots busy</dt><dd data-f="slots">{slots}</dd>\
<dt>waiting</dt><dd data-f="waiting">{waiting}</dd>\
<dt>keep-alive</dt><dd class="countdown" data-f="keep_alive">{keep_alive}</dd></dl>\
<form class="unload" method="post" action="/ui/unload"><input type="hidden" name="model" value="{name}">\
<button>Unload</button></form>\
<details><summary>log (last {lines} lines)</summary><pre data-f="log">{log}</pre></details></article>"""

_PULL = """<li class="pull" data-key="{key}"><b data-f="name">{name}</b> \
<span data-f="status">{status}</span> <progress{progress}></progress> <span data-f="bytes">{bytes}</span> \
<span class="error" data-f="error">{error}</span></li>"""


def _runner(r: RunnerView | None) -> str:
    fields = _runner_fields(r) if r else dict.fromkeys(["name", "kind", "state", "rss", "processor", "context", "slots",
                                                         "waiting", "keep_alive", "log"], "")
    key = f"{r.name}|{r.kind}" if r else ""
    return _RUNNER.format(key=escape(key), lines=OUTPUT_LINES, **{k: escape(v) for k, v in fields.items()})


def _request_row(r: Record) -> str:
    return "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in _request_cells(r)) + "</tr>"


def _pull(p: PullStatus | None) -> str:
    fields = _pull_fields(p) if p else dict.fromkeys(["name", "status", "bytes", "error"], "")
    progress = ""
    if p and p.done:
        progress = " hidden"
    elif p and p.total:
        progress = f' max="{p.total}" value="{p.completed}"'
    return _PULL.format(key=p.id if p else "", progress=progress, **{k: escape(v) for k, v in fields.items()})


_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 0 1rem; color: #222; }
header { display: flex; align-items: baseline; gap: 1rem; }
#live { color: #777; }
.runner { border: 1px solid #ccc; border-radius: 6px; padding: 0.5rem 1rem; margin: 0.5rem 0; }
.runner h3 { margin: 0.2rem 0; }
.runner small { color: #666; font-weight: normal; }
.state { font-size: 0.8em; padding: 0 0.4em; border-radius: 4px; background: #dfd; }
[data-state=loading] .state { background: #ffd; }
dl { display: grid; grid-template-columns: repeat(6, auto); grid-auto-flow: column; grid-template-rows: auto auto;
     gap: 0 1.5rem; margin: 0.3rem 0; justify-content: start; }
dt { color: #666; font-size: 0.85em; } dd { margin: 0; font-variant-numeric: tabular-nums; }
.unload { margin: 0.3rem 0; }
pre { max-height: 20rem; overflow: auto; background: #f6f6f6; padding: 0.5rem; font-size: 12px; }
#runners:not(:empty) + .empty, #pulls:not(:empty) + .empty,
table:has(#recent:not(:empty)) + .empty { display: none; }
table:has(#recent:empty) { display: none; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.1rem 0.8rem 0.1rem 0; } th { color: #666; font-weight: normal; }
.empty { color: #777; }
.pull { margin: 0.3rem 0; } .pull progress { width: 14rem; vertical-align: middle; }
.error, #message { color: #b00; }
"""

_SCRIPT = """
"use strict";
const MB = 1048576;
const mb = n => (n / MB).toFixed(n < 10 * MB ? 1 : 0) + " MB";
const pad = n => String(n).padStart(2, "0");
const left = s => s >= 3600 ? `${Math.floor(s / 3600)}h ${pad(Math.floor(s / 60) % 60)}m`
  : s >= 60 ? `${Math.floor(s / 60)}m ${pad(s % 60)}s` : `${s}s`;
const runnerFields = r => ({name: r.name, kind: r.kind, state: r.state, rss: mb(r.rss), processor: r.processor,
  context: String(r.context),
  slots: `${r.busy} / ${r.slots}`, waiting: String(r.waiting), keep_alive: r.keep_alive || left(r.expires_in || 0),
  log: r.log.join("\\n")});
const pullFields = p => ({name: p.name, status: p.error ? "failed" : p.status,
  bytes: p.total ? `${mb(p.completed)} / ${mb(p.total)}` : "", error: p.error});
// The same cells as _request_cells.
const hms = t => new Date(t * 1000).toTimeString().slice(0, 8);
const requestCells = r => [hms(r.time), r.route, r.model, String(r.status), `${Math.round(r.seconds * 1000)} ms`,
  `${r.prompt_tokens} / ${r.generated_tokens}`, r.tokens_per_second === null ? "" : r.tokens_per_second.toFixed(1)];
const byId = id => document.getElementById(id);
// The same text as _gpus_text.
const gpusText = gpus => gpus.length ? gpus.map(g =>
  `${g.name} ${g.description}: ${mb(g.used)} of ours, ${mb(g.free)} free of ${mb(g.total)}`).join("; ")
  : "none: models run on the CPU";

function fill(el, fields) {
  for (const [f, v] of Object.entries(fields)) {
    const node = el.querySelector(`[data-f="${f}"]`);
    if (node.textContent !== v) node.textContent = v;
  }
}

// Keyed updates, not a rebuild: an open log, a focused button and a scroll position survive.
function sync(list, template, items, key, update) {
  const old = new Map([...list.children].map(el => [el.dataset.key, el]));
  items.forEach((item, i) => {
    const k = key(item);
    let el = old.get(k);
    if (el) old.delete(k);
    else { el = template.content.firstElementChild.cloneNode(true); el.dataset.key = k; }
    update(el, item);
    if (list.children[i] !== el) list.insertBefore(el, list.children[i] || null);
  });
  for (const el of old.values()) el.remove();
}

function render(s) {
  // Rows are rebuilt: they hold no state a reader could lose.
  byId("recent").replaceChildren(...s.recent.map(r => {
    const row = document.createElement("tr");
    for (const text of requestCells(r)) row.insertCell().textContent = text;
    return row;
  }));
  byId("pending").textContent = String(s.pending);
  byId("gpus").textContent = gpusText(s.gpus);
  sync(byId("runners"), byId("runner-row"), s.runners, r => `${r.name}|${r.kind}`, (el, r) => {
    fill(el, runnerFields(r));
    el.dataset.state = r.state;
    el.querySelector("input[name=model]").value = r.name;
  });
  sync(byId("pulls"), byId("pull-row"), s.pulls, p => String(p.id), (el, p) => {
    fill(el, pullFields(p));
    const bar = el.querySelector("progress");
    bar.hidden = p.done;
    if (p.total) { bar.max = p.total; bar.value = p.completed; } else bar.removeAttribute("value");
  });
}

const feed = new EventSource("/ui/events");
feed.addEventListener("message", event => { render(JSON.parse(event.data)); byId("live").textContent = "live"; });
feed.addEventListener("error", () => { byId("live").textContent = "reconnecting…"; });

// The forms work without script too (a 303 back here); with it, the page stays put and the feed shows the result.
document.addEventListener("submit", async event => {
  const form = event.target;
  event.preventDefault();
  byId("message").textContent = "";
  const response = await fetch(form.action, {method: "POST", body: new URLSearchParams(new FormData(form)),
                                             headers: {"X-Requested-With": "fetch"}});
  if (response.ok) { if (form.classList.contains("pull")) form.reset(); return; }
  const body = await response.json().catch(() => ({}));
  byId("message").textContent = body.error || `${response.status} ${response.statusText}`;
});
"""


def render(s: Snapshot, nonce: str) -> str:
    """The whole page as of `s`; `nonce` lets its own style and script past its Content-Security-Policy."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>llamagate status</title><link rel="icon" href="data:,"><style nonce="{nonce}">{_STYLE}</style></head>
<body><header><h1>llamagate</h1><span id="live">connecting…</span><small>{escape(VERSION)}</small></header>
<main>
<section><h2>Loaded models</h2>
<p>GPUs: <span id="gpus">{escape(_gpus_text(s.gpus))}</span></p>
<p>Requests queued for a load or a restart: <b id="pending">{s.pending}</b></p>
<div id="runners">{"".join(_runner(r) for r in s.runners)}</div><p class="empty">Nothing is loaded.</p>
</section>
<section><h2>Pulls</h2>
<form class="pull" method="post" action="/ui/pull"><input name="model" required aria-label="model to pull"
placeholder="a model to pull, e.g. smollm2:135m" size="40"> <button>Pull</button></form>
<p id="message" role="status"></p>
<ul id="pulls">{"".join(_pull(p) for p in s.pulls)}</ul><p class="empty">No pulls lately.</p>
</section>
<section id="recent-requests"><h2>Recent requests</h2>
<table><thead><tr><th>ended</th><th>route</th><th>model</th><th>status</th><th>took</th>
<th>tokens in / out</th><th>tokens/s</th></tr></thead>
<tbody id="recent">{"".join(_request_row(r) for r in s.recent)}</tbody></table>
<p class="empty">No inference requests yet.</p>
</section>
</main>
<template id="runner-row">{_runner(None)}</template><template id="pull-row">{_pull(None)}</template>
<script nonce="{nonce}">{_SCRIPT}</script>
</body></html>
"""
