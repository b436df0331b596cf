// The pieces every page is made of: labelled fields with their errors, forms that put the API's
// errors next to the fields they concern, paged lists, confirmations, times and statuses.
import { useCallback, useEffect, useId, useRef, useState } from "preact/hooks";
import { html } from "./html.js";
import { ApiError, get, withQuery } from "./api.js";

/** The page's heading and the document's title; focused on arrival so screen readers hear it. */
export function PageTitle({ children, title }) {
  const heading = useRef(null);
  const text = title ?? (typeof children === "string" ? children : "");
  useEffect(() => {
    document.title = text ? `${text} · leadmesh` : "leadmesh";
    heading.current?.focus({ preventScroll: true });
  }, [text]);
  return html`<h1 tabindex="-1" ref=${heading}>${children}</h1>`;
}

/** A labelled input, textarea or select, with its hint and its error (from the API) beneath. */
export function Field({ label, name, error, hint, as = "input", children, class: cls, ...props }) {
  const id = useId();
  const described = [hint && `${id}-hint`, error && `${id}-error`].filter(Boolean).join(" ");
  const control = {
    id,
    name,
    "aria-invalid": error ? "true" : undefined,
    "aria-describedby": described || undefined,
    ...props,
  };
  let input;
  if (as === "textarea") input = html`<textarea ...${control}></textarea>`;
  else if (as === "select") input = html`<select ...${control}>${children}</select>`;
  else input = html`<input ...${control} />`;
  const checkbox = as === "input" && props.type === "checkbox";
  return html`<div class=${`field${checkbox ? " field-check" : ""}${cls ? " " + cls : ""}`}>
    ${checkbox ? input : null}
    <label for=${id}>${label}</label>
    ${checkbox ? null : input}
    ${hint && html`<p class="hint" id=${`${id}-hint`}>${hint}</p>`}
    ${error && html`<p class="field-error" id=${`${id}-error`}>${error}</p>`}
  </div>`;
}

/** The form's own error (the problem's detail when no field took it), announced when it appears. */
export function FormError({ error }) {
  if (!error) return null;
  return html`<p class="form-error" role="alert">${error}</p>`;
}

export function Notice({ children, kind = "info" }) {
  return html`<p class=${`notice notice-${kind}`} role="status">${children}</p>`;
}

/**
 * A form's values, its errors, and `submit(action)`: runs `action(values)` and, when the API
 * refuses, puts each field error beside its field and the detail above the button.
 * `fieldNames` maps an API field ("action.url") to the form's ("url") where they differ.
 */
export function useForm(initial, fieldNames = {}) {
  const [values, setValues] = useState(initial);
  const [errors, setErrors] = useState({});
  const [formError, setFormError] = useState("");
  const [busy, setBusy] = useState(false);

  const set = useCallback(
    (name) => (event) => {
      const target = event.currentTarget;
      const value = target.type === "checkbox" ? target.checked : target.value;
      setValues((old) => ({ ...old, [name]: value }));
    },
    [],
  );

  const submit = useCallback(
    (action) => async (event) => {
      event?.preventDefault();
      if (busy) return undefined;
      setBusy(true);
      setErrors({});
      setFormError("");
      try {
        return await action(values);
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        const mapped = {};
        for (const [field, message] of Object.entries(error.fields)) {
          mapped[fieldNames[field] ?? field] = message;
        }
        setErrors(mapped);
        const placed = Object.keys(mapped).some((name) => name in values);
        setFormError(placed ? "Please correct the fields marked below." : error.message);
        return undefined;
      } finally {
        setBusy(false);
      }
    },
    [values, busy, fieldNames],
  );

  return { values, setValues, set, errors, setErrors, formError, setFormError, busy, submit };
}

/**
 * A list the API pages with `next_page_token`: the first page on mount (and whenever `query`
 * changes), `more()` for the next. `reload()` fetches the first page again in place.
 */
export function usePaged(path, query = {}, { pageSize = 25 } = {}) {
  const [state, setState] = useState({ items: [], next: null, loading: true, error: "" });
  const key = withQuery(path, query);

  const load = useCallback(
    async (token, append) => {
      setState((old) => ({ ...old, loading: true, error: "" }));
      try {
        const page = await get(withQuery(path, { ...query, page_size: pageSize, page_token: token }));
        setState((old) => ({
          items: append ? [...old.items, ...page.items] : page.items,
          next: page.next_page_token,
          loading: false,
          error: "",
        }));
      } catch (error) {
        setState((old) => ({ ...old, loading: false, error: error.message }));
      }
    },
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [key, pageSize],
  );

  useEffect(() => {
    load("", false);
  }, [load]);

  return {
    ...state,
    more: () => state.next && load(state.next, true),
    reload: () => load("", false),
    setItems: (update) => setState((old) => ({ ...old, items: update(old.items) })),
  };
}

/** "Load more" under a paged list, while the API has another page. */
export function Pager({ list, label = "Load more" }) {
  if (!list.next) return null;
  return html`<p class="pager">
    <button type="button" class="secondary" onClick=${list.more} disabled=${list.loading}>${label}</button>
  </p>`;
}

/** A button that asks first, in a modal dialog (Escape or Cancel keeps things as they are). */
export function ConfirmButton({ label, question, confirmLabel, onConfirm, danger = true, children }) {
  const dialog = useRef(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const titleId = useId();
  const confirm = async () => {
    setBusy(true);
    setError("");
    try {
      await onConfirm();
      dialog.current?.close();
    } catch (failure) {
      setError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<button type="button" class=${danger ? "danger" : "secondary"}
      onClick=${() => dialog.current?.showModal()}>${label}</button>
    <dialog ref=${dialog} aria-labelledby=${titleId}>
      <h2 id=${titleId}>${question}</h2>
      ${children}
      <${FormError} error=${error} />
      <div class="actions">
        <button type="button" class=${danger ? "danger" : ""} onClick=${confirm} disabled=${busy}>
          ${confirmLabel ?? label}
        </button>
        <button type="button" class="secondary" onClick=${() => dialog.current?.close()}>Cancel</button>
      </div>
    </dialog>`;
}

/** Copies `text` to the clipboard, and says so. */
export function CopyButton({ text, label = "Copy" }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied(true);
      setTimeout(() => setCopied(false), 2000);
    } catch {
      setCopied(false);
    }
  };
  return html`<button type="button" class="secondary" onClick=${copy}>${label}</button>
    <span role="status" class="copied">${copied ? "Copied" : ""}</span>`;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A time as the reader's locale writes it, machine-readable in `datetime`. */
export function Time({ value, fallback = "—" }) {
  if (!value) return fallback;
  const date = new Date(value);
  return html`<time datetime=${date.toISOString()}>${dateTime.format(date)}</time>`;
}

/** A status word with its colour (the word itself carries the meaning, never the colour alone). */
export function Status({ value }) {
  if (!value) return "—";
  return html`<span class=${`status status-${String(value).toLowerCase()}`}>${String(value).replaceAll("_", " ")}</span>`;
}

/**
 * Calls `refresh` every `seconds` while `active` and the tab is in view (a hidden tab asks the API
 * nothing), and at once when it comes back into view.
 */
export function useInterval(refresh, seconds, active = true) {
  useEffect(() => {
    if (!active) return undefined;
    const timer = setInterval(() => document.hidden || refresh(), seconds * 1000);
    const shown = () => document.hidden || refresh();
    document.addEventListener("visibilitychange", shown);
    return () => {
      clearInterval(timer);
      document.removeEventListener("visibilitychange", shown);
    };
  }, [refresh, seconds, active]);
}

/** One GET when the page opens: `{ value, error }`, value null while it loads. */
export function useLoad(path) {
  const [value, setValue] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    get(path).then(setValue, (e) => setError(e.message));
  }, [path]);
  return { value, error };
}
