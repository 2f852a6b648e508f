// What every spec shares: the node's API (to set the scene fast), signing a browser context
// in, the accessibility check and screenshots.
import { expect, type Browser, type BrowserContext, type Page } from "@playwright/test";
import AxeBuilder from "@axe-core/playwright";
import { createHmac } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const BASE_URL = process.env.BASE_URL ?? "http://127.0.0.1:5173";
export const ADMIN = { username: process.env.CANOPY_ADMIN_USER ?? "root", password: process.env.CANOPY_ADMIN_PASSWORD ?? "" };
const SCREENSHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), "screenshots");
const PASSWORD = "a long voter password for tests";

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

export async function call<T = any>(method: string, route: string, token?: string, body?: unknown, contentType = "application/json"): Promise<T> {
  const res = await fetch(BASE_URL + route, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { "content-type": contentType } : {}),
    },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return (text ? JSON.parse(text) : undefined) as T;
}

export const unique = (prefix: string) => `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

export async function login(username: string, password: string): Promise<TokenPair> {
  return call("POST", "/api/v1/auth/login", undefined, { username, password });
}

export async function admin(): Promise<TokenPair> {
  return login(ADMIN.username, ADMIN.password);
}

export interface Voter {
  username: string;
  password: string;
  userId: string;
  tokens: TokenPair;
}

export async function newVoter(prefix = "voter"): Promise<Voter> {
  const username = unique(prefix);
  const { user_id } = await call("POST", "/api/v1/auth/register", undefined, { username, password: PASSWORD });
  return { username, password: PASSWORD, userId: user_id, tokens: await login(username, PASSWORD) };
}

export async function createDecision(token: string, body: Record<string, unknown>) {
  return call("POST", "/api/v1/voting/decision/create", token, {
    description: "Made by the browser tests.",
    region: "test-region",
    closes_at: (Date.now() + 3600_000) * 1000,
    quorum: 1,
    ...body,
  });
}

/** A browser context already signed in as `who` (the client keeps its session in localStorage). */
export async function signedInContext(browser: Browser, who: { username: string; tokens: TokenPair }, options = {}): Promise<BrowserContext> {
  const context = await browser.newContext(options);
  await context.addInitScript(
    ([key, value]) => {
      if (!localStorage.getItem(key)) localStorage.setItem(key, value);
    },
    ["canopy.tokens", JSON.stringify({ tokens: who.tokens, username: who.username })],
  );
  return context;
}

/**
 * No serious or critical axe violation on the page as it stands, once its transitions have
 * ended: axe reads colours mid-fade (a dialog closing, a ripple) as contrast failures.
 */
export async function expectAccessible(page: Page, name: string) {
  await page.waitForFunction(() =>
    document.getAnimations().every((a) => a.playState !== "running" || a.effect?.getComputedTiming().endTime === Infinity),
  );
  const results = await new AxeBuilder({ page }).analyze();
  const bad = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  const summary = bad.map((v) => `${v.id} (${v.impact}): ${v.help}\n  ${v.nodes.map((n) => n.target.join(" ")).slice(0, 5).join("\n  ")}`);
  expect(summary, `accessibility of ${name}`).toEqual([]);
}

export async function screenshot(page: Page, name: string) {
  await page.evaluate(() => window.scrollTo(0, 0)); // else the sticky app bar lands mid-page
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** Whether the node answers socket.io (the live server side). */
export async function socketServerUp(): Promise<boolean> {
  try {
    const res = await fetch(`${BASE_URL}/socket.io/?EIO=4&transport=polling`);
    return res.ok;
  } catch {
    return false;
  }
}

/** The RFC 6238 code an authenticator app shows for `secretBase32` now (SHA-1, 6 digits, 30 s). */
export function totpCode(secretBase32: string, at = Date.now()): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secretBase32.replace(/=+$/, "").toUpperCase()) {
    const value = alphabet.indexOf(c);
    if (value < 0) throw new Error(`not base32: ${secretBase32}`);
    bits += value.toString(2).padStart(5, "0");
  }
  const key = Buffer.from((bits.match(/.{8}/g) ?? []).map((byte) => parseInt(byte, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 1000 / 30)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  return ((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).toString().padStart(6, "0");
}
