// Connections: the list, a new one, one connection (edit, webhook URL, pause, run now, delete).
import { useCallback, useEffect, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { del, get, patch, post } from "../api.js";
import { ConfirmButton, FormError, Notice, PageTitle, Pager, Status, Time, useInterval, usePaged } from "../ui.js";
import { ConnectionForm, formValues } from "./connection-form.js";
import { RunNow, SigningSecret, WebhookUrl } from "./connection-parts.js";

/** How a connection is started, in words ("Schedule: every 300 s"). */
export function triggerText(trigger) {
  if (trigger.type === "webhook") return "Webhook";
  if (trigger.type === "manual") return "Manual";
  return trigger.cron ? `Schedule: ${trigger.cron} (UTC)` : `Schedule: every ${trigger.every_seconds} s`;
}

function LastRun({ run }) {
  if (run === undefined) return "—";
  if (run === null) return "never";
  return html`<a href=${`/runs/${run.id}`}><${Status} value=${run.status} /></a>
    ${" "}<${Time} value=${run.finish_time ?? run.create_time} />`;
}

function ConnectionRow({ connection }) {
  return html`<tr>
    <td data-label="Name"><a href=${`/connections/${connection.id}`}>${connection.name}</a></td>
    <td data-label="Status"><${Status} value=${connection.status} /></td>
    <td data-label="Trigger">${triggerText(connection.trigger)}</td>
    <td data-label="Last run"><${LastRun} run=${connection.last_run} /></td>
    <td data-label="Failures in a row">${connection.consecutive_failures}</td>
  </tr>`;
}

export function ConnectionList() {
  const list = usePaged("/v1/connections");
  const empty = !list.loading && !list.error && list.items.length === 0;
  return html`<${PageTitle}>Connections<//>
    <p class="actions"><a class="button" href="/connections/new">New connection</a></p>
    ${list.error && html`<${Notice} kind="error">${list.error}<//>`}
    ${empty
      ? html`<div class="card empty-state">
          <p>You have no connections yet. A connection takes each lead your form sends and delivers
            it to your CRM or any other API.</p>
          <p><a href="/connections/new">New connection</a></p>
        </div>`
      : html`<div class="table-wrap"><table>
          <caption class="visually-hidden">Your connections</caption>
          <thead><tr>
            <th scope="col">Name</th><th scope="col">Status</th><th scope="col">Trigger</th>
            <th scope="col">Last run</th><th scope="col">Failures in a row</th>
          </tr></thead>
          <tbody>${list.items.map((c) => html`<${ConnectionRow} key=${c.id} connection=${c} />`)}</tbody>
        </table></div>`}
    ${list.loading && html`<p class="loading" role="status">Loading…</p>`}
    <${Pager} list=${list} />`;
}

const UNDER_WAY = new Set(["queued", "running"]);

// A new webhook URL travels from the page that made it to the connection's page in memory only:
// taken once, so it is gone after a reload or when the person comes back later.
const madeUrls = new Map();

function takeMadeUrl(id) {
  const url = madeUrls.get(id) ?? null;
  madeUrls.delete(id);
  return url;
}

export function ConnectionNew() {
  const { route } = useLocation();
  const create = async (body) => {
    const created = await post("/v1/connections", body);
    if (created.webhook_url) madeUrls.set(created.id, created.webhook_url);
    route(`/connections/${created.id}`);
  };
  return html`<${PageTitle}>New connection<//>
    <p><a href="/connections">Back to connections</a></p>
    <${ConnectionForm} initial=${formValues(null)} onSave=${create} submitLabel="Create connection" />`;
}

function Facts({ connection }) {
  return html`<dl class="facts card">
    <dt>Status</dt>
    <dd><${Status} value=${connection.status} />${connection.pause_reason && ` — ${connection.pause_reason}`}</dd>
    <dt>Trigger</dt><dd>${triggerText(connection.trigger)}</dd>
    <dt>Last run</dt><dd><${LastRun} run=${connection.last_run} /></dd>
    <dt>Failures in a row</dt><dd>${connection.consecutive_failures}</dd>
    <dt>Created</dt><dd><${Time} value=${connection.create_time} /></dd>
    <dt>Changed</dt><dd><${Time} value=${connection.update_time} /></dd>
  </dl>`;
}

function PauseButton({ connection, onChange }) {
  const [error, setError] = useState("");
  const paused = connection.status === "paused";
  const toggle = async () => {
    setError("");
    try {
      onChange(await patch(`/v1/connections/${connection.id}`, { status: paused ? "active" : "paused" }));
    } catch (failure) {
      setError(failure.message);
    }
  };
  return html`<button type="button" class="secondary" onClick=${toggle}>${paused ? "Resume" : "Pause"}</button>
    <${FormError} error=${error} />`;
}

function Manage({ connection, onChange }) {
  const { route } = useLocation();
  const remove = async () => {
    await del(`/v1/connections/${connection.id}`);
    route("/connections");
  };
  return html`<div class="actions">
    <${PauseButton} connection=${connection} onChange=${onChange} />
    <${ConfirmButton} label="Delete connection" question=${`Delete “${connection.name}”?`}
      confirmLabel="Delete" onConfirm=${remove}>
      <p>Its webhook URL stops working at once. Past runs stay in the activity until they expire.</p>
    <//>
  </div>`;
}

export function ConnectionDetail({ id }) {
  const [connection, setConnection] = useState(null);
  const [error, setError] = useState("");
  const [saved, setSaved] = useState(false);
  const [webhookUrl, setWebhookUrl] = useState(() => takeMadeUrl(id));
  const load = useCallback(
    () => get(`/v1/connections/${id}`).then(setConnection, (failure) => setError(failure.message)),
    [id],
  );
  useEffect(() => {
    load();
  }, [load]);
  // While its newest run is under way, its outcome is fetched again until it is known.
  useInterval(load, 2, UNDER_WAY.has(connection?.last_run?.status));

  if (error) return html`<${PageTitle}>Connection<//><${Notice} kind="error">${error}<//>
    <p><a href="/connections">Back to connections</a></p>`;
  if (!connection) return html`<${PageTitle}>Connection<//><p class="loading" role="status">Loading…</p>`;

  const update = async (body) => {
    setSaved(false);
    setConnection(await patch(`/v1/connections/${id}`, body));
    setSaved(true);
  };
  return html`<${PageTitle}>${connection.name}<//>
    <p><a href="/connections">Back to connections</a></p>
    <${Facts} connection=${connection} />
    <${Manage} connection=${connection} onChange=${setConnection} />
    ${connection.trigger.type === "webhook" && html`<${WebhookUrl} connection=${connection} url=${webhookUrl}
      onRotated=${(rotated) => { setConnection(rotated); setWebhookUrl(rotated.webhook_url); }} />
      <${SigningSecret} connection=${connection} onChange=${setConnection} />`}
    <${RunNow} connection=${connection} onStarted=${load} />
    <h2>Settings</h2>
    ${saved && html`<${Notice} kind="ok">Your changes are saved.<//>`}
    <${ConnectionForm} initial=${formValues(connection)} onSave=${update}
      submitLabel="Save changes" />`;
}
