// The webhook log and the notifications (mark as read; the unread count is in the navigation).
// The log shows what the API lists of each delivery, headers already redacted by the runner;
// never the webhook URL's token (the API does not hold it).
import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { post } from "../api.js";
import { useSession } from "../session.js";
import { Field, FormError, Notice, PageTitle, Pager, Time, usePaged } from "../ui.js";
import { ConnectionLink, useConnections } from "./connection-names.js";

const CONTENT = { json: "JSON", form: "Form", text: "Text", base64: "Binary" };

function Delivery({ entry, connections }) {
  return html`<tr>
    <td data-label="Received"><${Time} value=${entry.receive_time} /></td>
    <td data-label="Connection"><${ConnectionLink} id=${entry.connection_id} connections=${connections} /></td>
    <td data-label="Method">${entry.method}</td>
    <td data-label="From">${entry.source_ip || "—"}</td>
    <td data-label="Content">${entry.details_purged ? "Purged by retention" : CONTENT[entry.body_encoding] ?? entry.body_encoding}
      ${entry.redacted.length > 0 && html`<br /><span class="hint">Hidden: ${entry.redacted.join(", ")}</span>`}</td>
    <td data-label="Run">${entry.run_id ? html`<a href=${`/runs/${entry.run_id}`}>View run</a>` : "No run"}</td>
  </tr>`;
}

export function WebhookLog() {
  const connections = useConnections();
  const list = usePaged("/v1/webhook-log", {});
  return html`<${PageTitle}>Webhook log<//>
    <p>Every webhook your connections received in the last 7 days, newest first. Secret headers
      and query parameters are hidden.</p>
    ${list.error && html`<${Notice} kind="error">${list.error}<//>`}
    ${list.items.length > 0
      ? html`<div class="table-wrap"><table aria-label="Webhooks received">
          <thead><tr><th scope="col">Received</th><th scope="col">Connection</th><th scope="col">Method</th>
            <th scope="col">From</th><th scope="col">Content</th><th scope="col">Run</th></tr></thead>
          <tbody>${list.items.map((e) => html`<${Delivery} key=${e.id} entry=${e} connections=${connections} />`)}</tbody>
        </table></div>`
      : !list.loading && !list.error && html`<p class="empty">No webhooks received yet. A connection with a
          webhook trigger shows its address once, when it is made or its address is renewed:${" "}
          <a href="/connections">go to your connections</a>.</p>`}
    ${list.loading && html`<p class="loading" role="status">Loading…</p>`}
    <${Pager} list=${list} />`;
}

function Notification({ notice, connections, onRead }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const read = async () => {
    setBusy(true);
    setError("");
    try {
      onRead(await post(`/v1/notifications/${notice.id}/read`));
    } catch (failure) {
      setError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<li class=${`card notification${notice.read ? "" : " unread"}`}>
    <p>${!notice.read && html`<strong class="status status-unread">Unread</strong> `}${notice.message}</p>
    <p class="hint"><${Time} value=${notice.create_time} />
      ${notice.connection_id && html` · <${ConnectionLink} id=${notice.connection_id} connections=${connections} />`}
      ${notice.run_id && html` · <a href=${`/runs/${notice.run_id}`}>View run</a>`}
      ${notice.credential_id && html` · <a href=${`/credentials/${notice.credential_id}`}>View credential</a>`}</p>
    ${!notice.read && html`<button type="button" class="secondary" onClick=${read} disabled=${busy}>Mark as read</button>`}
    <${FormError} error=${error} />
  </li>`;
}

export function Notifications() {
  const location = useLocation();
  const { refreshUnread } = useSession();
  const unreadOnly = location.query.unread === "true";
  const connections = useConnections();
  const list = usePaged("/v1/notifications", { unread: unreadOnly ? "true" : "" });
  const onRead = (changed) => {
    list.setItems((items) =>
      unreadOnly ? items.filter((n) => n.id !== changed.id) : items.map((n) => (n.id === changed.id ? changed : n)),
    );
    refreshUnread();
  };
  const toggle = (event) =>
    location.route(event.currentTarget.checked ? "/notifications?unread=true" : "/notifications", true);
  return html`<${PageTitle}>Notifications<//>
    <p>What happened to your connections that needs your eye: failed runs, paused connections,
      credentials to reconnect. Kept 7 days.</p>
    <div class="toolbar">
      <${Field} label="Show unread only" type="checkbox" checked=${unreadOnly} onChange=${toggle} />
    </div>
    ${list.error && html`<${Notice} kind="error">${list.error}<//>`}
    ${list.items.length > 0
      ? html`<ul class="notifications" aria-label="Notifications">
          ${list.items.map((n) => html`<${Notification} key=${n.id} notice=${n} connections=${connections} onRead=${onRead} />`)}
        </ul>`
      : !list.loading && !list.error && html`<p class="empty">${unreadOnly
          ? "Nothing unread: you have seen every notification."
          : "No notifications. You will find a note here when a run fails or a connection needs attention."}</p>`}
    ${list.loading && html`<p class="loading" role="status">Loading…</p>`}
    <${Pager} list=${list} />`;
}
