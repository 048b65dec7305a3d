"""A provider for tests, standard library only. config.behaviour picks what it does:

exit      print to stderr and exit 3 before the handshake
garbage   print a non-JSON line instead of a handshake
hang      never answer
count     handshake, then emit config.count envelopes every config.interval seconds
          (forever when count is 0), checkpointing each; logs its config to stderr first
legacy    no handshake: print data lines straight away (upstream style)
"""

import json
import signal
import sys
import time

stopping = []
signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
command = json.loads(sys.stdin.readline())
config = command.get("config") or {}
behaviour = config.get("behaviour", "count")
print(f"scripted provider starting: behaviour={behaviour}", file=sys.stderr, flush=True)
if behaviour == "exit":
    print("fatal: the source database refused the connection", file=sys.stderr, flush=True)
    sys.exit(3)
if behaviour == "garbage":
    print("Hello from a chatty provider", flush=True)
    time.sleep(3600)
if behaviour == "hang":
    time.sleep(3600)
if behaviour == "count":
    print(f"config is {json.dumps(config)}", file=sys.stderr, flush=True)
    print(json.dumps({"status": "ready", "verbs": ["run"]}), flush=True)
start = (command.get("checkpoint") or {}).get("value", 0)
count = int(config.get("count", 0))
n = start
while not stopping and (not count or n < count):
    n += 1
    print(json.dumps({"data": {"value": n}, "metadata": {"Sequence": n}}), flush=True)
    if behaviour == "count":
        print(json.dumps({"checkpoint": {"value": n}}), flush=True)
    time.sleep(float(config.get("interval", 0)))
