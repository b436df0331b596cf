// The app: every page at its own address (the gateway answers each with this app), the
// navigation of a signed-in person, and the pages a signed-out person may see.
import { LocationProvider, Router, Route, useLocation } from "preact-iso";
import { html } from "./html.js";
import { del } from "./api.js";
import { Pending, RequireSession, SessionProvider, useSession } from "./session.js";
import { PageTitle } from "./ui.js";
import { DeletionCancel, PasswordReset, SignIn, SignUp, Unsubscribe } from "./pages/auth.js";
import { ConnectionDetail, ConnectionList, ConnectionNew } from "./pages/connections.js";
import { Credentials } from "./pages/credentials.js";
import { Activity, Run } from "./pages/activity.js";
import { Notifications, WebhookLog } from "./pages/logs.js";
import { Account } from "./pages/account.js";

const NAVIGATION = [
  ["/connections", "Connections"],
  ["/credentials", "Credentials"],
  ["/activity", "Activity"],
  ["/webhook-log", "Webhook log"],
  ["/notifications", "Notifications"],
  ["/account", "Account"],
];

function Navigation() {
  const { account, setAccount, unread } = useSession();
  const { path, route } = useLocation();
  if (!account) return null;
  const signOut = async () => {
    try {
      await del("/v1/sessions/current");
    } finally {
      setAccount(null);
      route("/sign-in", true);
    }
  };
  return html`<nav aria-label="Main">
    <ul>
      ${NAVIGATION.map(([href, label]) => {
        const current = path === href || path.startsWith(href + "/") || (href === "/activity" && path.startsWith("/runs/"));
        const badge = href === "/notifications" && unread > 0;
        return html`<li>
          <a href=${href} aria-current=${current ? "page" : undefined}>
            ${label}${badge && html` <span class="badge" aria-label=${`${unread} unread`}>${unread}</span>`}
          </a>
        </li>`;
      })}
    </ul>
    <button type="button" class="link" onClick=${signOut}>Sign out</button>
  </nav>`;
}

function Shell({ children }) {
  return html`<a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <a class="brand" href="/">leadmesh</a>
      <${Navigation} />
    </header>
    <main id="main" tabindex="-1">${children}</main>`;
}

function signedIn(Page) {
  return (props) => html`<${RequireSession}><${Page} ...${props} /><//>`;
}

// Made once: a component made anew at each render would be a new page to Preact, remounted.
const Page = Object.fromEntries(
  Object.entries({ ConnectionList, ConnectionNew, ConnectionDetail, Credentials, Activity, Run,
    WebhookLog, Notifications, Account }).map(([name, page]) => [name, signedIn(page)]),
);

/** `/`: a signed-in person's connections, the sign-in page for anyone else. */
function Home(props) {
  const { account } = useSession();
  if (account === undefined) return html`<${Pending} />`;
  return account ? html`<${ConnectionList} ...${props} />` : html`<${SignIn} ...${props} />`;
}

function NotFound() {
  return html`<${PageTitle}>Page not found<//>
    <p>There is no page at this address. <a href="/">Go to the start page</a>.</p>`;
}

export function App() {
  return html`<${LocationProvider}>
    <${SessionProvider}>
      <${Shell}>
        <${Router}>
          <${Route} path="/" component=${Home} />
          <${Route} path="/sign-in" component=${SignIn} />
          <${Route} path="/sign-up" component=${SignUp} />
          <${Route} path="/password-reset" component=${PasswordReset} />
          <${Route} path="/unsubscribe" component=${Unsubscribe} />
          <${Route} path="/deletion-cancel" component=${DeletionCancel} />
          <${Route} path="/connections" component=${Page.ConnectionList} />
          <${Route} path="/connections/new" component=${Page.ConnectionNew} />
          <${Route} path="/connections/:id" component=${Page.ConnectionDetail} />
          <${Route} path="/credentials" component=${Page.Credentials} />
          <${Route} path="/credentials/:id" component=${Page.Credentials} />
          <${Route} path="/activity" component=${Page.Activity} />
          <${Route} path="/runs/:id" component=${Page.Run} />
          <${Route} path="/webhook-log" component=${Page.WebhookLog} />
          <${Route} path="/notifications" component=${Page.Notifications} />
          <${Route} path="/account" component=${Page.Account} />
          <${Route} default component=${NotFound} />
        <//>
      <//>
    <//>
  <//>`;
}
