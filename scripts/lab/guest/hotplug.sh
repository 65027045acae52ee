#!/bin/sh
# The kernel's uevent helper: load the driver a newly added device asks for.
[ "$ACTION" = add ] && [ -n "$MODALIAS" ] && exec /bin/modprobe -q "$MODALIAS"
exit 0
