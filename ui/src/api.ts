// The JSON API, as every other client speaks it: a bearer token, JSON in and out, and a refusal
// as its reason code, status and diagnostics (never a value).
import { currentToken, signOut } from "./session";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly diagnostics: string[],
  ) {
    super(diagnostics.length ? `${reason} (${diagnostics.join(", ")})` : reason);
  }
}

type Json = Record<string, unknown>;

export async function api<T = Json>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  const token = currentToken();
  if (token) headers["Authorization"] = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  const text = await response.text();
  let parsed: Json = {};
  try {
    parsed = text ? (JSON.parse(text) as Json) : {};
  } catch {
    parsed = {};
  }
  if (!response.ok) {
    if (response.status === 401) signOut();
    const reason = typeof parsed.reason_code === "string" ? parsed.reason_code : `HTTP ${response.status}`;
    const diagnostics = Array.isArray(parsed.diagnostics) ? (parsed.diagnostics as string[]) : [];
    throw new ApiError(response.status, reason, diagnostics);
  }
  return parsed as T;
}

/// A path segment: tenant ids and secret names (whose slashes are encoded, so that a name is
/// one segment).
export function seg(value: string): string {
  return encodeURIComponent(value);
}
