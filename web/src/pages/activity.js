// Activity: runs newest first, filtered by connection, status and date (kept in the address, so
// a reload or the way back from a run keeps them), refreshing while some are under way.
import { useCallback, useRef } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { get, withQuery } from "../api.js";
import { Field, Notice, PageTitle, Pager, Status, Time, useInterval, usePaged } from "../ui.js";
import { ConnectionLink, useConnections } from "./connection-names.js";
import { UNDER_WAY, duration } from "./run.js";

export { Run } from "./run.js";

const RUN_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const PAGE_SIZE = 25;
// While a shown run is under way the list follows it closely; otherwise it only looks for new
// runs (a webhook from outside), calmly, so a person never has to reload to see them.
const LIVE_SECONDS = 2;
const IDLE_SECONDS = 5;
const FILTERS = ["connection_id", "status", "from", "to"];

/** A date input's day (the reader's midnight) as the API's RFC 3339 instant; `next`: the day after. */
function instant(day, next = false) {
  if (!day) return "";
  const date = new Date(`${day}T00:00:00`);
  if (Number.isNaN(date.getTime())) return "";
  if (next) date.setDate(date.getDate() + 1);
  return date.toISOString();
}

function pick(object, ...names) {
  return Object.fromEntries(names.map((name) => [name, object[name]]));
}

/** The address's filters as GET /v1/activity takes them ("To" includes its whole day). */
function apiQuery(query) {
  return {
    connection_id: query.connection_id,
    status: query.status,
    since: instant(query.from),
    until: instant(query.to, true),
  };
}

/** Fetches the first page again and puts what changed in place, keeping the pages loaded with
 * "Load more" (a reload would drop them); runs under way further down are asked one by one. */
function useLiveRefresh(list, query) {
  const latest = useRef(list);
  latest.current = list;
  const key = withQuery("/v1/activity", query);
  const current = useRef(key);
  current.current = key;
  return useCallback(async () => {
    const asked = key;
    const page = await get(withQuery("/v1/activity", { ...query, page_size: PAGE_SIZE })).catch(() => null);
    if (!page || current.current !== asked) return;
    const fresh = new Set(page.items.map((run) => run.run_id));
    const further = latest.current.items.filter((run) => !fresh.has(run.run_id) && UNDER_WAY.has(run.status));
    const changed = new Map();
    for (const run of further) {
      const detail = await get(`/v1/runs/${run.run_id}`).catch(() => null);
      if (detail) changed.set(run.run_id, { ...run, ...pick(detail, "status", "start_time", "finish_time") });
    }
    if (current.current !== asked) return;
    // Against the items as they are then: a "Load more" may have added some meanwhile.
    latest.current.setItems((items) => [
      ...page.items,
      ...items.filter((run) => !fresh.has(run.run_id)).map((run) => changed.get(run.run_id) ?? run),
    ]);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);
}

function Filters({ query, connections, onChange }) {
  const set = (name) => (event) => onChange({ ...query, [name]: event.currentTarget.value });
  return html`<form class="toolbar" role="search" aria-label="Filter runs" onSubmit=${(e) => e.preventDefault()}>
    <${Field} label="Connection" as="select" value=${query.connection_id ?? ""} onChange=${set("connection_id")}>
      <option value="">All connections</option>
      ${connections.map((c) => html`<option value=${c.id}>${c.name}</option>`)}
    <//>
    <${Field} label="Status" as="select" value=${query.status ?? ""} onChange=${set("status")}>
      <option value="">All statuses</option>
      ${RUN_STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}
    <//>
    <${Field} label="From" type="date" value=${query.from ?? ""} max=${query.to || undefined}
      onChange=${set("from")} />
    <${Field} label="To" type="date" value=${query.to ?? ""} min=${query.from || undefined}
      onChange=${set("to")} />
  </form>`;
}

function RunRow({ run, connections }) {
  return html`<tr>
    <td data-label="Time"><a href=${`/runs/${run.run_id}`}><${Time} value=${run.create_time} /></a></td>
    <td data-label="Connection"><${ConnectionLink} id=${run.connection_id} connections=${connections} /></td>
    <td data-label="Trigger">${run.trigger}</td>
    <td data-label="Status"><${Status} value=${run.status} /></td>
    <td data-label="Duration">${duration(run.start_time, run.finish_time)}</td>
  </tr>`;
}

function Empty({ filtered, clear }) {
  if (filtered) {
    return html`<p class="empty">No runs match these filters.${" "}
      <button type="button" class="link" onClick=${clear}>Show all runs</button></p>`;
  }
  return html`<p class="empty">No runs yet — connections run when a webhook arrives, on their
    schedule, or with Run now. <a href="/connections">Go to your connections</a></p>`;
}

export function Activity() {
  const location = useLocation();
  const query = Object.fromEntries(FILTERS.map((name) => [name, location.query[name] ?? ""]));
  const connections = useConnections();
  const asked = apiQuery(query);
  const list = usePaged("/v1/activity", asked, { pageSize: PAGE_SIZE });
  const live = list.items.some((run) => UNDER_WAY.has(run.status));
  useInterval(useLiveRefresh(list, asked), live ? LIVE_SECONDS : IDLE_SECONDS, !list.error);
  const filter = (next) => location.route(withQuery("/activity", next), true);
  const filtered = FILTERS.some((name) => query[name]);
  return html`<${PageTitle}>Activity<//>
    <p>Every run of your connections, newest first. Open one to see its event and attempts.</p>
    <${Filters} query=${query} connections=${connections} onChange=${filter} />
    <p class="hint" aria-live="polite">${live ? "Runs are under way: this list updates by itself." : ""}</p>
    ${list.error && html`<${Notice} kind="error">${list.error}<//>`}
    ${list.items.length > 0
      ? html`<div class="table-wrap"><table aria-label="Runs">
          <thead><tr><th scope="col">Time</th><th scope="col">Connection</th><th scope="col">Trigger</th>
            <th scope="col">Status</th><th scope="col">Duration</th></tr></thead>
          <tbody>${list.items.map((run) => html`<${RunRow} key=${run.run_id} run=${run} connections=${connections} />`)}</tbody>
        </table></div>`
      : !list.loading && !list.error && html`<${Empty} filtered=${filtered} clear=${() => filter({})} />`}
    ${list.loading && html`<p class="loading" role="status">Loading…</p>`}
    <${Pager} list=${list} />`;
}
