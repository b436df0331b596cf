// The parts of one connection's page that hand out or take in something once: its webhook URL
// (shown only when made or rotated), its signing secret (made here, shown once), and a manual run.
import { useState } from "preact/hooks";
import { html } from "../html.js";
import { patch, post } from "../api.js";
import { ConfirmButton, CopyButton, Field, FormError, Notice } from "../ui.js";

/** A secret shown once, with its copy button and the warning that it will not come back. */
function ShownOnce({ label, value, copyLabel }) {
  return html`<div class="notice notice-warn shown-once">
    <p><strong>${label}</strong></p>
    <p class="secret">${value}</p>
    <p>Copy it now: it will not be shown again. <${CopyButton} text=${value} label=${copyLabel} /></p>
  </div>`;
}

export function WebhookUrl({ connection, url, onRotated }) {
  const rotate = async () => onRotated(await post(`/v1/connections/${connection.id}/rotate-token`));
  return html`<section aria-labelledby="webhook-title">
    <h2 id="webhook-title">Webhook URL</h2>
    ${url
      ? html`<${ShownOnce} label="Your new webhook URL" value=${url} copyLabel="Copy webhook URL" />`
      : html`<p>Your form sends each lead with a POST to this connection's own URL. It was shown once,
          when it was made${connection.webhook_token_hint ? html` (it ends in a token starting${" "}
          <code>${connection.webhook_token_hint}</code>)` : ""}. Lost it? Rotate it to get a new one.</p>`}
    <div class="actions">
      <${ConfirmButton} label="Rotate webhook URL" question="Make a new webhook URL?" confirmLabel="Rotate"
        onConfirm=${rotate}>
        <p>The current URL stops working at once: update your form with the new one.</p>
      <//>
    </div>
  </section>`;
}

/** 32 random bytes as URL-safe base64: a secret made in the browser, sent once to the API. */
function newSecret() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

const SIGNED =
  "Webhooks must be signed: each request carries X-Leadmesh-Signature: t=<unix time>,v1=<hex " +
  "HMAC-SHA256 of “<t>.<body>” with the secret>. Unsigned or stale requests are refused.";
const UNSIGNED =
  "Webhooks need no signature. If your form can sign its requests, set a secret so that only it " +
  "can send leads here.";

export function SigningSecret({ connection, onChange }) {
  const [secret, setSecret] = useState("");
  const make = async () => {
    const made = newSecret();
    onChange(await patch(`/v1/connections/${connection.id}`, { signing_secret: made }));
    setSecret(made);
  };
  const remove = async () => {
    onChange(await patch(`/v1/connections/${connection.id}`, { signing_secret: null }));
    setSecret("");
  };
  return html`<section aria-labelledby="signing-title">
    <h2 id="signing-title">Signing secret</h2>
    <p>${connection.has_signing_secret ? SIGNED : UNSIGNED}</p>
    ${secret &&
    html`<${ShownOnce} label="Your new signing secret" value=${secret} copyLabel="Copy signing secret" />`}
    <div class="actions">
      <${ConfirmButton} label=${connection.has_signing_secret ? "Replace signing secret" : "Set a signing secret"}
        question="Make a new signing secret?" confirmLabel="Make secret" danger=${false} onConfirm=${make}>
        <p>From now on, requests must be signed with the new secret.</p>
      <//>
      ${connection.has_signing_secret && html`<${ConfirmButton} label="Remove signing secret"
        question="Accept unsigned webhooks again?" confirmLabel="Remove" onConfirm=${remove} />`}
    </div>
  </section>`;
}

export function RunNow({ connection, onStarted }) {
  const [payload, setPayload] = useState('{\n  "email": "ada@example.com",\n  "name": "Ada Lovelace"\n}');
  const [error, setError] = useState("");
  const [fieldError, setFieldError] = useState("");
  const [runId, setRunId] = useState("");
  const [busy, setBusy] = useState(false);
  const run = async (event) => {
    event.preventDefault();
    setError("");
    setFieldError("");
    setRunId("");
    let body;
    try {
      body = payload.trim() ? JSON.parse(payload) : null;
    } catch (failure) {
      setFieldError(`not valid JSON: ${failure.message}`);
      return;
    }
    setBusy(true);
    try {
      setRunId((await post(`/v1/connections/${connection.id}/runs`, { payload: body })).run_id);
      onStarted();
    } catch (failure) {
      setError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<section aria-labelledby="run-title">
    <h2 id="run-title">Run now</h2>
    <form onSubmit=${run} novalidate aria-labelledby="run-title">
      <${Field} label="Payload (JSON)" name="payload" as="textarea" rows="4" spellcheck="false" value=${payload}
        onInput=${(e) => setPayload(e.currentTarget.value)} error=${fieldError}
        hint="Sent as the event's body, as if your form had sent it." />
      <${FormError} error=${error} />
      <div class="actions"><button type="submit" disabled=${busy}>Run now</button></div>
    </form>
    ${runId && html`<${Notice} kind="ok">The run has started. <a href=${`/runs/${runId}`}>See the run</a><//>`}
  </section>`;
}
