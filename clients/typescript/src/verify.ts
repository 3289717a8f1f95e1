// Receiver side: checks that a request really comes from hookrelay (signed with the endpoint's
// WEBHOOK_SECRET) and is fresh, before anything acts on it.
import { timingSafeEqual } from "node:crypto";

import { WebhookVerificationError } from "./errors.js";
import { signingKey, standardMac } from "./signing.js";

/** What hookrelay delivers for a usage event (the original gateway's shape, kept for existing Zaps). */
export interface DeliveredUsageEvent {
  /** `evt_…`; also the `webhook-id` header, the same on every attempt: use it to drop repeats. */
  event_id: string;
  event_type: "usage.tracked";
  /** RFC 3339, when hookrelay accepted the event. */
  timestamp: string;
  session_id: string;
  query: {
    /** Absent when hookrelay runs with HOOKRELAY_QUERY_MODE=omit. */
    summary?: string;
    category: "code_review" | "debugging" | "architecture" | "general";
    estimated_complexity: 1 | 2 | 3;
  };
  response: {
    model_used: string;
    response_time_ms: number;
    estimated_tokens: number;
    success: boolean;
  };
  user_agent: string | null;
}

/** What hookrelay delivers for any other event type (`POST /api/v1/events`). */
export interface DeliveredEvent<Data = unknown> {
  event_id: string;
  event_type: string;
  timestamp: string;
  data: Data;
}

/** A `Headers` instance (fetch, Next.js) or a plain object (Node's `req.headers`, Express, Zapier). */
export type HeadersLike = Headers | Record<string, string | readonly string[] | undefined>;

export interface VerifyOptions {
  /** How far `webhook-timestamp` may be from now, either way. Default 300, as hookrelay's own check. */
  toleranceSeconds?: number;
  /** The current time; for tests. */
  now?: Date;
}

function header(headers: HeadersLike, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") {
    return (headers as Headers).get(name) ?? undefined;
  }
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== name) continue;
    // Node joins repeated headers into an array; several signature lines mean several signatures.
    return typeof value === "string" ? value : value?.join(" ");
  }
  return undefined;
}

function required(headers: HeadersLike, name: string): string {
  const value = header(headers, name)?.trim();
  if (!value) throw new WebhookVerificationError("missing_header", `the ${name} header is missing`);
  return value;
}

/**
 * Verifies a hookrelay delivery's Standard Webhooks signature and returns its parsed body.
 *
 * `rawBody` must be the bytes as received: a body parsed to JSON and serialized again may
 * differ by a space and no longer match (in Express, use `express.raw({ type: "application/json" })`).
 *
 * The type parameter only names what the caller expects (usage events by default); the
 * signature proves who sent the body, not its shape.
 *
 * @throws WebhookVerificationError when a header is missing or malformed, the timestamp is
 *   outside the tolerance, no `v1` signature matches, or the body is not JSON.
 */
export function verifyWebhook<T = DeliveredUsageEvent>(
  secret: string,
  headers: HeadersLike,
  rawBody: string | Uint8Array,
  { toleranceSeconds = 300, now = new Date() }: VerifyOptions = {},
): T {
  if (typeof rawBody !== "string" && !(rawBody instanceof Uint8Array)) {
    // Plain JavaScript callers (a Zapier step) may hand over an already parsed object.
    throw new TypeError("rawBody must be the request body as received (a string or bytes), not parsed JSON");
  }
  const key = signingKey(secret);
  const msgId = required(headers, "webhook-id");
  const timestampText = required(headers, "webhook-timestamp");
  const signatures = required(headers, "webhook-signature");

  if (!/^\d{1,15}$/.test(timestampText)) {
    throw new WebhookVerificationError("malformed_header", "webhook-timestamp is not a number of seconds");
  }
  const timestamp = Number(timestampText);
  const skew = Math.abs(Math.floor(now.getTime() / 1000) - timestamp);
  // Bounds how long a captured delivery can be replayed; the signature covers the timestamp,
  // so it cannot be refreshed without the secret.
  if (skew > toleranceSeconds) {
    throw new WebhookVerificationError(
      "timestamp_out_of_tolerance",
      `webhook-timestamp is ${skew} s away from now, beyond the ${toleranceSeconds} s tolerance`,
    );
  }

  const expected = standardMac(key, msgId, timestamp, rawBody);
  // Every v1 candidate is compared (a rotation sends two), without stopping at the first match,
  // so the time taken does not reveal which one matched.
  let matched = false;
  for (const entry of signatures.split(/\s+/)) {
    if (!entry.startsWith("v1,")) continue; // other schemes or versions: not ours to judge
    const candidate = Buffer.from(entry.slice(3), "base64");
    // timingSafeEqual throws on a length mismatch; the length of a MAC is no secret.
    if (candidate.length === expected.length && timingSafeEqual(candidate, expected)) {
      matched = true;
    }
  }
  if (!matched) {
    throw new WebhookVerificationError("no_matching_signature", "no webhook-signature matches the body");
  }

  try {
    const text = typeof rawBody === "string" ? rawBody : Buffer.from(rawBody).toString("utf8");
    return JSON.parse(text) as T;
  } catch {
    throw new WebhookVerificationError("invalid_payload", "the signed body is not JSON");
  }
}
