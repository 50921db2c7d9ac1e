#!/bin/sh
# stress-ng's VM stressor between two phases: 64 MiB rewritten for 10 s, then a quiet phase.
# dirtytrace record --workload examples/linux/stress-ng.sh --package stress-ng --mem 1GiB
dt-phase stress
stress-ng --vm 1 --vm-bytes 64M --timeout 10s --metrics-brief
status=$?
dt-phase quiet
sleep 2
exit $status
