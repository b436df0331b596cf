// One run: its status and timings, the incoming event, each attempt's request and response (or,
// once retention purged them, when that happened), and a retry of a failed run.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { get, post } from "../api.js";
import { FormError, Notice, PageTitle, Status, Time, useInterval } from "../ui.js";

export const UNDER_WAY = new Set(["queued", "running"]);

/** How long a run took (or "—" while it has not finished), in the units a person reads. */
export function duration(start, finish) {
  if (!start || !finish) return "—";
  const ms = Math.max(0, new Date(finish) - new Date(start));
  if (ms < 1000) return `${ms} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds % 60)} s`;
}

/** JSON text indented for reading; any other text as it came. */
function pretty(text) {
  if (text === null || text === undefined || text === "") return "";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function headerLines(headers) {
  const pairs = Array.isArray(headers) ? headers.map((h) => [h.name, h.value]) : Object.entries(headers ?? {});
  return pairs.map(([name, value]) => `${name}: ${value}`).join("\n");
}

function Block({ label, text, empty = "None" }) {
  return html`<h5>${label}</h5>${text ? html`<pre>${text}</pre>` : html`<p class="empty">${empty}</p>`}`;
}

function Request({ request }) {
  return html`<div>
    <h4>Request</h4>
    <p><code>${request.method} ${request.url}</code></p>
    <${Block} label="Headers" text=${headerLines(request.headers)} />
    <${Block} label="Body" text=${pretty(request.body)} empty="No body" />
  </div>`;
}

function Response({ attempt }) {
  if (!attempt.response_status) {
    return html`<div><h4>Response</h4>
      <p>No response${attempt.error ? html`: <span class="field-error">${attempt.error}</span>` : ""}</p></div>`;
  }
  const body = attempt.response_body_encoding === "base64" ? attempt.response_body : pretty(attempt.response_body);
  return html`<div>
    <h4>Response</h4>
    <p>Status <strong>${attempt.response_status}</strong></p>
    ${attempt.error && html`<p class="field-error">${attempt.error}</p>`}
    <${Block} label="Headers" text=${headerLines(attempt.response_headers)} />
    <${Block} label=${attempt.response_body_encoding === "base64" ? "Body (binary, base64)" : "Body"}
      text=${body} empty="No body" />
    ${attempt.response_truncated && html`<p class="hint">The body was cut: only its beginning is kept.</p>`}
  </div>`;
}

function Attempt({ attempt }) {
  return html`<section class="card attempt" aria-label=${`Attempt ${attempt.number}`}>
    <h3>Attempt ${attempt.number}</h3>
    <p><${Time} value=${attempt.start_time} /> · took ${duration(attempt.start_time, attempt.finish_time)}</p>
    <div class="split">
      <${Request} request=${attempt.request ?? {}} />
      <${Response} attempt=${attempt} />
    </div>
  </section>`;
}

function Facts({ run }) {
  return html`<dl class="facts">
    <dt>Status</dt><dd><${Status} value=${run.status} /></dd>
    <dt>Trigger</dt><dd>${run.trigger}</dd>
    <dt>Created</dt><dd><${Time} value=${run.create_time} /></dd>
    <dt>Started</dt><dd><${Time} value=${run.start_time} /></dd>
    <dt>Finished</dt><dd><${Time} value=${run.finish_time} /></dd>
    <dt>Duration</dt><dd>${duration(run.start_time, run.finish_time)}</dd>
    <dt>Attempts</dt><dd>${run.attempt_count}</dd>
    ${run.next_attempt_time && UNDER_WAY.has(run.status) &&
      html`<dt>Next attempt</dt><dd><${Time} value=${run.next_attempt_time} /></dd>`}
    ${run.error && html`<dt>Error</dt><dd>${run.error}</dd>`}
  </dl>`;
}

function Details({ run }) {
  if (run.details_purged) {
    return html`<${Notice}>Details purged by retention${run.details_purge_time
      ? html` on <${Time} value=${run.details_purge_time} />` : ""}: the incoming event and the
      attempts' requests and responses are kept 7 days.<//>`;
  }
  return html`<h2>Incoming event</h2>
    ${run.event == null ? html`<p class="empty">This run had no incoming event.</p>`
      : html`<pre>${JSON.stringify(run.event, null, 2)}</pre>`}
    <h2>Attempts</h2>
    ${run.attempts.length === 0
      ? html`<p class="empty">${UNDER_WAY.has(run.status) ? "No attempt yet: the run is waiting for its turn." : "No attempt was made."}</p>`
      : run.attempts.map((attempt) => html`<${Attempt} key=${attempt.number} attempt=${attempt} />`)}`;
}

function Retry({ id }) {
  const { route } = useLocation();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const retry = async () => {
    setBusy(true);
    setError("");
    try {
      const { run_id: next } = await post(`/v1/runs/${id}/retry`);
      route(`/runs/${next}`);
    } catch (failure) {
      setError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="actions">
      <button type="button" onClick=${retry} disabled=${busy}>Retry</button>
      <span class="hint">Runs the same event again, as a new run.</span>
    </div>
    <${FormError} error=${error} />`;
}

function useConnectionName(id) {
  const [name, setName] = useState("");
  useEffect(() => {
    setName("");
    if (!id) return;
    get(`/v1/connections/${id}`).then((c) => setName(c.name)).catch(() => {});
  }, [id]);
  return name;
}

export function Run({ id }) {
  const [run, setRun] = useState(null);
  const [error, setError] = useState("");
  // After a retry the page shows another run: an answer about the one before is dropped.
  const shown = useRef(id);
  shown.current = id;
  const load = useCallback(async () => {
    try {
      const detail = await get(`/v1/runs/${id}`);
      if (shown.current !== id) return;
      setRun(detail);
      setError("");
    } catch (failure) {
      setError(failure.message);
    }
  }, [id]);
  useEffect(() => {
    setRun(null);
    load();
  }, [load]);
  const live = Boolean(run && UNDER_WAY.has(run.status));
  useInterval(load, 2, live);
  const name = useConnectionName(run?.connection_id);
  const title = name ? `Run of ${name}` : "Run";
  if (!run) {
    return html`<${PageTitle}>Run<//>
      ${error ? html`<${Notice} kind="error">${error}<//>` : html`<p class="loading" role="status">Loading…</p>`}
      <p><a href="/activity">Back to activity</a></p>`;
  }
  return html`<p><a href="/activity">← Activity</a></p>
    <${PageTitle} title=${title}>Run of ${name
      ? html`<a href=${`/connections/${run.connection_id}`}>${name}</a>` : "a connection"}<//>
    <p class="hint" aria-live="polite">${live ? "This run is under way: this page updates by itself." : ""}</p>
    <${Facts} run=${run} />
    ${run.status === "failed" && html`<${Retry} id=${run.run_id} />`}
    <${Details} run=${run} />`;
}
