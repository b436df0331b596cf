// Connections: the list, a new one, one connection (edit, webhook URL, pause, run now, delete).
import { html } from "../html.js";
import { PageTitle } from "../ui.js";

export function ConnectionList() {
  return html`<${PageTitle}>Connections<//>`;
}

export function ConnectionNew() {
  return html`<${PageTitle}>New connection<//>`;
}

export function ConnectionDetail({ id }) {
  return html`<${PageTitle}>Connection<//><p>${id}</p>`;
}
