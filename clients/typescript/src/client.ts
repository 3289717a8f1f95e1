// The gateway side: sends events to hookrelay, signed, idempotent and retried.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { HookrelayError, type ApiErrorCode } from "./errors.js";
import type { components } from "./generated/openapi.js";
import { signingKey, signRequest } from "./signing.js";

/** One LLM call, as `POST /api/webhook/usage` takes it. */
export type UsageEvent = components["schemas"]["UsageEvent"];
/** The body of `POST /api/v1/events`. */
export type EventRequest = components["schemas"]["EventRequest"];
/** hookrelay's answer to one stored event. */
export type Accepted = components["schemas"]["Accepted"];
/** hookrelay's answer to a stored array of events. */
export type BatchAccepted = components["schemas"]["BatchAccepted"];
/** hookrelay's error body. */
export type ApiError = components["schemas"]["ApiError"];
/** `GET /api/v1/health`: the status report. */
export type StatusReport = components["schemas"]["StatusReport"];

/**
 * The `data` that `sendEvent(type, …)` takes: hookrelay validates a `usage.tracked` event's
 * data as a usage event, so the compiler does too; other types carry any JSON.
 */
export type EventData<Type extends string> = Type extends "usage.tracked" ? UsageEvent : EventRequest["data"];

export interface HookrelayClientOptions {
  /** Where hookrelay listens, e.g. `https://hookrelay.internal:8000`. */
  baseUrl: string | URL;
  /** One of hookrelay's HOOKRELAY_INGEST_SECRET values; requests go unsigned without it. */
  ingestSecret?: string;
  /** HOOKRELAY_ADMIN_TOKEN, for the management calls (`health()`). */
  adminToken?: string;
  /** Retries after the first attempt, for 429, 503, 507 and network errors. Default 3. */
  maxRetries?: number;
  /**
   * The longest single wait before a retry, in milliseconds. Default 30 000. When the server
   * asks (`Retry-After`) for longer, the error is thrown at once rather than retried early
   * into another refusal: the caller decides whether to wait that long.
   */
  maxRetryWaitMs?: number;
  /** Timeout of one attempt, in milliseconds; a timed-out attempt is retried. Default 10 000. */
  timeoutMs?: number;
  /** A fetch implementation, e.g. to add a proxy agent or to test. Default: the global fetch. */
  fetch?: typeof fetch;
}

export interface SendOptions {
  /**
   * Identifies this event to hookrelay, which stores it once however often it is sent
   * (a replay answers `duplicate: true`). Default: a random UUID per call, shared by that
   * call's retries. Pass your own (e.g. the gateway's request id) to make retries of your
   * *own* code safe too. Printable ASCII, at most 255 characters.
   */
  idempotencyKey?: string;
}

const RETRYABLE_STATUS = new Set([429, 503, 507]);
const BACKOFF_BASE_MS = 500;
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** `Retry-After` in seconds: delay-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

/** Turns a refusal into a typed error, keeping only what the server said. */
async function errorFrom(response: Response): Promise<HookrelayError> {
  const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text) as Partial<ApiError>;
    if (typeof body.code === "string" && typeof body.detail === "string") {
      return new HookrelayError(response.status, body.code as ApiErrorCode, body.detail, retryAfter);
    }
  } catch {
    // Not JSON: something in front of hookrelay answered (or a 431, which has no body).
  }
  const detail = `HTTP ${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
  return new HookrelayError(response.status, "unexpected_response", detail, retryAfter);
}

function describe(cause: unknown): string {
  if (!(cause instanceof Error)) return String(cause);
  // fetch's own message is a bare "fetch failed"; the useful part (ECONNREFUSED…) is its cause.
  const inner = cause.cause instanceof Error ? cause.cause : undefined;
  const code = (inner as NodeJS.ErrnoException | undefined)?.code;
  return inner ? `${cause.message}: ${code ?? inner.message}` : cause.message;
}

/**
 * A client for hookrelay's ingest API.
 *
 * The ingest secret and admin token live in private fields, so neither `console.log(client)`,
 * `JSON.stringify(client)` nor an error can show them.
 */
export class HookrelayClient {
  readonly baseUrl: string;
  readonly maxRetries: number;
  readonly maxRetryWaitMs: number;
  readonly timeoutMs: number;
  readonly #ingestKey: Buffer | undefined;
  readonly #adminToken: string | undefined;
  readonly #fetch: typeof fetch;

  constructor(options: HookrelayClientOptions) {
    // Checked here: fetch would reject a bad URL on every attempt, looking like a network error.
    this.baseUrl = new URL(String(options.baseUrl)).href.replace(/\/+$/, "");
    this.maxRetries = options.maxRetries ?? 3;
    this.maxRetryWaitMs = options.maxRetryWaitMs ?? 30_000;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    // Decoded once, here, so a malformed secret fails at start-up rather than on the first event.
    this.#ingestKey = options.ingestSecret === undefined ? undefined : signingKey(options.ingestSecret);
    this.#adminToken = options.adminToken;
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /** Records one usage event; resolves once hookrelay has it on disk. */
  trackUsage(event: UsageEvent, options?: SendOptions): Promise<Accepted> {
    return this.#ingest<Accepted>("/api/webhook/usage", event, options);
  }

  /**
   * Records up to 1000 usage events in one request, stored all or nothing. Under one
   * idempotency key each item is recognised on its own, so a retried batch is stored once.
   */
  trackUsageBatch(events: readonly UsageEvent[], options?: SendOptions): Promise<BatchAccepted> {
    return this.#ingest<BatchAccepted>("/api/webhook/usage", events, options);
  }

  /** Records an event of any type, e.g. `sendEvent("alert.fired", {...})`. */
  sendEvent<Type extends string>(type: Type, data: EventData<Type>, options?: SendOptions): Promise<Accepted> {
    const body: EventRequest = { type, data };
    return this.#ingest<Accepted>("/api/v1/events", body, options);
  }

  /** `GET /api/v1/health` (needs `adminToken`): hookrelay's status report. */
  health(): Promise<StatusReport> {
    const headers: Record<string, string> = {};
    if (this.#adminToken !== undefined) headers.authorization = `Bearer ${this.#adminToken}`;
    return this.#request("GET", "/api/v1/health", headers, undefined);
  }

  #ingest<T>(path: string, payload: unknown, options: SendOptions | undefined): Promise<T> {
    // Serialized once: every retry must send the very same bytes, or hookrelay would see a
    // different request under the same key and refuse it (idempotency_key_reused).
    const body = JSON.stringify(payload);
    const key = options?.idempotencyKey ?? randomUUID();
    // hookrelay's rule; checked here because fetch refuses a non-ASCII header value outright,
    // which would otherwise be retried as if the network had failed.
    if (!IDEMPOTENCY_KEY.test(key)) {
      return Promise.reject(new TypeError("idempotencyKey must be 1-255 visible ASCII characters (no spaces)"));
    }
    // One key for all the attempts of this call: that is what makes retrying safe.
    const headers = { "idempotency-key": key };
    return this.#request("POST", path, headers, body);
  }

  /** Sends until answered with success, a refusal that is not worth retrying, or out of retries. */
  async #request<T>(method: string, path: string, headers: Record<string, string>, body?: string): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const outcome = await this.#attempt<T>(method, path, headers, body);
      if (outcome.ok) return outcome.value;
      const { error, retryable } = outcome;
      const wait = error.retryAfter !== undefined ? error.retryAfter * 1000 : this.#backoff(attempt);
      if (!retryable || attempt >= this.maxRetries || wait > this.maxRetryWaitMs) throw error;
      await sleep(wait);
    }
  }

  async #attempt<T>(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: string | undefined,
  ): Promise<{ ok: true; value: T } | { ok: false; error: HookrelayError; retryable: boolean }> {
    const sent: Record<string, string> = { accept: "application/json", ...headers };
    if (body !== undefined) {
      sent["content-type"] = "application/json";
      // Signed afresh on every attempt: hookrelay accepts a webhook-id only once.
      if (this.#ingestKey) Object.assign(sent, signRequest(this.#ingestKey, body));
    }
    let response: Response;
    try {
      response = await this.#fetch(this.baseUrl + path, {
        method,
        headers: sent,
        body,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (cause) {
      // No answer (refused, reset, timed out): the request may or may not have been stored,
      // which is what the idempotency key is for.
      const error = new HookrelayError(0, "network_error", describe(cause), undefined, { cause });
      return { ok: false, error, retryable: true };
    }
    if (!response.ok) {
      return { ok: false, error: await errorFrom(response), retryable: RETRYABLE_STATUS.has(response.status) };
    }
    try {
      return { ok: true, value: (await response.json()) as T };
    } catch {
      const error = new HookrelayError(response.status, "unexpected_response", "the answer is not JSON");
      return { ok: false, error, retryable: false };
    }
  }

  /** Exponential backoff with "equal jitter", so many gateways refused at once do not return in step. */
  #backoff(attempt: number): number {
    const ceiling = Math.min(this.maxRetryWaitMs, BACKOFF_BASE_MS * 2 ** attempt);
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }
}
