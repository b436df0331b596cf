// The pages of a person who is not signed in: sign in, sign up, a forgotten password and the
// reset link the mail carries, the unsubscribe link and the deletion-cancel link.
import { useLocation } from "preact-iso";
import { html } from "../html.js";
import { cookie, post } from "../api.js";
import { safeNext, useSession } from "../session.js";
import { Field, FormError, Notice, PageTitle, useForm } from "../ui.js";

export function SignIn() {
  const { query, route } = useLocation();
  const { refresh } = useSession();
  const remembered = cookie("lm_email");
  const form = useForm({ email: remembered, password: "", remember_email: Boolean(remembered) });
  const { values, set, errors } = form;
  const signIn = form.submit(async (body) => {
    await post("/v1/sessions", body);
    await refresh();
    route(safeNext(query.next), true);
  });
  return html`<section class="narrow">
    <${PageTitle}>Sign in<//>
    ${query.expired && html`<${Notice}>Your session has ended. Please sign in again.<//>`}
    ${query.created && html`<${Notice} kind="ok">Your account is ready. Sign in to start.<//>`}
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

export function PasswordReset() {
  return html`<${PageTitle}>Reset your password<//>`;
}

export function Unsubscribe() {
  return html`<${PageTitle}>Unsubscribe<//>`;
}

export function DeletionCancel() {
  return html`<${PageTitle}>Cancel the deletion of your account<//>`;
}
