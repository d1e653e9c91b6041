// DKIM for the DSNs a relay writes (route-time and delivery-time bounces): signed with the sending
// domain's keys from the pool's Secret, the keys acceptance signs the domain's mail with, as
// Postfix with OpenDKIM signs its bounces. Receivers judge an unsigned bounce like any unsigned mail.
import type { DomainPlan } from "../../api/plan.ts";
import type { Logger } from "../runtime/logger.ts";
import { Keyring, signMessage, signingKeys } from "../accept/dkim.ts";

export interface DsnSigner {
  sign(raw: Buffer, domain: DomainPlan): Promise<Buffer>;
  close(): void;
}

export function dsnSigner(secretsDir: string, log: Logger, now: () => number): DsnSigner {
  const keyring = new Keyring(secretsDir, log);
  return {
    async sign(raw, domain) {
      const t = now();
      const { keys, missing } = signingKeys(keyring, domain.dkim, t);
      if (missing) throw new Error(`DKIM key ${missing} is not in the relay's Secret`);
      return signMessage(raw, domain.domain, keys, t);
    },
    close: () => keyring.close(),
  };
}
