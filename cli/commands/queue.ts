// mailfleet queue: what is queued (per pool, provider and domain), where one message is (show,
// find), and hold, release, purge or bounce a selection. The subcommands live in cli/commands/queue/.
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, durationFlag, intFlag, parseWith, stringFlag } from "../lib/flags.ts";
import { withFleet } from "../lib/fleet.ts";
import { QUEUE_ID_RE } from "../../relay/queue/envelope.ts";
import { isEmpty, parseSelection, resolvePools, SELECT_OPTIONS, SELECT_USAGE } from "./queue/select.ts";

// Subcommands are loaded when run (bounce brings in the delivery side's modules).
type Action = "hold" | "release" | "purge" | "bounce";

const usage = `usage: mailfleet queue [selection]
       mailfleet queue show <qid> [--since DUR]
       mailfleet queue find --rcpt ADDR [--events [--since DUR]]
       mailfleet queue hold    (selection | --all) [--reason TEXT] [--dry-run]
       mailfleet queue release (selection | --all) [--dry-run]
       mailfleet queue purge   (selection | --all) (--yes | --dry-run) [--reason TEXT]
       mailfleet queue bounce  (selection | --all) (--yes | --dry-run) [--reason TEXT]

  (none)    counts per pool and provider (messages, waiting, in flight, oldest), deferred and held,
            and per sending domain and recipient domain (from a bounded read of the envelopes)
  show      where a message is: each part (routing, ready and waiting or being attempted,
            deferred until, held), its headers, and its events
  find      the queued parts for a recipient; --events also lists its events
  hold      move the selected mail aside (mf.q.<pool>.held): relays do not send it until released.
            Parts a relay is attempting at that moment are left alone and counted.
  release   put held mail back where it was (a deferred part keeps its retry time)
  purge     delete the selected mail (a "dropped" event for each part records it)
  bounce    fail the selected mail now: "bounced" events and a DSN to the sender, as for a 5xx

${SELECT_USAGE}
  --all             every queued message (hold, release, purge, bounce)

  --yes             confirm purge or bounce (they cannot be undone)
  --dry-run         list what would be acted on, and do nothing
  --reason TEXT     recorded with held parts, in dropped events and in the bounce reply
  --since DUR       how far back show and find --events read events (default 24h; show starts at
                    the message's acceptance when it is still queued)

  Reads of the queue are bounded by --max-scan (default 10000 envelopes): output says when there
  was more. Actions pause the pool's relay consumers for the few seconds they take.

${COMMON_USAGE}`;

const ACTIONS: Action[] = ["hold", "release", "purge", "bounce"];

export const command: Command = {
  summary: "queued mail per pool, provider and domain; show/find a message; hold, release, purge or bounce",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, {
      ...SELECT_OPTIONS,
      all: { type: "boolean", default: false },
      yes: { type: "boolean", default: false },
      "dry-run": { type: "boolean", default: false },
      reason: { type: "string" },
      since: { type: "string" },
      events: { type: "boolean", default: false },
    });
    const [sub, ...rest] = positionals;
    const maxScan = intFlag(values, "max-scan", 10_000, 1, 10_000_000);
    const sinceMs = durationFlag(values, "since") ?? 86_400_000;
    const reason = stringFlag(values, "reason");
    const dryRun = values["dry-run"] === true;
    const all = values.all === true;
    const flagOnly = (names: string[], allowed: string) => {
      for (const n of names) if (values[n] !== undefined && values[n] !== false) throw new UsageError(`--${n} goes with ${allowed}`);
    };

    if (sub === undefined) {
      flagOnly(["all", "yes", "dry-run", "reason", "since", "events"], "queue actions");
      const sel = parseSelection(values, ["route", "ready", "sched", "held"]);
      const { summary } = await import("./queue/summary.ts");
      return withFleet(common, (fleet) => summary(fleet, common, sel, maxScan));
    }
    if (sub === "show") {
      flagOnly(["all", "yes", "dry-run", "reason", "events", ...Object.keys(SELECT_OPTIONS).filter((k) => k !== "max-scan")], "other subcommands");
      if (rest.length !== 1) throw new UsageError(rest.length ? `unexpected argument "${rest[1]}"` : "missing <qid>");
      const qid = rest[0]!.toLowerCase();
      if (!QUEUE_ID_RE.test(qid)) throw new UsageError(`<qid> must be a 20-character queue id (as in "250 2.0.0 Ok: queued as ..."), got "${rest[0]}"`);
      const { show } = await import("./queue/show.ts");
      return withFleet(common, (fleet) => show(fleet, common, qid, { maxScan, sinceMs }));
    }
    if (sub === "find") {
      flagOnly(["all", "yes", "dry-run", "reason"], "queue actions");
      if (rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
      const sel = parseSelection(values, ["route", "ready", "sched", "held"]);
      if (!sel.rcpts.length) throw new UsageError("find needs --rcpt ADDR");
      if (values.since !== undefined && values.events !== true) throw new UsageError("--since goes with --events");
      const { find } = await import("./queue/show.ts");
      return withFleet(common, async (fleet) => {
        sel.pools = await resolvePools(fleet, sel.pools);
        return find(fleet, common, sel, { maxScan, sinceMs, events: values.events === true });
      });
    }
    if ((ACTIONS as string[]).includes(sub)) {
      const action = sub as Action;
      if (rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
      flagOnly(["since", "events"], "show and find");
      const sel = parseSelection(values, []);
      if (isEmpty(sel) && !all) throw new UsageError(`${action} needs a selection (--pool, --provider, --domain, --rcpt-domain, --qid, --rcpt) or --all`);
      if (all && !isEmpty(sel)) throw new UsageError("--all selects everything: drop it or the other selection flags");
      if ((action === "purge" || action === "bounce") && !values.yes && !dryRun) {
        throw new UsageError(`${action} cannot be undone: add --yes to confirm (or --dry-run to see what it would take)`);
      }
      if (action === "release" && reason) throw new UsageError("--reason goes with hold, purge and bounce");
      if (values.yes && dryRun) throw new UsageError("give --yes or --dry-run, not both");
      const { act } = await import("./queue/act.ts");
      return withFleet(common, (fleet) => act(fleet, common, action, sel, { maxScan, dryRun, ...(reason ? { reason } : {}) }));
    }
    throw new UsageError(`unknown subcommand "${sub}" (show, find, ${ACTIONS.join(", ")})`);
  },
};
