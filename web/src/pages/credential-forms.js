// The forms that add a credential: an API key, a login, or an account connected with OAuth (a
// full-page round trip through the gateway to the provider and back to /credentials).
import { useState } from "preact/hooks";
import { html } from "../html.js";
import { get, post, withQuery } from "../api.js";
import { Field, FormError, Notice, useForm, useLoad } from "../ui.js";

// The API's field names inside `secret` mapped to the form's.
const SECRET_FIELDS = { "secret.key": "key", "secret.header": "header", secret: "key" };
const LOGIN_FIELDS = { "secret.username": "username", "secret.password": "password", secret: "password" };

/** A form that adds one credential, emptied (its secret first of all) once the API has it. */
function useCredentialForm(initial, fieldNames, toBody, onAdded) {
  const form = useForm(initial, fieldNames);
  const [added, setAdded] = useState("");
  const submit = form.submit(async (values) => {
    setAdded("");
    const created = await post("/v1/credentials", toBody(values));
    form.setValues(initial);
    setAdded(created.name);
    onAdded(created);
  });
  return { ...form, submit, added };
}

export function ApiKeyForm({ onAdded }) {
  const form = useCredentialForm(
    { name: "", provider: "", key: "", header: "X-Api-Key" },
    SECRET_FIELDS,
    (v) => ({ name: v.name, kind: "api_key", provider: v.provider, secret: { key: v.key, header: v.header } }),
    onAdded,
  );
  const { values, set, errors } = form;
  return html`<form class="card" onSubmit=${form.submit} novalidate aria-labelledby="api-key-title">
    <h2 id="api-key-title">Add an API key</h2>
    <${Field} label="Name" name="name" value=${values.name} onInput=${set("name")} error=${errors.name}
      hint="For you: for example CRM production." />
    <${Field} label="Provider" name="provider" value=${values.provider} onInput=${set("provider")}
      error=${errors.provider} hint="The service the key belongs to, for example HubSpot." />
    <${Field} label="API key" name="key" type="password" autocomplete="off" value=${values.key}
      onInput=${set("key")} error=${errors.key} />
    <${Field} label="Header name" name="header" value=${values.header} onInput=${set("header")}
      error=${errors.header} hint="The request header that carries the key." />
    <${FormError} error=${form.formError} />
    ${form.added && html`<${Notice} kind="ok">Saved “${form.added}”. The key is stored encrypted.<//>`}
    <div class="actions"><button type="submit" disabled=${form.busy}>Add API key</button></div>
  </form>`;
}

export function LoginForm({ onAdded }) {
  const form = useCredentialForm(
    { name: "", provider: "", username: "", password: "" },
    LOGIN_FIELDS,
    (v) => ({
      name: v.name,
      kind: "login",
      provider: v.provider,
      secret: { username: v.username, password: v.password },
    }),
    onAdded,
  );
  const { values, set, errors } = form;
  return html`<form class="card" onSubmit=${form.submit} novalidate aria-labelledby="login-title">
    <h2 id="login-title">Add a login</h2>
    <${Field} label="Name" name="name" value=${values.name} onInput=${set("name")} error=${errors.name} />
    <${Field} label="Provider" name="provider" value=${values.provider} onInput=${set("provider")}
      error=${errors.provider} hint="The service the login is for." />
    <${Field} label="Username" name="username" autocomplete="off" value=${values.username}
      onInput=${set("username")} error=${errors.username} />
    <${Field} label="Password" name="password" type="password" autocomplete="new-password"
      value=${values.password} onInput=${set("password")} error=${errors.password} />
    <${FormError} error=${form.formError} />
    ${form.added && html`<${Notice} kind="ok">Saved “${form.added}”. The login is stored encrypted.<//>`}
    <div class="actions"><button type="submit" disabled=${form.busy}>Add login</button></div>
  </form>`;
}

/**
 * Off to the provider's consent page, through the gateway (a full-page round trip). The session is
 * checked first, so an expired one leads to the sign-in page rather than to a page of JSON.
 * `credentialId` reconnects that credential: same id, new tokens.
 */
export async function startOAuth(provider, name, credentialId) {
  await get("/v1/me");
  const query = credentialId ? { credential_id: credentialId } : { name };
  window.location.assign(withQuery(`/v1/oauth/${encodeURIComponent(provider)}/start`, query));
}

export function OAuthForm() {
  const { value, error } = useLoad("/v1/oauth/providers");
  const providers = value?.providers;
  const form = useForm({ provider: "", name: "" });
  const { values, set, errors } = form;
  const connect = form.submit((v) => startOAuth(v.provider || providers[0].name, v.name.trim()));
  const intro = html`<h2 id="oauth-title">Connect with OAuth</h2>
    <p>The safest way where the service offers it: you sign in at the provider and allow leadmesh
      in; no password is ever given to us.</p>`;
  if (!providers) {
    return html`<section class="card" aria-labelledby="oauth-title">${intro}
      ${error ? html`<${Notice} kind="error">${error}<//>` : html`<p class="loading" role="status">Loading…</p>`}
    </section>`;
  }
  if (!providers.length) {
    return html`<section class="card" aria-labelledby="oauth-title">${intro}
      <p class="empty">Your leadmesh operator has not set up any OAuth provider yet; an API key or a
        login works meanwhile.</p>
    </section>`;
  }
  return html`<form class="card" onSubmit=${connect} novalidate aria-labelledby="oauth-title">
    ${intro}
    <div class="split">
      <${Field} label="Provider" name="provider" as="select" value=${values.provider || providers[0].name}
        onChange=${set("provider")} error=${errors.provider}>
        ${providers.map((p) => html`<option key=${p.name} value=${p.name}>${p.title}</option>`)}
      <//>
      <${Field} label="Name" name="name" value=${values.name} onInput=${set("name")} error=${errors.name}
        hint="For you: for example Work CRM." />
    </div>
    <${FormError} error=${form.formError} />
    <div class="actions"><button type="submit" disabled=${form.busy}>Connect</button></div>
  </form>`;
}
