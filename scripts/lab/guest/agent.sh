#!/bin/sh
# Serves the host on a serial port. Requests are lines "SEQ BASE64(shell script)"; each answer is
#   @@paravirt-result SEQ EXIT_CODE
#   BASE64(stdout)
#   BASE64(stderr)
# so any bytes survive the line-oriented channel. The port is raw: no echo, no newline mangling.
port=$1
stty -F "$port" raw -echo
exec 3<"$port" 4>"$port"
mkdir -p /tmp/agent
printf '\n@@paravirt-ready %s\n' "$(uname -r)" >&4
while read -r seq script <&3; do
	printf '%s' "$script" | base64 -d >/tmp/agent/cmd
	(cd /root && exec sh /tmp/agent/cmd) </dev/null >/tmp/agent/out 2>/tmp/agent/err
	code=$?
	{
		printf '@@paravirt-result %s %s\n' "$seq" "$code"
		base64 -w0 /tmp/agent/out
		printf '\n'
		base64 -w0 /tmp/agent/err
		printf '\n'
	} >&4
done
echo "paravirt: agent port $port closed" >&2
