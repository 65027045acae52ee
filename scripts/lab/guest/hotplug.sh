#!/bin/sh
# The kernel's uevent helper: load the driver a newly added device asks for, and name virtio
# serial ports as udev does (/dev/virtio-ports/NAME -> ../vportNpM). A port's name arrives after
# the port (PORT_NAME follows DEVICE_ADD, §5.3.6.2), with a change event.
[ "$ACTION" = add ] && [ -n "$MODALIAS" ] && exec /bin/modprobe -q "$MODALIAS"
if [ "$SUBSYSTEM" = virtio-ports ] && [ -n "$DEVNAME" ]; then
	case "$ACTION" in
	add | change)
		name=$(cat "/sys/class/virtio-ports/$DEVNAME/name" 2>/dev/null)
		if [ -n "$name" ]; then
			mkdir -p /dev/virtio-ports
			ln -sfn "../$DEVNAME" "/dev/virtio-ports/$name"
		fi
		;;
	remove)
		for link in /dev/virtio-ports/*; do
			[ "$(readlink "$link")" = "../$DEVNAME" ] && rm -f "$link"
		done
		;;
	esac
fi
exit 0
