// SMTP reply classification: pure decisions over reply text (classifyReply,
// classifyDeliveryError) and parsers for the reports receivers send back (classifyDsn, parseArf).
export { classifyReply } from "./classify-reply.ts";
export { classifyDeliveryError, type DeliveryError } from "./delivery-error.ts";
export { classifyDsn, type DsnRecipient } from "./dsn.ts";
export { parseArf, type ArfReport, type ArfOriginalHeaders } from "./arf.ts";
export { parseReply } from "./parse-reply.ts";
export { RULES } from "./rules/index.ts";
export { REPLY_CLASSES, type ReplyClass, type ReplyClassification, type Rule } from "./types.ts";
