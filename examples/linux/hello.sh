#!/bin/sh
# A tiny Linux workload: mark two phases and dirty some memory with dd into tmpfs.
dt-phase fill
dd if=/dev/zero of=/tmp/blob bs=1M count=64 2>/dev/null
dt-phase idle
sleep 1
echo "workload done"
