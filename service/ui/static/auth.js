// The key and the admin token live in this module's memory only: never in a URL, a cookie,
// localStorage or sessionStorage. A reload forgets them (sign in again; a password manager can
// fill the field). Requests send them as `Authorization: Bearer`, which a browser never attaches
// by itself, so another site cannot make a signed-in browser act on the service.

import { h, fill } from "./dom.js";

const tokens = { api: null, admin: null };
const WHAT = {
  api: {
    title: "This service needs an API key",
    label: "API key",
    hint: "The ASR_API_KEY the service was started with.",
  },
  admin: {
    title: "Sign in with the admin token",
    label: "Admin token",
    hint: "The ASR_ADMIN_TOKEN the service was started with. It opens the review and quality pages.",
  },
};

export function token(kind) {
  return tokens[kind];
}

export function setToken(kind, value) {
  tokens[kind] = value || null;
}

/**
 * Show a sign-in form in `slot`. `verify()` is called with the token set and resolves to true
 * when it opened the page; the form then goes away.
 */
export function signIn(slot, kind, verify, { refused = false } = {}) {
  const what = WHAT[kind];
  const id = `signin-${kind}-${slot.closest("section").dataset.page}`;
  const input = h("input", { id, type: "password", autocomplete: "current-password", required: true, spellcheck: "false" });
  const message = h("p", { class: "signin-message", role: "alert" });
  if (refused) message.textContent = "That token was refused: check it and try again.";
  const form = h(
    "form",
    {
      class: "card signin",
      "aria-labelledby": `${id}-title`,
      onsubmit: async (event) => {
        event.preventDefault();
        setToken(kind, input.value.trim());
        message.textContent = "";
        if (await verify()) fill(slot);
        else {
          setToken(kind, null);
          message.textContent = "That token was refused: check it and try again.";
          input.select();
        }
      },
    },
    h("h2", { id: `${id}-title`, text: what.title }),
    // For password managers, which file a secret under a user name: the token's kind.
    h("input", { type: "text", name: "username", autocomplete: "username", value: what.label, hidden: true }),
    h("label", { for: id, text: what.label }),
    input,
    h("p", { class: "hint", text: what.hint }),
    message,
    h("button", { type: "submit", class: "primary", text: "Sign in" }),
  );
  fill(slot, form);
  input.focus();
}
