// The account: e-mail and plan, password, sessions, login history, consents, egress addresses,
// the export of one's data, and the deletion of the account.
import { useCallback, useEffect, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { api, del, get, put } from "../api.js";
import { useSession } from "../session.js";
import { ConfirmButton, CopyButton, Field, FormError, Notice, PageTitle, Pager, Time, useForm, useLoad, usePaged } from "../ui.js";

/** The purposes of identity's consents (services/identity/consents.py), in plain words. */
export const PURPOSES = {
  execution_notifications: {
    label: "Notifications about your connections",
    description: "E-mails when a connection keeps failing, is paused, or needs a credential reconnected.",
  },
  business_matters: {
    label: "Business matters",
    description: "E-mails about your plan, your invoices and changes to our terms.",
  },
  new_features: {
    label: "New features",
    description: "An occasional e-mail about what is new in leadmesh.",
  },
};

/** A plan's name for people: "pro" → "Pro". */
const planTitle = (name) => name.charAt(0).toUpperCase() + name.slice(1).replaceAll("_", " ");

/** "Pro — €29.00" (the amount is in the currency's minor unit); "Free" at 0. */
function planOffer(plan) {
  if (!plan.amount) return planTitle(plan.name);
  const money = new Intl.NumberFormat(undefined, { style: "currency", currency: plan.currency });
  const price = money.format(plan.amount / 10 ** money.resolvedOptions().maximumFractionDigits);
  return `${planTitle(plan.name)} — ${price}`;
}

export function Account() {
  // Bumped when other sessions end (a password change ends them too), so the list is read again.
  const [sessionsVersion, setSessionsVersion] = useState(0);
  const sessionsChanged = useCallback(() => setSessionsVersion((n) => n + 1), []);
  // The plans on offer and the deletion periods, as the operator set them.
  const { value: terms, error } = useLoad("/v1/terms");
  return html`<${PageTitle}>Account<//>
    <${Overview} />
    ${error && html`<${Notice} kind="error">${error}<//>`}
    ${terms ? html`<${PlanSection} plans=${terms.plans} />` : html`<p class="loading" role="status">Loading…</p>`}
    <${PasswordSection} onChanged=${sessionsChanged} />
    <${SessionsSection} version=${sessionsVersion} />
    <${LoginHistory} />
    <${Consents} />
    <${EgressAddresses} />
    <${YourData} />
    ${terms && html`<${DeleteAccount} terms=${terms} />`}`;
}

function Section({ id, title, children }) {
  return html`<section class="card" id=${id} aria-labelledby=${`${id}-title`}>
    <h2 id=${`${id}-title`}>${title}</h2>
    ${children}
  </section>`;
}

function Overview() {
  const { account } = useSession();
  const address = account.billing_address;
  return html`<${Section} id="overview" title="Your account">
    <dl class="facts">
      <dt>E-mail</dt><dd>${account.email}</dd>
      <dt>Plan</dt><dd>${planTitle(account.plan)}</dd>
      ${account.billing_name && html`<dt>Billing name</dt><dd>${account.billing_name}</dd>`}
      ${address && html`<dt>Billing address</dt>
        <dd>${[address.line1, address.line2, `${address.postal_code} ${address.city}`, address.country]
          .filter((line) => line && line.trim()).join(", ")}</dd>`}
      <dt>Member since</dt><dd><${Time} value=${account.create_time} /></dd>
    </dl>
  <//>`;
}

function PlanSection({ plans }) {
  const { account, setAccount } = useSession();
  const address = account.billing_address ?? {};
  const [saved, setSaved] = useState("");
  const form = useForm({
    plan: account.plan, billing_name: account.billing_name ?? "", line1: address.line1 ?? "",
    line2: address.line2 ?? "", city: address.city ?? "", postal_code: address.postal_code ?? "",
    country: address.country ?? "", payment_reference: "",
  });
  const { values, set, errors } = form;
  const paid = (plans.find((p) => p.name === values.plan)?.amount ?? 0) > 0;
  const change = form.submit(async ({ plan, billing_name, payment_reference, ...billing_address }) => {
    setSaved("");
    const body = paid ? { plan, billing_name, billing_address, payment_reference } : { plan };
    const updated = await put("/v1/me/plan", body);
    setAccount(updated);
    setSaved(`Your plan is now ${planTitle(updated.plan)}.`);
  });
  const text = (label, name, props = {}) => html`<${Field} label=${label} name=${name}
    value=${values[name]} onInput=${set(name)} error=${errors[name]} ...${props} />`;
  return html`<${Section} id="plan" title="Plan">
    <p>Paid plans are paid at our payment processor; enter the payment reference it gives you.
      Never enter card details here: we refuse them.</p>
    <form class="account-form" onSubmit=${change} novalidate>
      <${Field} as="select" label="Plan" name="plan" value=${values.plan} onChange=${set("plan")}
        error=${errors.plan}>
        ${plans.map((plan) => html`<option key=${plan.name} value=${plan.name}>${planOffer(plan)}</option>`)}
      <//>
      ${paid && html`
        ${text("Billing name", "billing_name", { autocomplete: "name" })}
        <fieldset>
          <legend>Billing address</legend>
          ${text("Address line 1", "line1", { autocomplete: "address-line1" })}
          ${text("Address line 2", "line2", { autocomplete: "address-line2" })}
          <div class="split">
            ${text("Postal code", "postal_code", { autocomplete: "postal-code" })}
            ${text("City", "city", { autocomplete: "address-level2" })}
          </div>
          ${text("Country", "country", { autocomplete: "country", maxlength: 2,
            hint: "The two-letter code, for example DE, FR or GB." })}
        </fieldset>
        ${text("Payment reference", "payment_reference",
          { hint: "The reference of your payment at the payment processor." })}`}
      <${FormError} error=${form.formError} />
      ${saved && html`<${Notice} kind="ok">${saved}<//>`}
      <div class="actions"><button type="submit" disabled=${form.busy}>Change plan</button></div>
    </form>
  <//>`;
}

function PasswordSection({ onChanged }) {
  const [done, setDone] = useState(false);
  const form = useForm({ current_password: "", new_password: "" });
  const { values, set, errors } = form;
  const change = form.submit(async (body) => {
    setDone(false);
    await put("/v1/me/password", body); // this session continues under a new token (cookies)
    form.setValues({ current_password: "", new_password: "" });
    setDone(true);
    onChanged();
  });
  return html`<${Section} id="password" title="Password">
    <form class="account-form" onSubmit=${change} novalidate>
      <${Field} label="Current password" name="current_password" type="password"
        autocomplete="current-password" value=${values.current_password}
        onInput=${set("current_password")} error=${errors.current_password} />
      <${Field} label="New password" name="new_password" type="password" autocomplete="new-password"
        value=${values.new_password} onInput=${set("new_password")} error=${errors.new_password}
        hint="At least 12 characters. Your other sessions end; this one continues." />
      <${FormError} error=${form.formError} />
      ${done && html`<${Notice} kind="ok">Your password is changed, and your other sessions are signed out.<//>`}
      <div class="actions"><button type="submit" disabled=${form.busy}>Change password</button></div>
    </form>
  <//>`;
}

/** "Chrome on Linux" from a user agent; the whole text when it is none we know. */
function device(agent) {
  if (!agent) return "Unknown device";
  const find = (pairs) => pairs.find(([mark]) => agent.includes(mark))?.[1];
  const browser = find([["Edg/", "Edge"], ["OPR/", "Opera"], ["Firefox/", "Firefox"],
    ["Chrome/", "Chrome"], ["Safari/", "Safari"]]);
  const system = find([["Windows", "Windows"], ["Android", "Android"], ["iPhone", "iPhone"],
    ["iPad", "iPad"], ["Mac OS X", "macOS"], ["CrOS", "ChromeOS"], ["Linux", "Linux"]]);
  return browser && system ? `${browser} on ${system}` : agent;
}

function SessionsSection({ version }) {
  const [sessions, setSessions] = useState(null);
  const [error, setError] = useState("");
  const [ended, setEnded] = useState(null);
  const [busy, setBusy] = useState(false);
  const load = useCallback(async () => {
    try {
      setSessions((await get("/v1/me/sessions")).items);
    } catch (failure) {
      setError(failure.message);
    }
  }, []);
  useEffect(() => {
    load();
  }, [load, version]);
  const endOthers = async () => {
    setBusy(true);
    setError("");
    try {
      setEnded((await del("/v1/me/sessions/others")).revoked_count);
      await load();
    } catch (failure) {
      setError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  const others = (sessions ?? []).filter((s) => !s.current).length;
  return html`<${Section} id="sessions" title="Sessions">
    <p>Where your account is signed in now. A session you do not recognise? Sign out everywhere
      else, then change your password.</p>
    ${sessions === null && !error && html`<p class="loading" role="status">Loading…</p>`}
    ${sessions && html`<div class="table-wrap"><table>
      <thead><tr><th scope="col">Device</th><th scope="col">IP address</th>
        <th scope="col">Signed in</th><th scope="col">Last used</th></tr></thead>
      <tbody>${sessions.map((s) => html`<tr key=${s.id}>
        <td data-label="Device"><span title=${s.user_agent}>${device(s.user_agent)}</span>
          ${s.current && html` <span class="status status-active">This session</span>`}</td>
        <td data-label="IP address">${s.ip_address || "—"}</td>
        <td data-label="Signed in"><${Time} value=${s.create_time} /></td>
        <td data-label="Last used"><${Time} value=${s.last_use_time} /></td>
      </tr>`)}</tbody>
    </table></div>`}
    <${FormError} error=${error} />
    ${ended !== null && html`<${Notice} kind="ok">${ended === 0 ? "There were no other sessions to sign out."
      : `Signed out of ${ended} other session${ended === 1 ? "" : "s"}.`}<//>`}
    <div class="actions">
      <button type="button" class="secondary" onClick=${endOthers} disabled=${busy || (sessions && !others)}>
        Sign out everywhere else
      </button>
    </div>
  <//>`;
}

const OUTCOMES = {
  success: ["Signed in", "ok"],
  bad_password: ["Wrong password", "failed"],
  throttled: ["Held back: too many attempts", "failed"],
  disabled: ["Account closed", "failed"],
};

function LoginHistory() {
  const list = usePaged("/v1/me/login-history", {}, { pageSize: 10 });
  return html`<${Section} id="login-history" title="Login history">
    <p>Every attempt to sign in to your account, newest first. IP addresses are kept 90 days.</p>
    ${list.error && html`<${FormError} error=${list.error} />`}
    ${!list.loading && !list.error && list.items.length === 0 && html`<p class="empty">No sign-ins yet.</p>`}
    ${list.items.length > 0 && html`<div class="table-wrap"><table>
      <thead><tr><th scope="col">Time</th><th scope="col">Outcome</th><th scope="col">IP address</th>
        <th scope="col">Device</th></tr></thead>
      <tbody>${list.items.map((attempt, index) => {
        const [label, kind] = OUTCOMES[attempt.outcome] ?? [attempt.outcome, "failed"];
        return html`<tr key=${index}>
          <td data-label="Time"><${Time} value=${attempt.attempt_time} /></td>
          <td data-label="Outcome"><span class=${`status status-${kind}`}>${label}</span></td>
          ${attempt.details_purged
            ? html`<td colspan="2" class="empty" data-label="Details">Removed after the retention period</td>`
            : html`<td data-label="IP address">${attempt.ip_address || "—"}</td>
              <td data-label="Device">${device(attempt.user_agent)}</td>`}
        </tr>`;
      })}</tbody>
    </table></div>`}
    ${list.loading && html`<p class="loading" role="status">Loading…</p>`}
    <${Pager} list=${list} label="Show older attempts" />
  <//>`;
}

function Consents() {
  const [consents, setConsents] = useState(null);
  const [status, setStatus] = useState({ kind: "", text: "" });
  useEffect(() => {
    get("/v1/me/consents").then(
      (reply) => setConsents(reply.items),
      (failure) => setStatus({ kind: "error", text: failure.message }),
    );
  }, []);
  const mark = (purpose, granted) =>
    setConsents((old) => old.map((c) => (c.purpose === purpose ? { ...c, granted } : c)));
  const toggle = (purpose) => async (event) => {
    const granted = event.currentTarget.checked;
    mark(purpose, granted); // the box shows the choice at once; a refusal puts it back
    setStatus({ kind: "", text: "" });
    try {
      const reply = await put("/v1/me/consents", { items: [{ purpose, granted }] });
      setConsents(reply.items);
      const label = PURPOSES[purpose]?.label ?? purpose;
      setStatus({ kind: "ok", text: `Saved: ${label} ${granted ? "on" : "off"}.` });
    } catch (failure) {
      mark(purpose, !granted);
      setStatus({ kind: "error", text: failure.message });
    }
  };
  return html`<${Section} id="consents" title="Consents">
    <p>Which e-mails we may send you. Mails about your account itself, such as password resets,
      always reach you.</p>
    ${consents === null && !status.text && html`<p class="loading" role="status">Loading…</p>`}
    ${(consents ?? []).map((consent) => html`<${Field} key=${consent.purpose} type="checkbox" class="consent"
      label=${PURPOSES[consent.purpose]?.label ?? consent.purpose} name=${consent.purpose}
      hint=${PURPOSES[consent.purpose]?.description} checked=${consent.granted}
      onChange=${toggle(consent.purpose)} />`)}
    ${status.kind === "ok" && html`<${Notice} kind="ok">${status.text}<//>`}
    ${status.kind === "error" && html`<${FormError} error=${status.text} />`}
  <//>`;
}

function EgressAddresses() {
  const [addresses, setAddresses] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    get("/v1/egress-ips").then((reply) => setAddresses(reply.addresses), (failure) => setError(failure.message));
  }, []);
  return html`<${Section} id="egress" title="Egress addresses">
    <p>leadmesh calls your APIs from these addresses. If your API only accepts known callers, add
      them to its allowlist.</p>
    <${FormError} error=${error} />
    ${addresses === null && !error && html`<p class="loading" role="status">Loading…</p>`}
    ${addresses && addresses.length === 0 && html`<p class="empty">No fixed addresses are set up on
      this installation, so there is nothing to allowlist. Ask your administrator if your API needs one.</p>`}
    ${addresses && addresses.length > 0 && html`<ul class="egress-list">
        ${addresses.map((address) => html`<li key=${address}><code>${address}</code></li>`)}
      </ul>
      <div class="actions"><${CopyButton} text=${addresses.join("\n")} label="Copy the addresses" /></div>`}
  <//>`;
}

function YourData() {
  return html`<${Section} id="your-data" title="Your data">
    <p>Everything leadmesh holds about you, in one JSON file: your account, sessions, login history
      and consents, your credentials (without their secrets), connections, runs and logs.</p>
    <p><a class="button" href="/v1/me/export" download="leadmesh-export.json">Download my data</a></p>
  <//>`;
}

const days = (n) => `${n} ${n === 1 ? "day" : "days"}`;

function DeleteAccount({ terms }) {
  const { route } = useLocation();
  const { setAccount } = useSession();
  const form = useForm({ password: "" });
  const { values, set, errors } = form;
  const grace = terms.deletion_grace_days;
  const erasure = [
    grace
      ? `We send you an e-mail with a link to cancel the deletion; it works for ${days(grace)}. After that, everything`
      : "A deletion cannot be cancelled: everything",
    `of your account is irrevocably erased within ${days(terms.erase_after_days)} of your request.`,
    "Only the accounting records of paid plans are kept, as the law requires.",
  ].join(" ");
  const remove = form.submit(async ({ password }) => {
    await api("DELETE", "/v1/me", { password });
    route("/sign-in?deleted=1", true);
    setAccount(null);
  });
  return html`<${Section} id="delete" title="Delete account">
    <p>Deleting your account signs you out everywhere at once: nobody can sign in to it any more,
      its webhooks stop accepting leads and its schedules stop.</p>
    <p>${erasure}</p>
    <form class="account-form" onSubmit=${(event) => event.preventDefault()} novalidate>
      <${Field} label="Password" name="password" type="password" autocomplete="current-password"
        value=${values.password} onInput=${set("password")} error=${errors.password}
        hint="Your password, to confirm that it is you." />
      <${FormError} error=${form.formError} />
      <div class="actions">
        <${ConfirmButton} label="Delete my account" question="Delete your account?"
          confirmLabel="Yes, delete my account" onConfirm=${remove}>
          <p>You will be signed out now.${grace
            ? ` You can cancel within ${days(grace)} with the link in the e-mail.`
            : " This cannot be undone."}</p>
        <//>
      </div>
    </form>
  <//>`;
}
