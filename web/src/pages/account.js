// The account: e-mail and plan, password, sessions, login history, consents, egress addresses,
// the export of one's data, and the deletion of the account.
import { html } from "../html.js";
import { PageTitle } from "../ui.js";

export function Account() {
  return html`<${PageTitle}>Account<//>`;
}
