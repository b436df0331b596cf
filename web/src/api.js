// The public REST API, as the app uses it: same origin, the session cookie, the CSRF token echoed
// from the lm_csrf cookie on every state-changing request, problem+json turned into ApiError.

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export function cookie(name) {
  const found = document.cookie.split("; ").find((part) => part.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

/** A refused request: `detail` for the form, `fields` {name: message} for the fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `request failed (${status})`);
    this.status = status;
    this.code = problem.code || "";
    this.problem = problem;
    this.fields = {};
    for (const error of problem.errors || []) {
      // "action.body_template" and "body_template" both find the field named body_template.
      const name = error.field || "";
      this.fields[name] = error.message;
      const last = name.split(".").pop();
      if (last && !(last in this.fields)) this.fields[last] = error.message;
    }
  }
}

// Every page learns here that the session is gone (401, or a CSRF refusal: the cookies no
// longer match a session), and the app sends the person back to sign in.
const listeners = new Set();
export function onSignedOut(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (UNSAFE.has(method)) headers["X-CSRF-Token"] = cookie("lm_csrf");
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { detail: "leadmesh cannot be reached; check your connection and try again" });
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => ({})) : {};
  if (response.ok) return data;
  const error = new ApiError(response.status, data);
  // A wrong password on a re-authentication (password change, deletion) is the form's error,
  // not an ended session: only the gateway's own 401s (SESSION_REQUIRED, SESSION_INVALID) are.
  const sessionGone =
    (response.status === 401 && path !== "/v1/sessions" && error.code !== "INVALID_CREDENTIALS") ||
    error.code === "CSRF_TOKEN_INVALID";
  if (sessionGone) listeners.forEach((listener) => listener(error));
  throw error;
}

export const get = (path, options) => api("GET", path, undefined, options);
export const post = (path, body, options) => api("POST", path, body ?? {}, options);
export const put = (path, body) => api("PUT", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

/** `path` with the query's non-empty values. */
export function withQuery(path, query = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(key, value);
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * Every item of a paged list (the API's largest pages, following `next_page_token`), for pickers
 * and names; stops at `most` items.
 */
export async function getAll(path, { most = 2000 } = {}) {
  const items = [];
  let token = "";
  do {
    const page = await get(withQuery(path, { page_size: 100, page_token: token }));
    items.push(...page.items);
    token = page.next_page_token;
  } while (token && items.length < most);
  return items;
}
