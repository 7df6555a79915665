import { ApiError, api } from "../api";
import { failure, h, replace } from "../dom";
import { signIn, signOut } from "../session";

/// The sign-in form: an admin token, checked with `whoami` before it is kept (in this tab's
/// memory only). The field is masked text rather than a password field, which browsers offer to
/// save in their password managers.
export function signin(onSignedIn: () => void): HTMLElement {
  const status = h("div");
  const form = h(
    "form",
    { id: "signin" },
    h("h1", {}, "Sign in"),
    h("label", {}, "admin token", h("input", { name: "token", type: "text", class: "masked", required: true, autocomplete: "off", spellcheck: "false" })),
    h("p", {}, h("button", { type: "submit" }, "Sign in")),
    h("p", { class: "muted" }, "The token is kept in this tab only, until you sign out or close it."),
    status,
  ) as HTMLFormElement;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = form.elements.namedItem("token") as HTMLInputElement;
    const token = input.value.trim();
    input.value = "";
    signIn(token);
    try {
      const me = await api<{ role: string }>("GET", "/v1/auth/whoami");
      if (me.role !== "admin") {
        signOut();
        throw new ApiError(403, "KMS_FORBIDDEN_ROLE", [`the token is of role ${me.role}, not admin`]);
      }
      onSignedIn();
    } catch (e) {
      signOut();
      replace(status, failure(e));
    }
  });
  return form;
}
