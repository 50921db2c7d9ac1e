#!/bin/sh
dt-phase busy
stress-ng --vm 1 --vm-bytes 64M --timeout 10s --metrics-brief
