// A real OpenID Provider for lockkit's provider tests: panva's oidc-provider, configured from a
// JSON file that the pytest fixture writes (tests/providers/op_fixture.py). Loopback only.
//
//   OP_CONFIG=/path/config.json node server.mjs
//
// config.json: { "port", "jwks": {"keys": [private JWKs]}, "cookieKeys": [...], "clients": [...],
//                "idTokenTTL": {clientId: seconds}, "resources": {indicator: {scope, accessTokenTTL}} }
//
// Interactions are automatic so a test can drive the flow with plain HTTP requests:
//   GET /interaction/<uid>?login=<name>   signs in as <name> (any name is an account)
//   GET /interaction/<uid>?deny=1         ends the request with error=access_denied
//   GET /interaction/<uid>                (login prompt, no name) a small page saying "prompt: login"
//   the consent prompt is granted automatically (every missing scope, claim and resource scope).
// Test-only counters: GET /__test__/events -> {"grants": {grant_type: n}, "endSessions": n, "revocations": n}.

import http from 'node:http';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.env.OP_CONFIG, 'utf8'));
const host = '127.0.0.1';
const port = Number(config.port);
if (!Number.isInteger(port) || port <= 0) throw new Error('config.port must be a port number');
const issuer = `http://${host}:${port}`;

const NAME = /^[A-Za-z0-9_.@-]{1,64}$/;
const events = { grants: {}, endSessions: 0, revocations: 0 };
const resources = config.resources || {};
const idTokenTTL = config.idTokenTTL || {};

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head><body>${body}</body></html>`;
}

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: config.cookieKeys },
  pkce: { methods: ['S256'], required: () => true },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
  async findAccount(ctx, sub) {
    if (!NAME.test(sub)) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, name: sub, email: `${sub}@example.test`, email_verified: true };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    IdToken: (ctx, token, client) => idTokenTTL[client.clientId] ?? 3600,
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    RefreshToken: 3600,
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out', `<h1>Sign out of the test OP?</h1>${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<h1>signed out</h1>');
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      async getResourceServerInfo(ctx, indicator) {
        const rs = resources[indicator];
        if (!rs) throw new errors.InvalidTarget();
        return {
          scope: rs.scope,
          audience: indicator,
          accessTokenTTL: rs.accessTokenTTL ?? 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'text';
    ctx.body = `error: ${out.error}\n${out.error_description || ''}\n`;
  },
});
provider.proxy = false;

provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params.grant_type;
  events.grants[type] = (events.grants[type] || 0) + 1;
});
for (const event of ['server_error', 'grant.error', 'authorization.error', 'end_session.error']) {
  provider.on(event, (ctx, err) => {
    process.stderr.write(`${event}: ${err.name}: ${err.message} ${err.error_description || ''}\n`);
  });
}
provider.on('end_session.success', () => {
  events.endSessions += 1;
});
provider.on('grant.revoked', (ctx) => {
  if (ctx.oidc.route === 'revocation') events.revocations += 1;  // a token revoked at the revocation endpoint
});

async function interaction(req, res, url) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, grantId } = details;
  if (url.searchParams.get('deny')) {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'the user said no',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'login') {
    const login = url.searchParams.get('login');
    if (!login) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(page('Sign in', `<h1>prompt: login</h1><p>client ${params.client_id}</p>`));
      return;
    }
    if (!NAME.test(login)) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end('login: use 1-64 letters, digits or _.@-');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const id = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId: id } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  res.writeHead(400, { 'content-type': 'text/plain' });
  res.end(`unsupported prompt ${prompt.name}`);
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  if (req.method === 'GET' && url.pathname === '/__test__/events') {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(events));
    return;
  }
  if (req.method === 'GET' && /^\/interaction\/[A-Za-z0-9_-]+$/.test(url.pathname)) {
    interaction(req, res, url).catch((err) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err.name}: ${err.message}`);
    });
    return;
  }
  callback(req, res);
});

server.listen(port, host, () => {
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
