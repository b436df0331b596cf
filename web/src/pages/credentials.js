// Credentials: the list (never a secret), add an API key or login, connect with OAuth, delete.
import { html } from "../html.js";
import { PageTitle } from "../ui.js";

export function Credentials() {
  return html`<${PageTitle}>Credentials<//>`;
}
