#!/usr/bin/env python3
"""Runs localstripe (PyPI localstripe==1.15.10), the local Stripe emulator.

Usage: .venv/bin/python scripts/stripe-emulator.py --port 8420 --from-scratch

Same app and API as the `localstripe` command, with two differences that
matter on a shared machine: it listens on 127.0.0.1 only (the stock command
binds every interface), and it never writes its store to
/tmp/localstripe.pickle (the stock command rewrites that one file, shared by
every instance on the machine, after each change). It therefore always
starts from scratch; `--from-scratch` is accepted for the same command line.
Webhook registrations are kept in memory: register them after each start
(scripts/dev.sh and the end-to-end tests do).
"""
import argparse
import logging
import socket

from aiohttp import web
from localstripe import resources, server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=8420)
    parser.add_argument('--from-scratch', action='store_true',
                        help='always the case; accepted for compatibility')
    args = parser.parse_args()

    resources.Store.dump_to_disk = lambda self: None

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', args.port))

    access = logging.getLogger('aiohttp.access')
    access.setLevel(logging.INFO)
    access.addHandler(logging.StreamHandler())
    print(f'localstripe listening on http://127.0.0.1:{args.port}', flush=True)
    web.run_app(server.app, sock=sock, access_log=access, print=None)


if __name__ == '__main__':
    main()
