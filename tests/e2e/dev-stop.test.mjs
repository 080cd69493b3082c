// `make dev` stops cleanly: a signal to its process group (Ctrl-C, a
// supervisor, `timeout`, a CI runner), once or twice, stops everything it
// started (localstripe, wrangler, workerd) before `make` itself exits, so the
// ports are free and the next `make dev` starts. Runs the real `make dev` on
// free ports with a temporary state directory.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { freePort, killGroup, tempDir } from './harness.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const READY_TIMEOUT_MS = 240_000; // make may still have to build the worker
const STOP_TIMEOUT_MS = 30_000; // dev.sh escalates to SIGKILL after 10 s

// ---------------------------------------------------------------------------
// The process table, from /proc

/** pid → {ppid, pgrp, session, state, start, cmd} for every process. */
function processTable() {
  const table = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      // Fields after "(comm)", which may itself hold spaces and parentheses.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ').trim();
      table.set(Number(name), {
        pid: Number(name),
        state: fields[0],
        ppid: Number(fields[1]),
        pgrp: Number(fields[2]),
        session: Number(fields[3]),
        start: fields[19], // start time: tells a process from a later one with the same pid
        cmd,
      });
    } catch {
      // exited while we looked
    }
  }
  return table;
}

/** Every descendant of `root` (children, their children, ...). */
function descendants(root) {
  const table = processTable();
  const found = [];
  const queue = [root];
  while (queue.length) {
    const parent = queue.shift();
    for (const p of table.values()) {
      if (p.ppid === parent) {
        found.push(p);
        queue.push(p.pid);
      }
    }
  }
  return found;
}

/** Those of `procs` still running (zombies are dead: here nobody may reap an orphan). */
function stillRunning(procs) {
  const table = processTable();
  return procs.filter((p) => {
    const now = table.get(p.pid);
    return now && now.start === p.start && now.state !== 'Z';
  });
}

/** Processes other than zombies in any of the process groups `pgids`. */
function inGroups(pgids) {
  return [...processTable().values()].filter((p) => pgids.has(p.pgrp) && p.state !== 'Z');
}

async function portFree(port) {
  const server = net.createServer();
  try {
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', resolve);
    });
    return true;
  } catch {
    return false;
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

// ---------------------------------------------------------------------------
// make dev

let ports; // the same ports for every run: each run proves the previous one freed them
let stateDir;
const running = new Set(); // make dev runs not stopped yet (killed at the end whatever happens)

before(async () => {
  ports = { PORT: await freePort(), STRIPE_PORT: await freePort(), INSPECTOR_PORT: await freePort() };
  stateDir = tempDir();
});

after(async () => {
  for (const run of running) {
    killGroup(run.pgid, 'SIGKILL');
    for (const p of stillRunning(run.started)) killGroup(p.pgrp, 'SIGKILL');
  }
});

/**
 * Starts `make dev` in its own process group; resolves once the worker answers
 * /healthz and localstripe answers, with every process `make` has started.
 */
async function startMakeDev(label) {
  const logFile = path.join(stateDir, `make-dev-${label}.log`);
  const out = fs.openSync(logFile, 'a');
  const child = spawn('make', ['--no-print-directory', 'dev'], {
    cwd: ROOT,
    env: { ...process.env, ...Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])), DEV_STATE_DIR: stateDir },
    stdio: ['ignore', out, out],
    detached: true,
  });
  fs.closeSync(out);
  const run = { pgid: child.pid, logFile, started: [], exit: null };
  running.add(run);
  run.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      run.exit = { code, signal, at: Date.now() };
      resolve(run.exit);
    });
  });
  const log = () => fs.readFileSync(logFile, 'utf8').slice(-3000);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    assert.equal(run.exit, null, `make dev exited early (${JSON.stringify(run.exit)}):\n${log()}`);
    assert.ok(Date.now() < deadline, `make dev not ready after ${READY_TIMEOUT_MS} ms:\n${log()}`);
    try {
      const [health, stripe] = await Promise.all([
        fetch(`http://127.0.0.1:${ports.PORT}/healthz`, { signal: AbortSignal.timeout(2000) }),
        fetch(`http://127.0.0.1:${ports.STRIPE_PORT}/v1/customers?limit=1`, {
          headers: { authorization: `Basic ${Buffer.from('sk_test_e2e:').toString('base64')}` },
          signal: AbortSignal.timeout(2000),
        }),
      ]);
      await Promise.all([health.arrayBuffer(), stripe.arrayBuffer()]);
      if (health.status === 200 && stripe.status === 200) break;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  run.started = descendants(child.pid);
  const has = (pattern) => run.started.some((p) => pattern.test(p.cmd));
  assert.ok(has(/stripe-emulator\.py/), `localstripe among ${JSON.stringify(run.started.map((p) => p.cmd))}`);
  assert.ok(has(/wrangler.* dev /), 'wrangler dev is running');
  assert.ok(has(/workerd/), 'workerd is running');
  return run;
}

/** Waits for make to exit, then checks at once (no grace) that nothing it started is left. */
async function assertStopsEverything(run) {
  const exit = await Promise.race([run.exited, sleep(STOP_TIMEOUT_MS).then(() => null)]);
  assert.ok(exit, `make dev still running ${STOP_TIMEOUT_MS} ms after the signal; log: ${run.logFile}`);
  running.delete(run);
  const left = stillRunning(run.started);
  const groups = new Set(run.started.map((p) => p.pgrp));
  assert.deepEqual(left.map((p) => p.cmd), [], 'processes make dev started, alive after make exited');
  assert.deepEqual(inGroups(groups).map((p) => p.cmd), [], "processes in make dev's process groups");
  for (const [name, port] of Object.entries(ports)) {
    assert.ok(await portFree(port), `${name} ${port} still taken after make dev exited`);
  }
  return exit;
}

describe('stopping make dev', { timeout: 900_000 }, () => {
  test('SIGTERM to the process group stops localstripe, wrangler and workerd before make exits', async () => {
    const run = await startMakeDev('term');
    killGroup(run.pgid, 'SIGTERM');
    const exit = await assertStopsEverything(run);
    assert.ok(exit.signal === 'SIGTERM' || exit.code !== 0, `make's exit: ${JSON.stringify(exit)}`);
  });

  test('SIGINT to the process group (Ctrl-C): the same, and make dev starts again on the same ports', async () => {
    const run = await startMakeDev('int');
    killGroup(run.pgid, 'SIGINT');
    const exit = await assertStopsEverything(run);
    assert.ok(exit.signal === 'SIGINT' || exit.code !== 0, `make's exit: ${JSON.stringify(exit)}`);
  });

  test('a second signal during the shutdown still stops everything', async () => {
    const run = await startMakeDev('twice');
    killGroup(run.pgid, 'SIGTERM');
    await sleep(150);
    killGroup(run.pgid, 'SIGINT');
    await sleep(150);
    killGroup(run.pgid, 'SIGTERM');
    await assertStopsEverything(run);
  });

  test('SIGTERM to make alone (not its group): make passes it on, the stack stops', async () => {
    const run = await startMakeDev('make-only');
    process.kill(run.pgid, 'SIGTERM');
    await assertStopsEverything(run);
  });

  test('SIGKILL of make alone: dev.sh notices its parent is gone and stops the stack', async () => {
    const run = await startMakeDev('make-killed');
    process.kill(run.pgid, 'SIGKILL');
    await run.exited;
    // make cannot wait for anything now: give dev.sh its polling interval and the shutdown.
    await waitUntilStopped(run);
    running.delete(run);
    for (const [name, port] of Object.entries(ports)) {
      assert.ok(await portFree(port), `${name} ${port} still taken`);
    }
  });
});

async function waitUntilStopped(run) {
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (stillRunning(run.started).length > 0) {
    assert.ok(Date.now() < deadline,
      `still running: ${JSON.stringify(stillRunning(run.started).map((p) => p.cmd))}; log: ${run.logFile}`);
    await sleep(100);
  }
}
