// The pages of a person who is not signed in: sign in, sign up, a forgotten password and the
// reset link the mail carries, the unsubscribe link and the deletion-cancel link.
import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { cookie, get, post, withQuery } from "../api.js";
import { safeNext, useSession } from "../session.js";
import { Field, FormError, Notice, PageTitle, useForm } from "../ui.js";
import { PURPOSES } from "./account.js";

export function SignIn() {
  const { query, route } = useLocation();
  const { refresh } = useSession();
  const remembered = cookie("lm_email");
  const form = useForm({ email: remembered, password: "", remember_email: Boolean(remembered) });
  const { values, set, errors } = form;
  const signIn = form.submit(async (body) => {
    try {
      await post("/v1/sessions", body);
    } catch (error) {
      // A CSRF cookie that no longer matches the session beside it (what sent the person
      // here): any signed-in read sets both afresh, then the sign-in goes through.
      if (error.code !== "CSRF_TOKEN_INVALID") throw error;
      await get("/v1/me").catch(() => null);
      await post("/v1/sessions", body);
    }
    await refresh();
    route(safeNext(query.next), true);
  });
  return html`<section class="narrow">
    <${PageTitle}>Sign in<//>
    ${query.expired && html`<${Notice}>Your session has ended. Please sign in again.<//>`}
    ${query.created && html`<${Notice} kind="ok">Your account is ready. Sign in to start.<//>`}
    ${query.reset && html`<${Notice} kind="ok">Your new password is set. Sign in with it.<//>`}
    ${query.deleted && html`<${Notice}>
      Your account is closed and will be erased. We have sent you an e-mail with a link to cancel
      the deletion if you change your mind.
    <//>`}
    <form onSubmit=${signIn} novalidate>
      <${Field} label="E-mail" name="email" type="email" autocomplete="username" required
        value=${values.email} onInput=${set("email")} error=${errors.email} />
      <${Field} label="Password" name="password" type="password" autocomplete="current-password"
        required value=${values.password} onInput=${set("password")} error=${errors.password} />
      <${Field} label="Remember my e-mail" name="remember_email" type="checkbox"
        checked=${values.remember_email} onChange=${set("remember_email")} />
      <${FormError} error=${form.formError} />
      <div class="actions"><button type="submit" disabled=${form.busy}>Sign in</button></div>
    </form>
    <p><a href="/password-reset">Forgot your password?</a></p>
    <p>New to leadmesh? <a href="/sign-up">Create an account</a></p>
  </section>`;
}

export function SignUp() {
  const { route } = useLocation();
  const form = useForm({ email: "", password: "" });
  const { values, set, errors } = form;
  const signUp = form.submit(async (body) => {
    await post("/v1/accounts", body);
    route(`/sign-in?created=1`, true);
  });
  return html`<section class="narrow">
    <${PageTitle}>Create an account<//>
    <form onSubmit=${signUp} novalidate>
      <${Field} label="E-mail" name="email" type="email" autocomplete="email" required
        value=${values.email} onInput=${set("email")} error=${errors.email} />
      <${Field} label="Password" name="password" type="password" autocomplete="new-password"
        required value=${values.password} onInput=${set("password")} error=${errors.password}
        hint="At least 12 characters; a long phrase of words you remember is best." />
      <${FormError} error=${form.formError} />
      <div class="actions"><button type="submit" disabled=${form.busy}>Create account</button></div>
    </form>
    <p>Already have an account? <a href="/sign-in">Sign in</a></p>
  </section>`;
}

/** `/password-reset`: asks for a link by mail, or, with the mail's `?token=`, sets the new password. */
export function PasswordReset() {
  const { query } = useLocation();
  return query.token ? html`<${NewPassword} token=${query.token} />` : html`<${ForgotPassword} />`;
}

function ForgotPassword() {
  const [sent, setSent] = useState(false);
  const form = useForm({ email: "" });
  const { values, set, errors } = form;
  const ask = form.submit(async (body) => {
    await post("/v1/password-resets", body);
    setSent(true);
  });
  // The same answer whether or not the address has an account: the page never tells who is a user.
  const done = html`<${Notice} kind="ok">
      If an account uses ${values.email}, we have sent it an e-mail with a link to choose a new
      password. The link works once; the e-mail says for how long. Nothing arrived? Check your spam
      folder, or ask again in a few minutes.
    <//>
    <p><a href="/sign-in">Back to sign in</a></p>`;
  return html`<section class="narrow">
    <${PageTitle}>Forgot your password?<//>
    ${sent ? done : html`<p>Enter the e-mail address of your account, and we will send you a link to
        choose a new password.</p>
      <form onSubmit=${ask} novalidate>
        <${Field} label="E-mail" name="email" type="email" autocomplete="username" required
          value=${values.email} onInput=${set("email")} error=${errors.email} />
        <${FormError} error=${form.formError} />
        <div class="actions"><button type="submit" disabled=${form.busy}>Send reset link</button></div>
      </form>
      <p><a href="/sign-in">Back to sign in</a></p>`}
  </section>`;
}

function NewPassword({ token }) {
  const { route } = useLocation();
  const { setAccount } = useSession();
  const form = useForm({ new_password: "" });
  const { values, set, errors } = form;
  const save = form.submit(async ({ new_password }) => {
    await post("/v1/password-resets/confirm", { token, new_password });
    setAccount(null); // the reset ends every session, this browser's too
    route("/sign-in?reset=1", true);
  });
  return html`<section class="narrow">
    <${PageTitle}>Choose a new password<//>
    <form onSubmit=${save} novalidate>
      <${Field} label="New password" name="new_password" type="password" autocomplete="new-password"
        required value=${values.new_password} onInput=${set("new_password")}
        error=${errors.new_password}
        hint="At least 12 characters. Every session of your account ends, so sign in again afterwards." />
      <${FormError} error=${form.formError} />
      ${errors.token && html`<p><a href="/password-reset">Ask for a new reset link</a></p>`}
      <div class="actions"><button type="submit" disabled=${form.busy}>Set new password</button></div>
    </form>
  </section>`;
}

/** `/unsubscribe?token=`: the marketing mail's link. Opening it changes nothing (link scanners
 * open every link in a mail); only the button, a POST, withdraws the consent. */
export function Unsubscribe() {
  const { query } = useLocation();
  const [purpose, setPurpose] = useState("");
  const form = useForm({});
  const unsubscribe = form.submit(async () => {
    const reply = await post(withQuery("/v1/unsubscribe", { token: query.token }));
    setPurpose(reply.purpose);
  });
  const topic = PURPOSES[purpose]?.label.toLowerCase() ?? "these e-mails";
  return html`<section class="narrow">
    <${PageTitle}>Unsubscribe<//>
    ${purpose
      ? html`<${Notice} kind="ok">You are unsubscribed: we will send you no more e-mails about ${topic}.<//>
          <p>You can choose what we send you at any time under <a href="/account#consents">Account</a>.</p>`
      : html`<p>Do you want to stop receiving these e-mails from leadmesh? Mails about your account
            itself, such as password resets, still reach you.</p>
          <form onSubmit=${unsubscribe}>
            <${FormError} error=${query.token ? form.formError : "This link is incomplete. Open the link from the e-mail again."} />
            <div class="actions">
              <button type="submit" disabled=${form.busy || !query.token}>Unsubscribe</button>
            </div>
          </form>`}
  </section>`;
}

/** `/deletion-cancel?token=`: the deletion confirmation mail's link; keeps the account. */
export function DeletionCancel() {
  const { query } = useLocation();
  const [kept, setKept] = useState(false);
  const form = useForm({});
  const cancel = form.submit(async () => {
    await post("/v1/deletion-cancellations", { token: query.token ?? "" });
    setKept(true);
  });
  return html`<section class="narrow">
    <${PageTitle}>Cancel the deletion of your account<//>
    ${kept
      ? html`<${Notice} kind="ok">Your account is active again, with everything in it.<//>
          <p><a href="/sign-in">Sign in</a> to continue; connections may take up to a minute to accept
            webhooks again.</p>`
      : html`<p>You asked us to delete your leadmesh account. During the grace period nothing is
            erased yet: cancel the deletion and your account, its connections and credentials are
            back as they were.</p>
          <form onSubmit=${cancel}>
            <${FormError} error=${form.formError} />
            <div class="actions"><button type="submit" disabled=${form.busy}>Cancel the deletion</button></div>
          </form>`}
  </section>`;
}
