// Authentication and authorization: every wallet-core route × every role × own
// or foreign org, and every kind of bad token.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ROLES, api, assertAmount, assertError, badTokens, randomId, serviceToken, startWorker, token, units,
} from './harness.mjs';

let worker;
let w;
let orgA; // the org every request targets
let orgB; // the "foreign" org whose tokens must not reach orgA
let expectedBalanceA = units('200'); // in units(), as allowed debits and captures lower it

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
  orgA = await w.newOrg();
  orgB = await w.newOrg();
}, { timeout: 150_000 });

after(() => worker?.stop());

async function holdIn(org) {
  const res = await w.hold(org, '1');
  assert.equal(res.status, 201, res.summary);
  return res.json.id;
}

// send(role, own) performs the request with a token of that role, for orgA itself
// (own) or for orgB; effects of wrongly accepted requests show in the final check.
const ROUTES = [
  {
    route: 'POST /v1/orgs',
    allowed: ['service'],
    status: 201,
    // Signup targets a fresh org; "own" means the token's org is the body's org_id.
    async send(role, own) {
      const org = randomId('org_');
      const res = await w.signup(org, { tok: token({ org: own ? org : orgB, role }) });
      if (res.status !== 201) {
        assertError(await w.wallet(org), 404, 'wallet_not_found');
      }
      return res;
    },
  },
  {
    route: 'GET /v1/orgs/{org}/wallet',
    allowed: ROLES,
    status: 200,
    send: (role, own) => w.wallet(orgA, { tok: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'PUT /v1/orgs/{org}/daily-cap',
    allowed: ['owner'],
    status: 200,
    send: (role, own) => w.setCap(orgA, role === 'owner' && own ? '400' : '123', { tok: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'POST /v1/orgs/{org}/debits',
    allowed: ['service'],
    status: 201,
    send: (role, own) => w.debit(orgA, '1', { tok: token({ org: own ? orgA : orgB, role }) }),
    debits: '1',
  },
  {
    route: 'POST /v1/orgs/{org}/holds',
    allowed: ['service'],
    status: 201,
    send: (role, own) => w.hold(orgA, '1', { tok: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'POST /v1/orgs/{org}/holds/{id}/capture',
    allowed: ['service'],
    status: 200,
    send: async (role, own) => w.capture(orgA, await holdIn(orgA), '1', { tok: token({ org: own ? orgA : orgB, role }) }),
    debits: '1',
  },
  {
    route: 'POST /v1/orgs/{org}/holds/{id}/release',
    allowed: ['service'],
    status: 200,
    send: async (role, own) => w.release(orgA, await holdIn(orgA), { tok: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'GET /v1/orgs/{org}/ledger',
    allowed: ['owner', 'admin'],
    status: 200,
    send: (role, own) => w.ledgerPage(orgA, { tok: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'PUT /v1/orgs/{org}/feature-caps',
    allowed: ['owner'],
    status: 200,
    send: (role, own) => w.call('PUT', '/v1/orgs/{org}/feature-caps', { org: orgA }, {
      token: token({ org: own ? orgA : orgB, role }), body: { caps: { nl_alerts: role === 'owner' && own ? '40' : '3' } },
    }),
  },
  {
    route: 'GET /v1/orgs/{org}/audit',
    allowed: ['owner', 'admin'],
    status: 200,
    send: (role, own) => w.call('GET', '/v1/orgs/{org}/audit', { org: orgA }, { token: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'GET /v1/orgs/{org}/auto-top-up',
    allowed: ['owner', 'admin', 'member', 'viewer'],
    status: 200,
    send: (role, own) => w.call('GET', '/v1/orgs/{org}/auto-top-up', { org: orgA }, { token: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'PUT /v1/orgs/{org}/auto-top-up',
    allowed: ['owner'],
    status: 200,
    send: (role, own) => w.call('PUT', '/v1/orgs/{org}/auto-top-up', { org: orgA }, {
      token: token({ org: own ? orgA : orgB, role }),
      body: { enabled: false, threshold: '25', pack_id: 'starter', monthly_limit: role === 'owner' && own ? 7 : 9 },
    }),
  },
  {
    route: 'GET /v1/orgs/{org}/alerts',
    allowed: ['owner', 'admin', 'member', 'viewer'],
    status: 200,
    send: (role, own) => w.call('GET', '/v1/orgs/{org}/alerts', { org: orgA }, { token: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'PUT /v1/orgs/{org}/alerts',
    allowed: ['owner'],
    status: 200,
    send: (role, own) => w.call('PUT', '/v1/orgs/{org}/alerts', { org: orgA }, {
      token: token({ org: own ? orgA : orgB, role }), body: { low_balance_threshold: role === 'owner' && own ? '30' : '3' },
    }),
  },
  {
    route: 'GET /v1/orgs/{org}/events',
    allowed: ['owner', 'admin'],
    status: 200,
    send: (role, own) => w.call('GET', '/v1/orgs/{org}/events', { org: orgA }, { token: token({ org: own ? orgA : orgB, role }) }),
  },
  {
    route: 'POST /v1/orgs/{org}/ledger/refill',
    allowed: ['service'],
    status: 202,
    send: (role, own) => w.call('POST', '/v1/orgs/{org}/ledger/refill', { org: orgA }, { token: token({ org: own ? orgA : orgB, role }) }),
  },
];

describe('role matrix', () => {
  for (const { route, allowed, status, send, debits } of ROUTES) {
    for (const role of ROLES) {
      for (const own of [true, false]) {
        const permitted = own && allowed.includes(role);
        const whose = own ? 'its own org' : 'another org';
        test(`${route} as ${role} of ${whose} → ${permitted ? status : 403}`, async () => {
          const res = await send(role, own);
          if (permitted) {
            assert.equal(res.status, status, res.summary);
            if (debits) expectedBalanceA -= units(debits);
          } else {
            assertError(res, 403, 'forbidden');
          }
        });
      }
    }
  }

  test('refused requests changed nothing', async () => {
    const a = await w.wallet(orgA);
    assert.equal(a.status, 200, a.summary);
    assert.equal(units(a.json.balance), expectedBalanceA, `balance ${a.json.balance}`);
    assertAmount(a.json.daily_cap, '400');
    // Only the owner's feature cap stuck; the audit trail names only the owner.
    assert.deepEqual(a.json.feature_caps.map((c) => [c.feature, c.daily_cap]), [['nl_alerts', '40']]);
    const trail = await w.call('GET', '/v1/orgs/{org}/audit', { org: orgA }, { token: token({ org: orgA, role: 'owner' }) });
    assert.ok(trail.json.data.length > 0 && trail.json.data.every((r) => r.role === 'owner'), trail.summary);
    // Only the owner's auto top-up and alert settings stuck.
    const owner = token({ org: orgA, role: 'owner' });
    const auto = await w.call('GET', '/v1/orgs/{org}/auto-top-up', { org: orgA }, { token: owner });
    assert.equal(auto.json.monthly_limit, 7, auto.summary);
    const alerts = await w.call('GET', '/v1/orgs/{org}/alerts', { org: orgA }, { token: owner });
    assertAmount(alerts.json.low_balance_threshold, '30');
    // This worker has no EVENTS_WEBHOOK_URL: events are recorded and listed, never sent.
    const events = await w.req('GET', `/v1/orgs/${orgA}/events?limit=100`, { token: owner });
    assert.ok(events.json.data.length > 0, events.summary);
    for (const e of events.json.data) {
      assert.deepEqual(e.delivery, { status: 'pending', attempts: 0 }, e.id);
      if (e.type === 'settings.changed') assert.equal(e.data.role, 'owner', JSON.stringify(e));
    }
    const b = await w.wallet(orgB);
    assertAmount(b.json.balance, '200');
    assertAmount(b.json.daily_cap, '500');
    assert.deepEqual(b.json.feature_caps, []);
    const bEvents = await w.call('GET', '/v1/orgs/{org}/events', { org: orgB }, { token: token({ org: orgB, role: 'owner' }) });
    assert.deepEqual(bEvents.json, { data: [], has_more: false });
  });
});

test('a token for one org gets 403, not 404, for an org that does not exist', async () => {
  assertError(await w.wallet(randomId('org_'), { tok: serviceToken(orgB) }), 403, 'forbidden');
});

test('signup for an existing org with another org\'s service token is 403', async () => {
  assertError(await w.signup(orgA, { tok: serviceToken(orgB) }), 403, 'forbidden');
});

describe('bad credentials → 401 unauthorized', () => {
  let balanceBefore;
  before(async () => {
    balanceBefore = await w.balance(orgA);
  });

  const tokenCases = Object.keys(badTokens({ org: 'org_x' })).map((name) => [
    name,
    (org) => ({ authorization: `Bearer ${badTokens({ org })[name]}` }),
  ]);
  const cases = {
    ...Object.fromEntries(tokenCases),
    'no Authorization header': () => ({}),
    'empty bearer': () => ({ authorization: 'Bearer ' }),
    'Basic scheme': () => ({ authorization: `Basic ${Buffer.from('user:pass').toString('base64')}` }),
    'token without scheme': (org) => ({ authorization: serviceToken(org) }),
  };

  for (const [name, headersFor] of Object.entries(cases)) {
    test(`${name}: GET wallet and POST debits`, async () => {
      const read = await w.req('GET', `/v1/orgs/${orgA}/wallet`, { headers: headersFor(orgA) });
      assertError(read, 401, 'unauthorized');
      const write = await w.req('POST', `/v1/orgs/${orgA}/debits`, {
        headers: { ...headersFor(orgA), 'idempotency-key': randomId('key_') },
        body: { feature: 'chat', amount: '1' },
      });
      assertError(write, 401, 'unauthorized');
    });
  }

  test('none of them changed the balance', async () => {
    assertAmount(await w.balance(orgA), balanceBefore);
  });
});
