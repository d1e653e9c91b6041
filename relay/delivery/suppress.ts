// The suppression list (relay/suppression, KV `mf-suppress`) as delivery and inbound use it.
import type { RelayContext } from "../runtime/context.ts";
import { Suppressions } from "../suppression/index.ts";
import type { Suppressor } from "./outcomes.ts";

export function suppressorFor(ctx: RelayContext): Suppressor {
  const s = new Suppressions(ctx.suppressKv, { perKeyTtl: ctx.features.msgTtl, clock: () => ctx.clock.now() });
  return {
    async suppress(r) {
      await s.add({
        scope: r.scope === "global" ? { global: true } : { domain: r.domain! },
        address: r.address,
        reason: r.reason,
        ttlMs: r.ttlMs,
        // No addresses in the detail: the key is hashed so the bucket holds none.
        detail: [r.class, r.qid ? `qid ${r.qid}` : ""].filter(Boolean).join(", "),
      });
    },
  };
}
