#!/bin/bash
# A provider as many are written outside Python: a shell loop with no SIGTERM trap. As PID 1
# of its container it would ignore SIGTERM (the kernel drops signals PID 1 has no handler
# for); under docker's init it is an ordinary child and SIGTERM stops it.
read -r command
echo '{"status":"ready","verbs":["run"]}'
n=0
while true; do
  n=$((n + 1))
  echo "{\"data\":{\"value\":$n},\"metadata\":{}}"
  echo "{\"checkpoint\":{\"value\":$n}}"
  sleep 0.05
done
