// Standard Webhooks signing (https://www.standardwebhooks.com/), as hookrelay checks it on ingest
// and produces on delivery: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
import { createHmac, randomBytes } from "node:crypto";

const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * The HMAC key of a secret, the way hookrelay reads it: `whsec_<base64>` is base64-decoded
 * (what Standard Webhooks libraries generate); any other string is used as its UTF-8 bytes
 * (what `openssl dgst -hmac` and Python's `secret.encode()` do).
 *
 * Node's base64 decoder skips characters it does not know, so a mangled `whsec_` secret would
 * quietly become a different key and every signature would fail with no hint why; the strict
 * check turns that into an error at construction. The message never includes the secret.
 */
export function signingKey(secret: string): Buffer {
  if (secret.startsWith("whsec_")) {
    const encoded = secret.slice("whsec_".length).trim();
    if (!STRICT_BASE64.test(encoded)) {
      throw new TypeError("a secret starting with `whsec_` must continue with base64");
    }
    const key = Buffer.from(encoded, "base64");
    if (key.length === 0) throw new TypeError("the secret is empty");
    return key;
  }
  if (secret.length === 0) throw new TypeError("the secret is empty");
  return Buffer.from(secret, "utf8");
}

/** The raw HMAC-SHA256 of `{id}.{timestamp}.{body}`. */
export function standardMac(key: Buffer, msgId: string, timestamp: number, body: string | Uint8Array): Buffer {
  return createHmac("sha256", key)
    .update(`${msgId}.${timestamp}.`)
    .update(body)
    .digest();
}

/** The `webhook-signature` value for one message: `v1,<base64>`. */
export function signStandard(secret: string | Buffer, msgId: string, timestamp: number, body: string | Uint8Array): string {
  const key = typeof secret === "string" ? signingKey(secret) : secret;
  return `v1,${standardMac(key, msgId, timestamp, body).toString("base64")}`;
}

export interface StandardWebhookHeaders {
  "webhook-id": string;
  "webhook-timestamp": string;
  "webhook-signature": string;
}

/**
 * Headers signing `body` now, under a new message id. hookrelay accepts a `webhook-id` once,
 * so every attempt (retries included) must call this again rather than reuse old headers.
 */
export function signRequest(
  secret: string | Buffer,
  body: string | Uint8Array,
  now: Date = new Date(),
): StandardWebhookHeaders {
  const msgId = `msg_${randomBytes(16).toString("hex")}`;
  const timestamp = Math.floor(now.getTime() / 1000);
  return {
    "webhook-id": msgId,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": signStandard(secret, msgId, timestamp, body),
  };
}
