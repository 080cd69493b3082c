#!/usr/bin/env node
// Copies the browser libraries the dashboard uses from node_modules into
// public/vendor/, so the page works offline and never loads code from a CDN.
// Each file is pinned by package version and SHA-256; a mismatch stops here.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const VENDORED = [
  {
    name: 'chart.js',
    version: '4.6.1',
    from: 'dist/chart.umd.min.js',
    to: 'public/vendor/chart.umd.min.js',
    sha256: '87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2',
  },
];

const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');

for (const lib of VENDORED) {
  const target = path.join(ROOT, lib.to);
  if (fs.existsSync(target) && sha256(fs.readFileSync(target)) === lib.sha256) continue;
  const pkgDir = path.join(ROOT, 'node_modules', lib.name);
  const { version } = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  if (version !== lib.version) {
    throw new Error(`${lib.name} ${version} is installed, the dashboard pins ${lib.version}: run npm install`);
  }
  const bytes = fs.readFileSync(path.join(pkgDir, lib.from));
  if (sha256(bytes) !== lib.sha256) {
    throw new Error(`${lib.name}/${lib.from} does not match its pinned SHA-256`);
  }
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.writeFileSync(target, bytes);
  console.log(`vendored ${lib.name}@${lib.version} → ${lib.to}`);
}
