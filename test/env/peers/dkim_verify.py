# Glue for the independent DKIM verifier (Debian's python3-dkim): reads a message on stdin,
# verifies every DKIM-Signature against the test DNS server given as argv[1] ("ip" or "ip:port"),
# prints JSON. Kept tiny on purpose: the verification itself is python3-dkim's.
import json, logging, sys
import dkim, dns.exception, dns.rdatatype, dns.resolver
from dkim.util import parse_tag_value

host, _, port = sys.argv[1].partition(':')
res = dns.resolver.Resolver(configure=False)
res.nameservers = [host]
res.port = int(port or 53)

def txt(name, timeout=5):
    try:
        ans = res.resolve(name.decode() if isinstance(name, bytes) else name, dns.rdatatype.TXT,
                          raise_on_no_answer=False, lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        return None
    except dns.exception.Timeout as e:
        raise dkim.DnsTimeoutError(str(e))
    recs = [b''.join(r.strings) for r in ans.rrset or []]
    keys = [r for r in recs if b'p=' in r] or recs  # several TXT at one name: take the key
    return keys[0] if keys else None

class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING); self.msgs = []
    def emit(self, record): self.msgs.append(record.getMessage())

msg = sys.stdin.buffer.read()
out = []
count = len([1 for n, _ in dkim.DKIM(msg).headers if n.lower() == b'dkim-signature'])
for i in range(count):
    errs = Errors()
    log = logging.getLogger('dkim%d' % i); log.propagate = False; log.addHandler(errs)
    d = dkim.DKIM(msg, logger=log)
    sig = {}
    try:
        raw = [v for n, v in d.headers if n.lower() == b'dkim-signature'][i]
        sig = parse_tag_value(raw)
        ok = bool(d.verify(idx=i, dnsfunc=txt))
        reason = '' if ok else ('; '.join(errs.msgs) or 'signature did not verify')
    except Exception as e:  # DKIMException and bad input: report, do not crash
        ok, reason = False, '%s: %s' % (type(e).__name__, e)
    g = lambda k: sig.get(k, b'').decode('ascii', 'replace')
    out.append({'d': g(b'd'), 's': g(b's'), 'a': g(b'a'), 'ok': ok, 'reason': reason})
json.dump({'ok': count > 0 and all(s['ok'] for s in out), 'signatures': out}, sys.stdout)
