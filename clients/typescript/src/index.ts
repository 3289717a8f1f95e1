export {
  HookrelayClient,
  parseRetryAfter,
  type Accepted,
  type ApiError,
  type BatchAccepted,
  type EventData,
  type EventRequest,
  type HookrelayClientOptions,
  type SendOptions,
  type StatusReport,
  type UsageEvent,
} from "./client.js";
export {
  HookrelayError,
  WebhookVerificationError,
  type ApiErrorCode,
  type ClientErrorCode,
  type HookrelayErrorCode,
  type WebhookVerificationReason,
} from "./errors.js";
export { signingKey, signRequest, signStandard, type StandardWebhookHeaders } from "./signing.js";
export {
  verifyWebhook,
  type DeliveredEvent,
  type DeliveredUsageEvent,
  type HeadersLike,
  type VerifyOptions,
} from "./verify.js";
export type { components, paths } from "./generated/openapi.js";
