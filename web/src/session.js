// Who is signed in (GET /v1/me), shared by every page through a context, and the unread
// notifications count the navigation shows.
import { createContext } from "preact";
import { useCallback, useContext, useEffect, useRef, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "./html.js";
import { get, onSignedOut } from "./api.js";

const SessionContext = createContext(null);

export function useSession() {
  return useContext(SessionContext);
}

/** The path to come back to after signing in: app paths only, never another origin. */
export function safeNext(next) {
  return typeof next === "string" && next.startsWith("/") && !next.startsWith("//") ? next : "/connections";
}

export function SessionProvider({ children }) {
  const [account, setAccount] = useState(undefined); // undefined: not asked yet; null: signed out
  const [unread, setUnread] = useState(0);
  // Why it is not known who is signed in (leadmesh unreachable, an outage): shown with a retry.
  const [failure, setFailure] = useState("");
  const location = useLocation();

  const refresh = useCallback(async () => {
    setFailure("");
    try {
      setAccount(await get("/v1/me"));
    } catch (error) {
      if (error.status === 401 || error.code === "CSRF_TOKEN_INVALID") setAccount(null);
      else {
        setFailure(error.message || "leadmesh did not answer.");
        throw error; // to a caller that waits for it (signing in); the pages show `failure`
      }
    }
  }, []);
  const retry = useCallback(() => refresh().catch(() => {}), [refresh]);

  const refreshUnread = useCallback(async () => {
    try {
      const reply = await get("/v1/notifications/unread-count");
      setUnread(reply.unread_count ?? 0);
    } catch {
      // the count is a hint; a page that needs notifications shows their errors itself
    }
  }, []);

  useEffect(() => {
    retry();
  }, [retry]);

  useEffect(() => {
    if (!account) return undefined;
    refreshUnread();
    const timer = setInterval(refreshUnread, 15000);
    return () => clearInterval(timer);
  }, [account, refreshUnread]);

  // A 401 or CSRF refusal on any request of a signed-in person: the session has ended; back to
  // sign in, then here. (A person who was never signed in is not told that a session ended.)
  const signedIn = useRef(false);
  signedIn.current = Boolean(account);
  useEffect(
    () =>
      onSignedOut(() => {
        const ended = signedIn.current;
        setAccount(null);
        const here = window.location.pathname + window.location.search;
        if (ended && !PUBLIC_PATHS.has(window.location.pathname)) {
          location.route(`/sign-in?next=${encodeURIComponent(here)}&expired=1`, true);
        }
      }),
    [location],
  );

  const value = { account, setAccount, refresh, retry, failure, unread, refreshUnread };
  return html`<${SessionContext.Provider} value=${value}>${children}<//>`;
}

export const PUBLIC_PATHS = new Set([
  "/sign-in",
  "/sign-up",
  "/password-reset",
  "/unsubscribe",
  "/deletion-cancel",
]);

/** Renders `children` for a signed-in person; sends anyone else to sign in, then back. */
export function RequireSession({ children }) {
  const { account } = useSession();
  const location = useLocation();
  useEffect(() => {
    if (account === null) {
      location.route(`/sign-in?next=${encodeURIComponent(location.url)}`, true);
    }
  }, [account, location]);
  if (!account) return html`<${Pending} />`;
  return children;
}

/** While it is not known who is signed in: "Loading…", or why not, with a retry. */
export function Pending() {
  const { failure, retry } = useSession();
  if (!failure) return html`<p class="loading" role="status">Loading…</p>`;
  return html`<div class="notice notice-error" role="alert">
    <p><strong>leadmesh could not load your account.</strong> ${failure}</p>
    <p><button type="button" onClick=${retry}>Try again</button></p>
  </div>`;
}
