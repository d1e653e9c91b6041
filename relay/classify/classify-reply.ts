// classifyReply: one SMTP reply -> { class, permanent, code, enhanced?, provider?, rule }.
// Pure: no I/O, no clock. Used by the relay's delivery decisions and provider response rules.
import { parseReply } from "./parse-reply.ts";
import { detectProvider } from "./providers.ts";
import { RULES } from "./rules/index.ts";
import type { ParsedReply, ReplyClass, ReplyClassification, Rule } from "./types.ts";

function matches(rule: Rule, p: ParsedReply): boolean {
  if (rule.code && !rule.code.test(p.code)) return false;
  if (rule.enhanced && !rule.enhanced.test(p.enhanced)) return false;
  if (rule.text && !rule.text.some((re) => re.test(p.text))) return false;
  if (rule.unless && rule.unless.some((re) => re.test(p.text))) return false;
  return true;
}

export interface Decision {
  class: ReplyClass;
  rule: string;
  provider?: string;
}

/**
 * Decides the class of a parsed reply. `severity` is '4' or '5' (temporary or permanent) and
 * picks the fallback and the transient/other side; '' when unknown. Shared with the DSN and
 * local-error entries, which know the severity from elsewhere (DSN Status, error kind).
 */
export function decide(p: ParsedReply, severity: string): Decision {
  // 1yz-3yz are not failures: a caller passed a success or intermediate reply where a failure was
  // expected, which is a protocol-sequence problem rather than a delivery outcome.
  if (/^[123]/.test(p.code)) return { class: "protocol-error", rule: "not-a-failure" };

  const hit = RULES.find((r) => matches(r, p));
  let cls: ReplyClass;
  let rule: string;
  if (hit) {
    cls = hit.class;
    rule = hit.id;
  } else if (severity === "4") {
    cls = "transient";
    rule = "fallback-4xx";
  } else if (severity === "5") {
    cls = "other";
    rule = "fallback-5xx";
  } else {
    // No code, no enhanced code and no recognised words: not an SMTP reply at all.
    cls = "protocol-error";
    rule = "not-a-reply";
  }
  // "transient" and "other" are the two halves of "anything else": keep them on the side the
  // severity says (a "temporarily" in a 554 does not make it temporary).
  if (cls === "transient" && severity === "5") cls = "other";
  else if (cls === "other" && severity === "4") cls = "transient";

  const provider = hit?.provider ?? detectProvider(p.full);
  return provider ? { class: cls, rule, provider } : { class: cls, rule };
}

export function classifyReply(reply: string): ReplyClassification {
  const p = parseReply(reply);
  const severity = p.code ? p.code[0]! : p.enhanced ? p.enhanced[0]! : "";
  const d = decide(p, severity === "2" ? "" : severity);
  // Key order is the output order of the CLI's JSON lines: class and permanent first.
  return {
    class: d.class,
    permanent: p.code.startsWith("5"),
    code: p.code,
    ...(p.enhanced ? { enhanced: p.enhanced } : {}),
    ...(d.provider ? { provider: d.provider } : {}),
    rule: d.rule,
  };
}
