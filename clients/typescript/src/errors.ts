import type { components } from "./generated/openapi.js";

/** Every `code` hookrelay may answer with, straight from the OpenAPI document. */
export type ApiErrorCode = components["schemas"]["ApiError"]["code"];

/**
 * Codes the client itself uses when there is no `{"code","detail"}` body to read:
 * - `network_error`: no answer at all (connection refused or reset, DNS, timeout), after the retries;
 * - `unexpected_response`: an answer that is not hookrelay's error shape (a proxy's HTML page, a 431).
 */
export type ClientErrorCode = "network_error" | "unexpected_response";

export type HookrelayErrorCode = ApiErrorCode | ClientErrorCode;

/**
 * A refused or failed request. `code` is a closed union so callers can `switch` on it
 * exhaustively; `detail` is hookrelay's human-readable explanation.
 *
 * Only what the server said is kept: never the request's headers, so no signature, secret or
 * token can end up in a log line that prints this error.
 */
export class HookrelayError extends Error {
  override readonly name = "HookrelayError";
  /** HTTP status; 0 when no answer was received (`network_error`). */
  readonly status: number;
  readonly code: HookrelayErrorCode;
  readonly detail: string;
  /** Seconds the server asked to wait (`Retry-After`), when it said. */
  readonly retryAfter: number | undefined;

  constructor(
    status: number,
    code: HookrelayErrorCode,
    detail: string,
    retryAfter?: number,
    options?: { cause?: unknown },
  ) {
    super(status ? `${status} ${code}: ${detail}` : `${code}: ${detail}`, options);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  /** Whether a later identical request (same idempotency key) may succeed. */
  get retryable(): boolean {
    return this.status === 0 || this.status === 429 || this.status === 503 || this.status === 507;
  }
}

/** Why {@link verifyWebhook} refused a delivery. */
export type WebhookVerificationReason =
  | "missing_header"
  | "malformed_header"
  | "timestamp_out_of_tolerance"
  | "no_matching_signature"
  | "invalid_payload";

/** A delivery that must not be trusted: answer it with 401 (or 400) and do not act on it. */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  readonly reason: WebhookVerificationReason;

  constructor(reason: WebhookVerificationReason, message: string) {
    super(message);
    this.reason = reason;
  }
}
