#!/bin/sh
# Redis under a write-heavy load: the server's memory is the working set.
# dirtytrace record --workload examples/linux/redis.sh --package redis-server --mem 1GiB
ip link set lo up
redis-server --daemonize yes --save '' --appendonly no
until redis-cli ping >/dev/null 2>&1; do sleep 0.1; done
dt-phase load
redis-benchmark -q -n 20000 -r 100000 -d 1024 -t set
dt-phase read
redis-benchmark -q -n 20000 -r 100000 -t get
redis-cli shutdown nosave
