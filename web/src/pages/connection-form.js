// One form for a new connection and for editing one: trigger, the HTTP action (method, URL,
// headers, credential, body template) and a live preview the server renders against a sample
// event the person can edit, so a template is checked before it is saved.
import { useEffect, useState } from "preact/hooks";
import { html } from "../html.js";
import { ApiError, getAll, post } from "../api.js";
import { Field, FormError } from "../ui.js";

const SAMPLE_LEAD = {
  email: "ada@example.com",
  name: "Ada Lovelace",
  company: "Analytical Engines Ltd",
  phone: "+44 20 7946 0000",
  message: "Please call me about a demo.",
  source: "website-form",
};

const EXAMPLE_TEMPLATE = { email: "{{ body.email }}", full_name: "{{ body.name }}" };
const METHODS = ["POST", "PUT", "PATCH", "GET", "DELETE"];
const PREVIEW_DELAY_MS = 400;

/** The form's values from a connection of the API (or the blank of a new one). */
export function formValues(connection) {
  const trigger = connection?.trigger ?? { type: "webhook" };
  const action = connection?.action ?? { method: "POST", url: "", headers: {} };
  const template = connection ? action.body_template : EXAMPLE_TEMPLATE;
  return {
    name: connection?.name ?? "",
    trigger: trigger.type,
    schedule: trigger.every_seconds ? "interval" : "cron",
    cron: trigger.cron ?? "",
    every_seconds: trigger.every_seconds ? String(trigger.every_seconds) : "",
    method: action.method,
    url: action.url,
    headers: Object.entries(action.headers ?? {}).map(([k, v]) => `${k}: ${v}`).join("\n"),
    credential_id: action.credential_id ?? "",
    body_template: template === null || template === undefined ? "" : JSON.stringify(template, null, 2),
    sample: JSON.stringify(SAMPLE_LEAD, null, 2),
  };
}

/** A thrown error for one field of the form, shown beside it like the API's own. */
function fieldError(field, message) {
  return new ApiError(422, { detail: message, errors: [{ field, message }] });
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const colon = line.indexOf(":");
    if (colon < 1) throw fieldError("headers", `"${line}" is not "Name: value"`);
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }
  return headers;
}

// Text that opens like a JSON object or array is meant as JSON, so a slip in it is an error
// here; any other text (even "{{ body.email }}") is a template of one string.
const LOOKS_LIKE_JSON = /^\s*(\[|\{(?!\{))/;

function parseTemplate(text) {
  if (!text.trim()) return null;
  try {
    return JSON.parse(text);
  } catch (error) {
    if (LOOKS_LIKE_JSON.test(text)) throw fieldError("body_template", `not valid JSON: ${error.message}`);
    return text;
  }
}

function parseSample(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw fieldError("sample", `not valid JSON: ${error.message}`);
  }
}

/** The API's `action` (and `trigger`) from the form's values; throws a field's error. */
export function actionOf(values) {
  return {
    type: "http",
    method: values.method,
    url: values.url.trim(),
    headers: parseHeaders(values.headers),
    body_template: parseTemplate(values.body_template),
    credential_id: values.credential_id || null,
  };
}

export function triggerOf(values) {
  if (values.trigger !== "schedule") return { type: values.trigger };
  if (values.schedule === "interval") {
    const seconds = Number(values.every_seconds);
    if (!Number.isInteger(seconds) || seconds < 1) {
      throw fieldError("every_seconds", "a whole number of seconds, at least 1");
    }
    return { type: "schedule", every_seconds: seconds };
  }
  return { type: "schedule", cron: values.cron.trim() };
}

/** Which of the form's fields an API error names ("action.body_template.email" → body_template). */
export function formField(apiField) {
  const parts = apiField.replace(/\[.*$/, "").split(".");
  if (parts.length > 1 && (parts[0] === "action" || parts[0] === "trigger")) parts.shift();
  return parts[0] === "event" ? "sample" : parts[0];
}

/** {form field: message} from the problem's own errors (not ApiError's short aliases, which
 * would put "action.body_template.name" at the Name field). */
export function fieldErrors(error, known) {
  const mapped = {};
  for (const { field = "", message } of error.problem.errors ?? []) {
    const name = formField(field);
    if (known.includes(name) && !(name in mapped)) mapped[name] = message;
  }
  return mapped;
}

const PLACED = ["method", "url", "body_template", "headers", "sample"];

const LABELS = { method: "Method", url: "URL", headers: "Headers", credential_id: "Credential",
  body_template: "Body template", sample: "Sample event" };

/** The preview's refusal in the form's words: each field's message after its label. */
function previewProblem(error) {
  const named = (error.problem.errors ?? []).map(({ field = "", message }) => {
    const label = LABELS[formField(field)];
    return label ? `${label}: ${message}` : message;
  });
  return named.length ? named.join("; ") : error.message;
}

/** The request the server would send for these values, re-rendered a moment after each edit. */
function usePreview(values) {
  const [preview, setPreview] = useState({ state: "waiting" });
  const { method, url, headers, credential_id, body_template, sample } = values;
  useEffect(() => {
    const abort = new AbortController();
    if (!url.trim()) {
      setPreview({ state: "idle" });
      return undefined;
    }
    const timer = setTimeout(async () => {
      try {
        const body = { action: actionOf(values), event: { body: parseSample(sample), headers: {}, query: {} } };
        const reply = await post("/v1/connections/preview", body, { signal: abort.signal });
        setPreview({ state: "ok", request: reply.request, credential: reply.credential });
      } catch (error) {
        if (error.name === "AbortError") return;
        if (!(error instanceof ApiError)) throw error;
        setPreview({ state: "error", message: previewProblem(error), errors: fieldErrors(error, PLACED) });
      }
    }, PREVIEW_DELAY_MS);
    return () => {
      clearTimeout(timer);
      abort.abort();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [method, url, headers, credential_id, body_template, sample]);
  return preview;
}

/** JSON text indented for reading; any other text as it is. */
function readable(body) {
  try {
    return JSON.stringify(JSON.parse(body), null, 2);
  } catch {
    return body;
  }
}

function PreviewRequest({ request, credential }) {
  const headerLines = Object.entries(request.headers ?? {}).map(([k, v]) => `${k}: ${v}`).join("\n");
  const body = request.body ? readable(request.body) : "";
  const text = [`${request.method} ${request.url}`, headerLines, body && `\n${body}`].filter(Boolean).join("\n");
  return html`<pre>${text}</pre>
    ${credential?.kind === "api_key" &&
    html`<p class="hint">Your API key is added too, in the header it names (never shown).</p>`}`;
}

function Preview({ preview }) {
  let content;
  if (preview.state === "idle") content = html`<p class="hint">Fill in the URL to see the request.</p>`;
  else if (preview.state === "waiting") content = html`<p class="loading">Rendering…</p>`;
  else if (preview.state === "ok") {
    content = html`<${PreviewRequest} request=${preview.request} credential=${preview.credential} />`;
  }
  else content = html`<p class="field-error">The request cannot be rendered: ${preview.message}</p>`;
  return html`<section aria-labelledby="preview-title" class="card">
    <h2 id="preview-title">Preview</h2>
    <p class="hint">The request leadmesh would send for the sample event (credentials are hidden).</p>
    <div aria-live="polite" data-testid="preview">${content}</div>
  </section>`;
}

/** The person's credentials for the picker (names only, never a secret). */
function useCredentials() {
  const [credentials, setCredentials] = useState([]);
  useEffect(() => {
    getAll("/v1/credentials").then(setCredentials, () => setCredentials([]));
  }, []);
  return credentials;
}

function TriggerFields({ values, set, errors }) {
  return html`<${Field} label="Trigger" name="trigger" as="select" value=${values.trigger}
      onChange=${set("trigger")} error=${errors.trigger}
      hint="Webhook: your form sends each lead to a URL of its own. Schedule: on a timetable.
        Manual: when you press Run now.">
      <option value="webhook">Webhook</option>
      <option value="schedule">Schedule</option>
      <option value="manual">Manual</option>
    <//>
    ${values.trigger === "schedule" && html`<fieldset>
      <legend>Schedule</legend>
      <${Field} label="Repeat" name="schedule" as="select" value=${values.schedule} onChange=${set("schedule")}>
        <option value="cron">By cron expression</option>
        <option value="interval">Every so many seconds</option>
      <//>
      ${values.schedule === "cron"
        ? html`<${Field} label="Cron expression" name="cron" value=${values.cron} onInput=${set("cron")}
            error=${errors.cron} hint="Five fields, in UTC: for example 0 9 * * 1-5 is 09:00 on weekdays." />`
        : html`<${Field} label="Interval (seconds)" name="every_seconds" type="number" min="1"
            value=${values.every_seconds} onInput=${set("every_seconds")} error=${errors.every_seconds} />`}
    </fieldset>`}`;
}

function ActionFields({ values, set, errors }) {
  const credentials = useCredentials();
  return html`<${Field} label="Method" name="method" as="select" value=${values.method} onChange=${set("method")}
      error=${errors.method}>
      ${METHODS.map((m) => html`<option value=${m}>${m}</option>`)}
    <//>
    <${Field} label="URL" name="url" type="url" value=${values.url} onInput=${set("url")} error=${errors.url}
      hint="The address of your CRM's API, for example https://api.example.com/leads" />
    <${Field} label="Headers" name="headers" as="textarea" rows="3" value=${values.headers}
      onInput=${set("headers")} error=${errors.headers}
      hint="One per line, as Name: value. Values may hold {{ placeholders }}." />
    <${Field} label="Credential" name="credential_id" as="select" value=${values.credential_id}
      onChange=${set("credential_id")} error=${errors.credential_id}
      hint="The key or account leadmesh signs in with; add one under Credentials.">
      <option value="">None</option>
      ${credentials.map((c) => html`<option value=${c.id}>${c.name} (${c.provider})</option>`)}
    <//>
    <${Field} label="Body template" name="body_template" as="textarea" rows="8" spellcheck="false"
      value=${values.body_template} onInput=${set("body_template")} error=${errors.body_template}
      hint="JSON whose strings may hold {{ body.email }} placeholders (JMESPath over the event's body,
        headers and query)." />`;
}

/**
 * The connection form. `onSave(body)` gets {name, trigger, action} and may throw the API's
 * refusal, which is put beside the fields it names.
 */
export function ConnectionForm({ initial, onSave, submitLabel }) {
  const [values, setValues] = useState(initial);
  const [errors, setErrors] = useState({});
  const [formError, setFormError] = useState("");
  const [busy, setBusy] = useState(false);
  const preview = usePreview(values);
  const set = (name) => (event) => setValues((old) => ({ ...old, [name]: event.currentTarget.value }));

  const save = async (event) => {
    event.preventDefault();
    setBusy(true);
    setErrors({});
    setFormError("");
    try {
      await onSave({ name: values.name.trim(), trigger: triggerOf(values), action: actionOf(values) });
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const mapped = fieldErrors(error, Object.keys(values));
      setErrors(mapped);
      setFormError(Object.keys(mapped).length ? "Please correct the fields marked below." : error.message);
    } finally {
      setBusy(false);
    }
  };

  // The preview's findings about the template, headers and sample stand beside those fields;
  // once it renders them, what a failed save said about them is out of date.
  const shown = { ...errors };
  if (preview.state === "ok") for (const field of PLACED) delete shown[field];
  if (preview.state === "error") Object.assign(shown, preview.errors);

  return html`<form onSubmit=${save} novalidate aria-label="Connection" class="split connection-form">
    <div>
      <${Field} label="Name" name="name" value=${values.name} onInput=${set("name")} error=${shown.name}
        required hint="For you: for example Website form to CRM." />
      <${TriggerFields} values=${values} set=${set} errors=${shown} />
      <${ActionFields} values=${values} set=${set} errors=${shown} />
      <${FormError} error=${formError} />
      <div class="actions"><button type="submit" disabled=${busy}>${submitLabel}</button></div>
    </div>
    <div>
      <${Field} label="Sample event" name="sample" as="textarea" rows="10" spellcheck="false"
        value=${values.sample} onInput=${set("sample")} error=${shown.sample}
        hint="A lead as your form would send it (JSON): the event's body. Edit it to try the template." />
      <${Preview} preview=${preview} />
    </div>
  </form>`;
}
