// Recognises which provider or gateway sent a reply, from markers in the reply (host names in
// prefixes, help URLs, bracketed codes). Independent of the class: a rule may also name a provider.
// Sources: providers.md §2 (Gmail "- gsmtp" suffix and support.google.com links, Yahoo
// postmaster.yahooinc.com links and [TSxx] codes, Microsoft (Sxxxx)/AS(...) tags and
// protection.outlook.com hosts), gateway help URLs.
const MARKERS: ReadonlyArray<readonly [string, RegExp]> = [
  ["gmail", /\bgsmtp\b|\bgoogle\b|gmail|googlemail|aspmx\.l\.google\.com|gmail-smtp-in/i],
  ["yahoo", /yahoo|\baol\.com|\[(?:TSS?|IPTS|BL|PH|GL)\d\d\]|\[#4\.16\.\d+\]/i],
  ["microsoft", /outlook\.com|hotmail|office ?365|microsoft|\bmsn\.com|\blive\.com|\((?:A?S)\d{3,4}\)|\bAS\(\d+\)|\b(?:RP|SC|DY|OU)-00\d\b|resolver\.\w+\.|storedrv\.|smtpsend\./i],
  ["apple", /icloud|\bme\.com|\bmac\.com|apple\.com|\[(?:CS|HM|BS)\d\d\]|\[HCM\d\]/i],
  ["comcast", /comcast|\bRL0\d{4,6}\b|\bBL0\d{4,6}\b/i],
  ["orange", /orange\.fr|wanadoo|\bOFR_?\d{3}/i],
  ["gmx", /\bgmx\b|web\.de/i],
  ["qq", /\bqq\.com|service\.mail\.qq/i],
  ["netease", /163\.com|126\.com|netease|\b(?:DT|HL|RP|MI):[A-Z]{3}\b/i],
  ["zoho", /zoho/i],
  ["mimecast", /mimecast/i],
  ["proofpoint", /proofpoint|pphosted/i],
  ["barracuda", /barracuda/i],
  ["cisco", /ironport|senderbase|talosintelligence|\biphmx\b/i],
];

export function detectProvider(text: string): string | undefined {
  for (const [name, re] of MARKERS) if (re.test(text)) return name;
  return undefined;
}
