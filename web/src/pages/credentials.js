// Credentials: the list (never a secret), add an API key or login, connect with OAuth, delete.
// A secret goes to the API once and is cleared from the form at once; the API never sends it back.
import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { del } from "../api.js";
import { ConfirmButton, FormError, Notice, PageTitle, Pager, Status, Time, usePaged } from "../ui.js";
import { ApiKeyForm, LoginForm, OAuthForm, startOAuth } from "./credential-forms.js";

const KINDS = { api_key: "API key", login: "Login", oauth2: "OAuth" };

// Why an OAuth round trip ended without a credential (the gateway's callback names the reason).
const OAUTH_ERRORS = {
  OAUTH_DENIED: "The provider reported that access was not granted, so nothing was stored.",
  OAUTH_STATE_INVALID:
    "That sign-in with the provider expired, or was started in another browser session. Please start again.",
  OAUTH_EXCHANGE_FAILED: "The provider did not hand over access. Please try again in a moment.",
  UNKNOWN_PROVIDER: "That provider is not set up here (any more). Pick one from the list below.",
  CREDENTIAL_NOT_FOUND: "That credential no longer exists, so there was nothing to reconnect.",
  NOT_OAUTH2: "Only a credential connected with OAuth can be reconnected.",
  PROVIDER_MISMATCH: "That credential belongs to another provider than the one asked for.",
};

function OAuthNotice({ query }) {
  if (query.oauth === "connected") return html`<${Notice} kind="ok">Your account is connected.<//>`;
  if (query.oauth_error) {
    const why = OAUTH_ERRORS[query.oauth_error] ?? "The connection with the provider failed. Please try again.";
    return html`<${Notice} kind="error">${why}<//>`;
  }
  return null;
}

function CredentialRow({ credential, current, onDeleted }) {
  const [error, setError] = useState("");
  const reconnectNow = () =>
    startOAuth(credential.provider, credential.name, credential.id).catch((e) => setError(e.message));
  const remove = async () => {
    await del(`/v1/credentials/${credential.id}`);
    onDeleted(credential.id);
  };
  const reconnect = credential.kind === "oauth2" && credential.status === "needs_reconnect";
  return html`<tr class=${current ? "current" : undefined} aria-current=${current ? "true" : undefined}>
    <td data-label="Name">${credential.name}</td>
    <td data-label="Kind">${KINDS[credential.kind] ?? credential.kind}</td>
    <td data-label="Provider">${credential.provider}</td>
    <td data-label="Status"><${Status} value=${credential.status} /></td>
    <td data-label="Last use"><${Time} value=${credential.last_use_time} fallback="never" /></td>
    <td data-label="Actions" class="row-actions">
      ${reconnect && html`<button type="button" class="secondary"
        onClick=${reconnectNow}>Reconnect</button>`}
      <${ConfirmButton} label="Delete" question=${`Delete “${credential.name}”?`} confirmLabel="Delete credential"
        onConfirm=${remove}>
        <p>Connections that use it can no longer sign in to ${credential.provider} until you pick another.</p>
      <//>
      <${FormError} error=${error} />
    </td>
  </tr>`;
}

function CredentialTable({ list, currentId }) {
  if (!list.loading && !list.error && list.items.length === 0) {
    return html`<p class="card empty">No credentials yet. Add the API key or login of the service your
      leads go to, or connect an account with OAuth, below.</p>`;
  }
  const onDeleted = (id) => list.setItems((items) => items.filter((c) => c.id !== id));
  return html`<div class="table-wrap"><table>
    <caption class="visually-hidden">Your credentials</caption>
    <thead><tr>
      <th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Provider</th>
      <th scope="col">Status</th><th scope="col">Last use</th><th scope="col">Actions</th>
    </tr></thead>
    <tbody>${list.items.map((c) => html`<${CredentialRow} key=${c.id} credential=${c}
      current=${c.id === currentId} onDeleted=${onDeleted} />`)}</tbody>
  </table></div>`;
}

/** `/credentials`, and `/credentials/{id}` (where the OAuth callback lands) with that one marked. */
export function Credentials({ id }) {
  const { query } = useLocation();
  const list = usePaged("/v1/credentials");
  const added = () => list.reload();
  return html`<${PageTitle}>Credentials<//>
    <p>The keys and accounts leadmesh uses to deliver your leads. They are stored encrypted and
      never shown again, here or anywhere.</p>
    <${OAuthNotice} query=${query} />
    ${list.error && html`<${Notice} kind="error">${list.error}<//>`}
    <${CredentialTable} list=${list} currentId=${id} />
    ${list.loading && html`<p class="loading" role="status">Loading…</p>`}
    <${Pager} list=${list} />
    <div class="credential-forms">
      <${OAuthForm} />
      <div class="split">
        <${ApiKeyForm} onAdded=${added} />
        <${LoginForm} onAdded=${added} />
      </div>
    </div>`;
}
