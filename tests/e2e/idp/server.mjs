// A real OpenID Connect provider (node oidc-provider) for Keyward's end-to-end tests.
//
//   IDP_CONFIG=/path/config.json PORT=0 node tests/e2e/idp/server.mjs
//
// Listens on 127.0.0.1 (plain http) and prints one line `READY http://127.0.0.1:<port>` on
// stdout once it serves. The issuer is that URL. Everything is kept in memory: nothing
// survives the process. tests/e2e/oidc_idp.py starts and stops it.
//
// Configuration (JSON file named by IDP_CONFIG):
//   clients      oidc-provider client metadata (snake_case), plus frontchannel_logout_uri and
//                frontchannel_logout_session_required, which this harness implements itself
//                (oidc-provider 9 has no front-channel logout).
//   accounts     { "<login>": { "sub": ..., "email": ..., any claims..., "password": optional } }
//                Without "password" any non-empty password signs in. "sub" defaults to login.
//   claims       optional { "<scope>": ["claim", ...] } added to the standard scope claims;
//                account claims that belong to no scope are released with "openid".
//   pkce_required        default true: response types with "code" need S256 PKCE.
//   auto_confirm_logout  default true: the end-session confirm page submits itself.
//
// Sign-in is a plain HTML form at /interaction/<uid> (labels "Login" and "Password", button
// "Sign in"); consent is granted automatically for the requested scopes and claims.
//
// Test-control endpoints (tests only):
//   POST /__test__/rotate-keys[?keep_old=1]  new RS256 signing key; {kid, kids}
//   GET  /__test__/keys                      {kid, kids} (not counted as a JWKS fetch)
//   GET  /__test__/counters                  {discovery, jwks, authorization, token, ...}
//   GET  /__test__/jwks-fetches              {count}
//   GET  /__test__/discovery-fetches         {count}
//   POST /__test__/reset-counters            counters and logout records back to zero
//   POST /__test__/accounts                  JSON {"<login>": {claims}}: add or replace accounts
//   GET  /__test__/backchannel-logouts       logout tokens sent: [{client_id, uri, logout_token,
//                                            sub, sid, status, error}]
//   POST /__test__/backchannel-logout        JSON {client_id, sub, sid}: send one logout token now
//   GET  /__test__/frontchannel-logouts      front-channel logout URLs rendered: [{client_id, url,
//                                            sid}]
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { Provider, errors } from 'oidc-provider';

const HOST = '127.0.0.1';

const STANDARD_CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: [
    'name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
    'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at',
  ],
  phone: ['phone_number', 'phone_number_verified'],
  address: ['address'],
};

function fail(message) {
  console.error(`idp: ${message}`);
  process.exit(2);
}

function readConfig() {
  const path = process.env.IDP_CONFIG;
  if (!path) {
    fail('IDP_CONFIG must name a JSON configuration file');
  }
  let config;
  try {
    config = JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read IDP_CONFIG ${path}: ${err.message}`);
  }
  return {
    clients: config.clients ?? [],
    accounts: config.accounts ?? {},
    claims: config.claims ?? {},
    pkceRequired: config.pkce_required ?? true,
    autoConfirmLogout: config.auto_confirm_logout ?? true,
  };
}

const settings = readConfig();
const accounts = new Map(); // login -> { sub, password, claims }

function setAccount(login, data) {
  if (typeof login !== 'string' || !login || data === null || typeof data !== 'object') {
    throw new TypeError('accounts must map a login name to an object of claims');
  }
  const { password, ...claims } = data;
  claims.sub ??= login;
  if (typeof claims.sub !== 'string' || !claims.sub) {
    throw new TypeError(`account ${login}: sub must be a non-empty string`);
  }
  accounts.set(login, { sub: claims.sub, password, claims });
}

for (const [login, data] of Object.entries(settings.accounts)) {
  setAccount(login, data);
}

function accountBySub(sub) {
  for (const account of accounts.values()) {
    if (account.sub === sub) {
      return account;
    }
  }
  return undefined;
}

// --- signing keys ---------------------------------------------------------------------
let signingKeys = []; // newest first: the first one signs

function newSigningKey() {
  // JWK output straight from the key generation, never KeyObject.export(): on Node.js 20,
  // exporting a freshly generated key can deadlock when a garbage collection finalizes the
  // generation job meanwhile (~KeyGenJob waits for the key's mutex that export holds).
  const { privateKey: jwk } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { format: 'jwk' },
    privateKeyEncoding: { format: 'jwk' },
  });
  return { ...jwk, kid: `k-${crypto.randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

// --- what the tests observe -----------------------------------------------------------
const COUNTED_PATHS = {
  '/.well-known/openid-configuration': 'discovery',
  '/jwks': 'jwks',
  '/auth': 'authorization',
  '/token': 'token',
  '/me': 'userinfo',
  '/session/end': 'end_session',
};
let counters;
let backchannelLogouts;
let frontchannelLogouts;

function resetCounters() {
  counters = Object.fromEntries(Object.values(COUNTED_PATHS).map((name) => [name, 0]));
  backchannelLogouts = [];
  frontchannelLogouts = [];
}
resetCounters();

// --- HTML ------------------------------------------------------------------------------
function esc(value) {
  return String(value ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body, head = '') {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${esc(title)}</title>
${head}
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>`;
}

function loginPage(uid, client, { login = '', error = '' } = {}) {
  const clientName = client?.clientName || client?.clientId || '';
  return page('Sign in', `
<p>Sign in to continue to <strong>${esc(clientName)}</strong>.</p>
${error ? `<p role="alert" class="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" id="login-form">
  <p><label for="login">Login</label>
     <input id="login" name="login" autocomplete="username" value="${esc(login)}" autofocus required></p>
  <p><label for="password">Password</label>
     <input id="password" name="password" type="password" autocomplete="current-password" required></p>
  <p><button type="submit">Sign in</button></p>
</form>`);
}

async function logoutSource(ctx, form) {
  // `form` is oidc-provider's hidden form (id "op.logoutForm", field "xsrf").
  const auto = settings.autoConfirmLogout;
  const confirmForm = auto
    ? form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>')
    : form;
  const script = auto
    ? `<script>document.addEventListener('DOMContentLoaded', function () {
  document.getElementById('op.logoutForm').submit();
});</script>`
    : '';
  ctx.body = page('Sign out', `
<p>Do you want to sign out from ${esc(ctx.host)}?</p>
${confirmForm}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`, script);
}

async function postLogoutSuccessSource(ctx) {
  const display = ctx.oidc.client?.clientName || ctx.oidc.client?.clientId;
  ctx.body = page('Signed out', `<p>Your sign-out${display ? ` from ${esc(display)}` : ''} was successful.</p>`);
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out)
    .map(([key, value]) => `<p><strong class="${esc(key)}">${esc(key)}</strong>: <span id="${esc(key)}">${esc(value)}</span></p>`)
    .join('\n'));
}

function frontchannelPage(target, iframes) {
  // Like oidc-provider 7's front-channel logout: one iframe per client, then on to `target`.
  const frames = iframes
    .map((url) => `<iframe class="frontchannel-logout" src="${esc(url)}" style="display:none"></iframe>`)
    .join('\n');
  return page('Signing out', `
<p>Signing out of all applications&hellip;</p>
${frames}
<p><a id="continue" href="${esc(target)}">Continue</a></p>
<script>
(function () {
  var target = document.getElementById('continue').href;
  var frames = document.querySelectorAll('iframe.frontchannel-logout');
  var left = frames.length;
  var done = false;
  function go() { if (!done) { done = true; window.location.replace(target); } }
  function loaded() { left -= 1; if (left <= 0) { go(); } }
  frames.forEach(function (frame) { frame.addEventListener('load', loaded); frame.addEventListener('error', loaded); });
  if (left === 0) { go(); }
  setTimeout(go, 5000);
})();
</script>`);
}

// --- provider --------------------------------------------------------------------------
function claimsConfig() {
  const scopes = {};
  for (const [scope, names] of Object.entries(STANDARD_CLAIMS)) {
    scopes[scope] = [...names];
  }
  for (const [scope, names] of Object.entries(settings.claims)) {
    scopes[scope] = [...new Set([...(scopes[scope] ?? []), ...names])];
  }
  const known = new Set(Object.values(scopes).flat());
  for (const account of accounts.values()) {
    for (const name of Object.keys(account.claims)) {
      if (!known.has(name)) {
        scopes.openid.push(name);
        known.add(name);
      }
    }
  }
  return scopes;
}

async function recordingFetch(url, options) {
  // oidc-provider refuses to fetch special-use addresses (127.0.0.1 among them) through its
  // own dispatcher; the tests' relying parties live on loopback, so use the plain one.
  delete options.dispatcher;
  let record;
  if (options.method === 'POST' && options.body instanceof URLSearchParams && options.body.has('logout_token')) {
    const logoutToken = options.body.get('logout_token');
    const [, payload] = logoutToken.split('.');
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    record = {
      client_id: claims.aud,
      uri: url,
      logout_token: logoutToken,
      sub: claims.sub,
      sid: claims.sid ?? null,
      status: null,
      error: null,
    };
    backchannelLogouts.push(record);
  }
  try {
    const response = await globalThis.fetch(url, options);
    if (record) {
      record.status = response.status;
    }
    return response;
  } catch (err) {
    if (record) {
      record.error = `${err.message}${err.cause ? `: ${err.cause.message ?? err.cause}` : ''}`;
    }
    throw err;
  }
}

function validateExtraClientMetadata(ctx, key, value, metadata) {
  if (key === 'frontchannel_logout_uri' && value !== undefined) {
    if (typeof value !== 'string' || !URL.canParse(value)) {
      throw new errors.InvalidClientMetadata('frontchannel_logout_uri must be a URL');
    }
  }
  if (key === 'frontchannel_logout_session_required') {
    if (value === undefined) {
      metadata[key] = false;
    } else if (typeof value !== 'boolean') {
      throw new errors.InvalidClientMetadata('frontchannel_logout_session_required must be a boolean');
    }
  }
}

function requestedClaims(params) {
  if (!params.claims) {
    return [];
  }
  try {
    const claims = typeof params.claims === 'string' ? JSON.parse(params.claims) : params.claims;
    return [...new Set([...Object.keys(claims.id_token ?? {}), ...Object.keys(claims.userinfo ?? {})])];
  } catch {
    return [];
  }
}

async function grantFor(ctx, provider, accountId, clientId, params) {
  const grantId = ctx.oidc.session?.grantIdFor(clientId);
  let grant = grantId ? await provider.Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ clientId, accountId });
  }
  // Auto-consent: everything the client asks for.
  if (params.scope) {
    grant.addOIDCScope(params.scope);
  }
  const claims = requestedClaims(params);
  if (claims.length) {
    grant.addOIDCClaims(claims);
  }
  await grant.save();
  return grant;
}

function buildProvider(issuer, cookieKeys) {
  const provider = new Provider(issuer, {
    clients: settings.clients,
    jwks: { keys: signingKeys },
    cookies: { keys: cookieKeys },
    claims: claimsConfig(),
    conformIdTokenClaims: false,
    responseTypes: ['code', 'id_token', 'code id_token', 'none'],
    pkce: { required: () => settings.pkceRequired },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 600,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      backchannelLogout: { enabled: true },
      claimsParameter: { enabled: true },
    },
    extraClientMetadata: {
      properties: ['frontchannel_logout_uri', 'frontchannel_logout_session_required'],
      validator: validateExtraClientMetadata,
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async loadExistingGrant(ctx) {
      const { session, client, params } = ctx.oidc;
      if (!session?.accountId) {
        return undefined;
      }
      return grantFor(ctx, ctx.oidc.provider, session.accountId, client.clientId, params);
    },
    async findAccount(ctx, sub) {
      const account = accountBySub(sub);
      if (!account) {
        return undefined;
      }
      return {
        accountId: sub,
        async claims() {
          return { ...account.claims, sub };
        },
      };
    },
    fetch: recordingFetch,
    renderError,
  });

  // The relying parties in the tests use http://127.0.0.1 and http://localhost redirect URIs,
  // also for the implicit (id_token) response type.
  const schema = provider.Client.Schema.prototype;
  const invalidate = schema.invalidate;
  schema.invalidate = function allowHttpImplicit(message, code) {
    if (code === 'implicit-force-https' || code === 'implicit-forbid-localhost') {
      return;
    }
    invalidate.call(this, message, code);
  };
  // Every ID token carries `sid` (not only for back-channel clients that require it).
  provider.Client.prototype.includeSid = () => true;

  provider.on('server_error', (ctx, err) => console.error('idp: server_error', err));
  provider.on('backchannel.error', (ctx, err, client) => {
    console.error(`idp: back-channel logout to ${client.clientId} failed: ${err.message}`);
  });

  provider.use(testHarness(provider));
  return provider;
}

// --- the harness middleware ------------------------------------------------------------
async function readBody(ctx) {
  const chunks = [];
  for await (const chunk of ctx.req) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(ctx) {
  const text = await readBody(ctx);
  return text ? JSON.parse(text) : {};
}

function json(ctx, value, status = 200) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(value);
}

function keysInfo() {
  return { kid: signingKeys[0].kid, kids: signingKeys.map((key) => key.kid) };
}

async function sessionSnapshot(provider, ctx) {
  const session = await provider.Session.get(ctx);
  return { id: session.id, accountId: session.accountId, authorizations: structuredClone(session.authorizations ?? {}) };
}

async function frontchannelTargets(provider, before) {
  // The clients that this end-session request signed out: all of them when the session was
  // destroyed, otherwise those whose authorization disappeared.
  const after = await provider.Session.find(before.id);
  const remaining = after?.authorizations ?? {};
  const targets = [];
  for (const [clientId, authorization] of Object.entries(before.authorizations)) {
    if (after && clientId in remaining) {
      continue;
    }
    const client = await provider.Client.find(clientId).catch(() => undefined);
    const metadata = client?.metadata();
    if (!metadata?.frontchannel_logout_uri) {
      continue;
    }
    const url = new URL(metadata.frontchannel_logout_uri);
    if (metadata.frontchannel_logout_session_required) {
      url.searchParams.set('iss', provider.issuer);
      url.searchParams.set('sid', authorization.sid);
    }
    targets.push({ client_id: clientId, url: url.href, sid: authorization.sid ?? null });
  }
  return targets;
}

async function interaction(ctx, provider, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.body = page('Error', `<p id="error">${esc(err.message)}</p>`);
    return;
  }
  if (details.uid !== uid) {
    ctx.status = 400;
    ctx.body = page('Error', '<p id="error">interaction mismatch</p>');
    return;
  }
  const client = await provider.Client.find(details.params.client_id);
  const { prompt, params } = details;

  if (prompt.name === 'consent') {
    // Auto-consent.
    const accountId = details.session.accountId;
    const grantId = details.grantId;
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    grant ??= new provider.Grant({ clientId: params.client_id, accountId });
    if (params.scope) {
      grant.addOIDCScope(params.scope);
    }
    const claims = requestedClaims(params);
    if (claims.length) {
      grant.addOIDCClaims(claims);
    }
    const missing = prompt.details.missingOIDCClaims;
    if (missing?.length) {
      grant.addOIDCClaims(missing);
    }
    const saved = await grant.save();
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId: saved } });
    ctx.status = 303;
    ctx.redirect(returnTo);
    return;
  }

  if (prompt.name !== 'login') {
    ctx.status = 400;
    ctx.body = page('Error', `<p id="error">unsupported prompt ${esc(prompt.name)}</p>`);
    return;
  }

  if (action === undefined && ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = loginPage(uid, client);
    return;
  }
  if (action !== 'login' || ctx.method !== 'POST') {
    ctx.status = 405;
    return;
  }
  const form = new URLSearchParams(await readBody(ctx));
  const login = form.get('login') ?? '';
  const password = form.get('password') ?? '';
  const account = accounts.get(login);
  const passwordOk = password !== '' && (account?.password === undefined || account.password === password);
  if (!account || !passwordOk) {
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = loginPage(uid, client, { login, error: 'Invalid login or password.' });
    return;
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
    login: { accountId: account.sub },
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

let current; // { provider, handler }
let issuer;
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

function rebuild() {
  const provider = buildProvider(issuer, cookieKeys);
  current = { provider, handler: provider.callback() };
  return provider;
}

async function checkClients(provider) {
  for (const metadata of settings.clients) {
    await provider.Client.find(metadata.client_id); // throws on invalid metadata
  }
}

function testHarness(provider) {
  return async function harness(ctx, next) {
    const { path, method } = ctx;

    if (COUNTED_PATHS[path]) {
      counters[COUNTED_PATHS[path]] += 1;
    }

    const interactionMatch = /^\/interaction\/([^/]+)(?:\/([a-z]+))?$/.exec(path);
    if (interactionMatch) {
      await interaction(ctx, provider, interactionMatch[1], interactionMatch[2]);
      return;
    }

    if (path.startsWith('/__test__/')) {
      const route = `${method} ${path}`;
      switch (route) {
        case 'POST /__test__/rotate-keys': {
          const keepOld = ['1', 'true', 'yes'].includes(String(ctx.query.keep_old ?? '').toLowerCase());
          const key = newSigningKey();
          signingKeys = keepOld ? [key, ...signingKeys] : [key];
          rebuild();
          json(ctx, keysInfo());
          return;
        }
        case 'GET /__test__/keys':
          json(ctx, keysInfo());
          return;
        case 'GET /__test__/counters':
          json(ctx, counters);
          return;
        case 'GET /__test__/jwks-fetches':
          json(ctx, { count: counters.jwks });
          return;
        case 'GET /__test__/discovery-fetches':
          json(ctx, { count: counters.discovery });
          return;
        case 'POST /__test__/reset-counters':
          resetCounters();
          json(ctx, counters);
          return;
        case 'POST /__test__/accounts': {
          try {
            for (const [login, data] of Object.entries(await readJson(ctx))) {
              setAccount(login, data);
            }
          } catch (err) {
            json(ctx, { error: err.message }, 400);
            return;
          }
          rebuild();
          json(ctx, { logins: [...accounts.keys()] });
          return;
        }
        case 'GET /__test__/backchannel-logouts':
          json(ctx, backchannelLogouts);
          return;
        case 'GET /__test__/frontchannel-logouts':
          json(ctx, frontchannelLogouts);
          return;
        case 'POST /__test__/backchannel-logout': {
          const body = await readJson(ctx);
          const client = await provider.Client.find(String(body.client_id ?? ''));
          if (!client?.backchannelLogoutUri) {
            json(ctx, { error: 'unknown client or no backchannel_logout_uri' }, 400);
            return;
          }
          const before = backchannelLogouts.length;
          try {
            await client.backchannelLogout(String(body.sub), body.sid);
          } catch (err) {
            // recorded below
          }
          json(ctx, backchannelLogouts[before] ?? { error: 'no logout token was sent' });
          return;
        }
        default:
          json(ctx, { error: `no test endpoint ${route}` }, 404);
          return;
      }
    }

    if (path === '/session/end/confirm' && method === 'POST') {
      const before = await sessionSnapshot(provider, ctx);
      await next();
      if (ctx.status === 303 && Object.keys(before.authorizations).length) {
        const targets = await frontchannelTargets(provider, before);
        if (targets.length) {
          frontchannelLogouts.push(...targets);
          const location = ctx.response.get('location');
          ctx.remove('location');
          ctx.status = 200;
          ctx.type = 'html';
          ctx.body = frontchannelPage(location, targets.map((target) => target.url));
        }
      }
      return;
    }

    await next();
  };
}

// --- server ----------------------------------------------------------------------------
signingKeys = [newSigningKey()];

const server = http.createServer((req, res) => {
  if (!current) {
    res.statusCode = 503;
    res.end('starting');
    return;
  }
  current.handler(req, res);
});

server.listen(Number(process.env.PORT || 0), HOST, async () => {
  const { port } = server.address();
  issuer = `http://${HOST}:${port}`;
  try {
    await checkClients(rebuild());
  } catch (err) {
    fail(`invalid configuration: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}`);
  }
  console.log(`READY ${issuer}`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
