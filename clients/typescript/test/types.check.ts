// Compile-time checks, run by `npm run typecheck` (never executed). Each `@ts-expect-error`
// line MUST fail to compile: if the generated types ever stop rejecting one of these malformed
// events, tsc reports the directive as unused and the check fails. That is the proof that a
// TypeScript gateway gets a type error, not a 422 in production, for a malformed event.
import { HookrelayClient, HookrelayError, type HookrelayErrorCode, type UsageEvent } from "../src/index.js";

const client = new HookrelayClient({ baseUrl: "http://127.0.0.1:8000" });

const valid: UsageEvent = {
  session_id: "session_123",
  query: "Why does this code throw an error?",
  model_name: "gpt-4o-mini",
  response_time_ms: 1000,
  estimated_tokens: 100,
  success: true,
};
const withAgent: UsageEvent = { ...valid, user_agent: "gateway/1.0" };
const nullAgent: UsageEvent = { ...valid, user_agent: null };

export async function malformedEventsDoNotCompile(): Promise<void> {
  await client.trackUsage(valid);
  await client.trackUsage(withAgent);
  await client.trackUsageBatch([valid, nullAgent]);
  await client.sendEvent("usage.tracked", valid);
  await client.sendEvent("alert.fired", { rule: "dlq", level: "warning" });

  // @ts-expect-error session_id is required
  await client.trackUsage({ query: "q", model_name: "m", response_time_ms: 1, estimated_tokens: 1, success: true });

  // @ts-expect-error response_time_ms is a number, not a string
  await client.trackUsage({ ...valid, response_time_ms: "1000" });

  // @ts-expect-error success is a boolean
  await client.trackUsage({ ...valid, success: "yes" });

  // @ts-expect-error estimated_tokens is required
  await client.trackUsageBatch([valid, { session_id: "s", query: "q", model_name: "m", response_time_ms: 1, success: true }]);

  // @ts-expect-error user_agent is a string or null
  await client.trackUsage({ ...valid, user_agent: 42 });

  // @ts-expect-error a misspelt optional field, which hookrelay would ignore without a word
  await client.trackUsage({ ...valid, user_agnet: "gateway/1.0" });

  // @ts-expect-error a usage.tracked event's data is validated as a usage event, by the compiler too
  await client.sendEvent("usage.tracked", { ...valid, success: 1 });

  // @ts-expect-error and must be complete
  await client.sendEvent("usage.tracked", { session_id: "s" });
}

// The error code is a closed union from the spec's ApiError enum: a typo does not compile.
export function codesAreTyped(error: HookrelayError): string {
  const code: HookrelayErrorCode = error.code;
  // @ts-expect-error not a code hookrelay answers with
  if (code === "rate_limitted") return "typo";
  switch (code) {
    case "rate_limited":
    case "overloaded":
      return `retry in ${error.retryAfter ?? "?"} s`;
    default:
      return error.detail;
  }
}

// Node's own header object is accepted as is (an Express or http handler passes req.headers).
import type { IncomingMessage } from "node:http";
import { verifyWebhook, type DeliveredUsageEvent } from "../src/index.js";
export function nodeHeadersAreAccepted(req: IncomingMessage, body: Buffer): DeliveredUsageEvent {
  const event = verifyWebhook("secret", req.headers, body);
  // @ts-expect-error the delivered shape is typed: there is no top-level model_name
  void event.model_name;
  return event;
}
