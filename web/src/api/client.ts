// One fetch wrapper for the node's JSON API: the bearer token on every call, one refresh
// when the access token has expired, and errors as `ApiError` carrying the stable code.
import type { TokenPair } from "./types";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/** A message for people: the server's, or a plain one when the network failed. */
export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.message || e.code;
  if (e instanceof Error) return e.message;
  return String(e);
}

export interface TokenStore {
  get(): TokenPair | null;
  set(tokens: TokenPair | null): void;
}

let tokens: TokenStore = {
  get: () => null,
  set: () => {},
};

export function useTokenStore(store: TokenStore) {
  tokens = store;
}

export function accessToken(): string | null {
  return tokens.get()?.access_token ?? null;
}

let refreshing: Promise<boolean> | null = null;

/** Trades the refresh token for a new pair, once at a time; false if the session is over. */
export function refreshTokens(): Promise<boolean> {
  if (refreshing) return refreshing;
  const current = tokens.get();
  if (!current?.refresh_token) return Promise.resolve(false);
  refreshing = (async () => {
    try {
      const pair = await request<TokenPair>("POST", "/api/v1/auth/refresh-token", {
        body: { refresh_token: current.refresh_token },
        auth: false,
      });
      tokens.set(pair);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) tokens.set(null);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

interface Options {
  body?: unknown;
  rawBody?: BodyInit;
  contentType?: string;
  auth?: boolean;
  signal?: AbortSignal;
  text?: boolean;
}

export async function request<T>(method: string, path: string, opts: Options = {}): Promise<T> {
  const send = async () => {
    const headers: Record<string, string> = { accept: "application/json" };
    const token = accessToken();
    if (opts.auth !== false && token) headers.authorization = `Bearer ${token}`;
    let body: BodyInit | undefined;
    if (opts.rawBody !== undefined) {
      body = opts.rawBody;
      headers["content-type"] = opts.contentType ?? "text/plain";
    } else if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers["content-type"] = "application/json";
    }
    return fetch(path, { method, headers, body, signal: opts.signal });
  };
  let res = await send();
  if (res.status === 401 && opts.auth !== false && accessToken()) {
    const code = await peekCode(res.clone());
    if ((code === "token_expired" || code === "invalid_token") && (await refreshTokens())) res = await send();
  }
  if (!res.ok) throw await toError(res);
  if (opts.text) return (await res.text()) as T;
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

async function peekCode(res: Response): Promise<string | undefined> {
  try {
    return (await res.json())?.error?.code;
  } catch {
    return undefined;
  }
}

async function toError(res: Response): Promise<ApiError> {
  const retry = Number(res.headers.get("retry-after")) || undefined;
  try {
    const body = await res.json();
    if (body?.error?.code) return new ApiError(res.status, body.error.code, body.error.message ?? body.error.code, retry);
  } catch {
    /* not JSON */
  }
  return new ApiError(res.status, `http_${res.status}`, `the server answered ${res.status} ${res.statusText}`, retry);
}

export const api = {
  get: <T>(path: string, opts?: Options) => request<T>("GET", path, opts),
  post: <T>(path: string, body?: unknown, opts?: Options) => request<T>("POST", path, { ...opts, body: body ?? {} }),
};
