// Activity: runs newest first, filtered, refreshing while some are under way; one run's page.
import { html } from "../html.js";
import { PageTitle } from "../ui.js";

export function Activity() {
  return html`<${PageTitle}>Activity<//>`;
}

export function Run({ id }) {
  return html`<${PageTitle}>Run<//><p>${id}</p>`;
}
