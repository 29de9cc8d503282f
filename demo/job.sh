#!/bin/bash
# The demo job: prints facts about where it runs. vm-wrapper runs it inside a VM.
#PBS -N vmw-demo
echo "== inside the job =="
echo "host name:    $(hostname)"
echo "kernel:       $(uname -r)"
echo "os:           $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "user:         $(id -un) (uid $(id -u), gid $(id -g))"
echo "cpus:         $(nproc)"
echo "memory:       $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"
echo "virtualized:  $(cat /sys/class/dmi/id/sys_vendor 2>/dev/null) $(cat /sys/class/dmi/id/product_name 2>/dev/null)"
echo "job id:       $PBS_JOBID"
echo "node file:    $PBS_NODEFILE: $(tr '\n' ' ' < "$PBS_NODEFILE")"
exit "${DEMO_EXIT:-0}"
