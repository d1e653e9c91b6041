// Parser for the header-style field blocks of message/delivery-status (RFC 3464 §2.1) and
// message/feedback-report (RFC 5965 §3) bodies: groups of "Name: value" lines separated by blank
// lines, with folded continuation lines. Hand-written because no maintained npm library parses
// these bodies: mailparser (used for the MIME structure around them) hands them over as raw
// parts, and its header parser applies to message headers only.

/** One group: lowercase field name -> every value, in order, unfolded and trimmed. */
export type FieldGroup = Map<string, string[]>;

export function parseFieldGroups(body: string): FieldGroup[] {
  const groups: FieldGroup[] = [];
  let group: FieldGroup | undefined;
  let last: { name: string; index: number } | undefined;
  for (const line of body.replace(/\r\n?/g, "\n").split("\n")) {
    if (line.trim() === "") {
      group = undefined;
      last = undefined;
      continue;
    }
    if (/^[ \t]/.test(line)) {
      // Folded continuation of the previous field.
      if (group && last) {
        const values = group.get(last.name)!;
        values[last.index] = `${values[last.index]} ${line.trim()}`.trim();
      }
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0) continue; // not a field; tolerated, as some MTAs write free text here
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (!group) {
      group = new Map();
      groups.push(group);
    }
    const values = group.get(name) ?? [];
    values.push(value);
    group.set(name, values);
    last = { name, index: values.length - 1 };
  }
  return groups;
}

export function first(group: FieldGroup | undefined, name: string): string | undefined {
  const v = group?.get(name)?.[0];
  return v === undefined || v === "" ? undefined : v;
}

/** "rfc822; <bob@example.org>" -> "bob@example.org"; "dns; mx.example.org" -> "mx.example.org". */
export function stripType(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const v = value.replace(/^[\w.-]+\s*;\s*/, "").trim();
  return v === "" ? undefined : v;
}

/** Drops RFC 5322 comments' common case "(...)" at the end and angle brackets around an address. */
export function cleanAddress(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const m = /<([^>]*)>/.exec(value);
  const v = (m ? m[1]! : value).replace(/\s*\([^)]*\)\s*$/, "").trim();
  return v === "" ? undefined : v;
}
