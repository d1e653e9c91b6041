// The rule table, in the order it is tried. The first matching rule decides the class.
//
// Precedence, and why:
//   1. PROVIDER_RULES       provider markers and provider-only wording ([TSS04], 4.7.650, S3150,
//                           RP-001, Gmail's 4.7.28 texts). A provider's own code is the most
//                           precise statement of what it means, and its texts would mislead the
//                           generic rules (Gmail's rate-limit text mentions "unsolicited").
//   2. TEXT_RULES           specific phrases, cause before symptom (see text.ts). Text beats a
//                           generic code: a 550 5.7.1 naming a blocklist is reputation-block, a
//                           421 "too many connections" is rate-limited.
//   3. ENHANCED_RULES       specific RFC 3463 codes (x.1.1, x.2.2, x.3.4, x.7.26 ...) when the
//                           text said nothing we recognise.
//   4. WEAK_TEXT_RULES      vague words ("blocked", "denied").
//   5. WEAK_ENHANCED_RULES  catch-all details (x.7.1, x.7.0, x.1.0, x.5.x).
//   6. BASIC_CODE_RULES     RFC 5321 basic codes with one meaning (50x, 53x, 521/556, 551/553).
//   then (classify-reply.ts) transient for 4xx, other for 5xx, protocol-error for input that is
//   not a reply at all (no code, no enhanced code, no recognised text).
//
// To extend: add a row to the table of the right tier; give it a unique id; add the real reply
// that motivated it to test/unit/classify.test.ts.
import type { Rule } from "../types.ts";
import { PROVIDER_RULES } from "./provider.ts";
import { TEXT_RULES } from "./text.ts";
import { BASIC_CODE_RULES, ENHANCED_RULES, WEAK_ENHANCED_RULES, WEAK_TEXT_RULES } from "./codes.ts";

export const RULES: readonly Rule[] = [
  ...PROVIDER_RULES,
  ...TEXT_RULES,
  ...ENHANCED_RULES,
  ...WEAK_TEXT_RULES,
  ...WEAK_ENHANCED_RULES,
  ...BASIC_CODE_RULES,
];
