// The webhook log and the notifications (mark as read; the unread count is in the navigation).
import { html } from "../html.js";
import { PageTitle } from "../ui.js";

export function WebhookLog() {
  return html`<${PageTitle}>Webhook log<//>`;
}

export function Notifications() {
  return html`<${PageTitle}>Notifications<//>`;
}
