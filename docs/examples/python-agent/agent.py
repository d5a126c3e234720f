#!/usr/bin/env python3
"""A Switchyard agent that is not compiled into Switchyard: a proposal sizer.

It follows the external-agent protocol of docs/external-agents.md:

1. registers its manifest with ``PUT /v1/agents/<name>`` (idempotent: the same manifest
   registers once);
2. pulls its types from JetStream through the durable consumers that registration answers
   (one per subscribed type; all copies of the agent share them);
3. for each ``proposal.created.v1`` sends one ``agent.message.sent.v1`` to every agent (``*``)
   with the proposal's size, through ``POST /v1/workspaces/<ws>/events``, with
   ``causationid`` = the handled event and an id derived from it, so a redelivered event
   posts the same event again and the store answers ``duplicate: true``;
4. acknowledges the message only after the store accepted the event.

Environment: SWITCHYARD_URL (default http://127.0.0.1:8080), SWITCHYARD_TOKEN (an admin
token for the registration; see docs/external-agents.md), NATS_URL (default
nats://127.0.0.1:4222), AGENT_NAME (default proposal-sizer).

``--exit-before-ack`` exits (status 3) right after the first accepted post, before the
acknowledgement: the test uses it to show that a redelivery creates no second event.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import nats
from nats.errors import TimeoutError as NatsTimeout

VERSION = "1.0.0"
# The namespace of this agent's event ids: uuid5(NAMESPACE, "<agent>/<workspace>/<event id>").
NAMESPACE = uuid.UUID("6f1d1c3e-6a55-4a8e-9a4b-5b0f7f1f5e21")


def log(message):
    print(f"[{AGENT}] {message}", file=sys.stderr, flush=True)


class Permanent(Exception):
    """The server refused the event for good (4xx): retrying cannot help."""


def request(method, path, body=None):
    """One HTTP request to Switchyard; the JSON answer and the status."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["Content-Type"] = (
            "application/cloudevents+json" if path.endswith("/events") else "application/json"
        )
    req = urllib.request.Request(URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise Permanent(f"{method} {path}: {e.code} {text}") from None
        raise RuntimeError(f"{method} {path}: {e.code} {text}") from None


def register():
    manifest = {
        "version": VERSION,
        "capabilities": ["review"],
        "subscribes": ["proposal.created.v1"],
        "emits": ["agent.message.sent.v1"],
    }
    for attempt in range(60):
        try:
            status, agent = request("PUT", f"/v1/agents/{AGENT}", manifest)
            break
        except (RuntimeError, OSError) as e:  # starting, or JetStream not ready: again
            log(f"registration failed, retrying: {e}")
            time.sleep(min(0.2 * (attempt + 1), 2))
    else:
        sys.exit(f"[{AGENT}] could not register")
    log(f"registered ({status}); consumers: {[c['durable'] for c in agent['consumers']]}")
    return agent


def handle(event):
    """The event this agent emits for one `proposal.created.v1` CloudEvent."""
    workspace = event["workspace"]
    proposal = event["data"]
    changes = proposal["changes"]
    lines = sum((c.get("content") or "").count("\n") for c in changes)
    ident = uuid.uuid5(NAMESPACE, f"{AGENT}/{workspace}/{event['id']}")
    message_id = f"{AGENT}-{ident.hex}"
    return workspace, {
        "specversion": "1.0",
        "id": str(ident),
        "source": f"/agents/{AGENT}",
        "type": "agent.message.sent.v1",
        "subject": f"message/{message_id}",
        "causationid": event["id"],
        "correlationid": event.get("correlationid", event["id"]),
        "data": {
            "message_id": message_id,
            "sender": AGENT,
            "recipient": "*",
            "type": "note",
            "content": {
                "proposal_id": proposal["proposal_id"],
                "files": len(changes),
                "lines": lines,
                "size": "small" if lines <= 200 and len(changes) <= 5 else "large",
            },
        },
    }


async def consume(js, consumer, exit_before_ack):
    sub = await js.pull_subscribe(
        consumer["filter_subject"], durable=consumer["durable"], stream=consumer["stream"]
    )
    while True:
        try:
            messages = await sub.fetch(batch=10, timeout=1)
        except NatsTimeout:
            continue
        for msg in messages:
            try:
                workspace, emitted = handle(json.loads(msg.data))
                status, appended = await asyncio.to_thread(
                    request, "POST", f"/v1/workspaces/{workspace}/events", emitted
                )
            except Permanent as e:
                log(f"refused for good, dropping: {e}")
                await msg.term()
                continue
            except Exception as e:  # the server or the network: try again later
                log(f"will retry: {e}")
                await msg.nak(delay=1)
                continue
            log(f"{emitted['causationid']} -> {emitted['id']} "
                f"({'duplicate' if appended['duplicate'] else 'new'}, sequence {appended['sequence']})")
            if exit_before_ack:
                log("exiting before the ack (--exit-before-ack)")
                os._exit(3)
            await msg.ack()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exit-before-ack", action="store_true")
    args = parser.parse_args()
    agent = register()
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    await asyncio.gather(*(consume(js, c, args.exit_before_ack) for c in agent["consumers"]))


URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("SWITCHYARD_TOKEN", "")
AGENT = os.environ.get("AGENT_NAME", "proposal-sizer")

if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
