#!/bin/sh
dt-phase quiet
sleep 10
