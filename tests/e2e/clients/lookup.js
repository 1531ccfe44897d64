// c-ares, through Node's dns.Resolver (what Node services in pods use for
// resolve*: c-ares reads /etc/resolv.conf; resolve* apply no search list).
// Prints one answer per line, or "ERR ..." and exits 3.
'use strict';
const dns = require('dns');
const [kind, name] = process.argv.slice(2);
const r = new dns.promises.Resolver({ timeout: 2000, tries: 2 });
const none = (e) => { if (e.code === 'ENODATA') return []; throw e; };

async function lookup() {
  switch (kind) {
    case 'addr': {
      const out = [...await r.resolve4(name).catch(none), ...await r.resolve6(name).catch(none)];
      if (!out.length) { const e = new Error('no address'); e.code = 'ENODATA'; throw e; }
      return out;
    }
    case 'a': return r.resolve4(name);
    case 'aaaa': return r.resolve6(name);
    case 'srv': return (await r.resolveSrv(name)).map((s) => `${s.priority} ${s.weight} ${s.port} ${s.name}.`);
    case 'txt': return (await r.resolveTxt(name)).map((parts) => parts.join(''));
    case 'ptr': return (await r.reverse(name)).map((n) => `${n}.`);
    case 'cname': return (await r.resolveCname(name)).map((n) => `${n}.`);
    default: throw new Error(`unknown kind ${kind}`);
  }
}

lookup().then((out) => { for (const line of out) console.log(line); },
  (e) => { console.log(`ERR ${e.code || e.message}`); process.exitCode = 3; });
