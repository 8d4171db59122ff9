// Calls to the service's public API, relative to where the console is served (so a path
// prefix in front of the service is kept), with the in-memory token as a bearer header.

import { token } from "./auth.js";

// This file is /<prefix>/ui/static/api.js: the service's root is two levels up.
export const ROOT = new URL("../../", import.meta.url);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The URL of an API path such as "v1/models" (no leading slash: relative to ROOT). */
export function url(path) {
  return new URL(path, ROOT);
}

/**
 * fetch() an API path with the `kind` token ("api" or "admin"). Resolves to the Response on a
 * 2xx; rejects with ApiError (status 0 when the service did not answer).
 */
export async function request(path, { kind = "api", method = "GET", body, json, signal } = {}) {
  const headers = {};
  const bearer = token(kind);
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(url(path), { method, headers, body, signal, credentials: "omit", cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", "The service did not answer: is it running, and is the network up?");
  }
  if (response.ok) return response;
  let code = `http_${response.status}`;
  let message = `The service answered ${response.status} ${response.statusText}.`;
  try {
    const error = (await response.json()).error;
    if (error && error.message) ({ code, message } = error);
  } catch {
    // not our JSON error shape (a proxy's page): keep the status line
  }
  throw new ApiError(response.status, code, message);
}

/** request() and parse its JSON. */
export async function getJson(path, options) {
  return (await request(path, options)).json();
}
