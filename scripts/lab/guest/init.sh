#!/bin/sh
# PID 1 of the lab guest: mount the kernel's filesystems, load drivers for the devices present,
# then serve the host's commands on the agent port (a plain 8250 UART, so it works even when
# every virtio device under test is broken).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname paravirt-guest
ip link set lo up

# Devices that appear from now on (hot-plug, disks behind virtio-scsi) get their driver through
# the uevent listener; the ones already present are walked once below.
uevent hotplug &
for f in /sys/bus/virtio/devices/*/modalias /sys/bus/scsi/devices/*/modalias; do
	[ -r "$f" ] && cat "$f"
done 2>/dev/null | sort -u | xargs -r modprobe -qa
# Serial ports named before the listener started get their /dev/virtio-ports links now.
for port in /sys/class/virtio-ports/*; do
	[ -e "$port" ] && SUBSYSTEM=virtio-ports ACTION=add DEVNAME=${port##*/} hotplug
done

for word in $(cat /proc/cmdline); do
	case "$word" in
	paravirt.agent=*) AGENT_PORT=/dev/${word#paravirt.agent=} ;;
	paravirt.shell=1) SHELL_ON_CONSOLE=1 ;;
	esac
done
echo "paravirt: modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

[ -n "$AGENT_PORT" ] && agent "$AGENT_PORT" &

if [ -n "$SHELL_ON_CONSOLE" ]; then
	echo "paravirt: shell on the console; 'poweroff -f' stops the guest"
	while true; do setsid cttyhack sh -l; done
fi
# PID 1 must never exit; it also reaps orphans while it waits.
while true; do wait; sleep 3600; done
