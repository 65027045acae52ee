/*
 * vsock: the guest's AF_VSOCK client and server, which busybox lacks.
 *
 *   vsock connect CID PORT    connect, then copy stdin to the socket and the socket to stdout
 *   vsock listen PORT         accept one connection on any CID, then the same
 *   vsock connect-seq CID PORT SIZE...   SOCK_SEQPACKET: send one message of each SIZE, then
 *   vsock listen-seq PORT SIZE...        print "LEN SUM" for each message received
 *
 * When stdin ends, the write side is shut down (the peer sees end of stream) and the program
 * keeps reading until the peer closes too, so a transfer is complete when it exits 0.
 *
 * The seqpacket modes check message boundaries: message k (from 0) is SIZE bytes of the letter
 * 'a' + k % 26; after the last one the write side is shut down, and every message the peer sends
 * until it shuts down too is reported on its own line as its length and the sum of its bytes
 * (or "LEN truncated" when it did not fit the 1 MiB buffer, MSG_TRUNC).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *what) {
	fprintf(stderr, "vsock: %s: %s\n", what, strerror(errno));
	return 1;
}

static unsigned int number(const char *text, const char *what) {
	char *end;
	unsigned long v = strtoul(text, &end, 10);
	if (*text == '\0' || *end != '\0' || v > 0xffffffffUL) {
		fprintf(stderr, "vsock: %s '%s' is not a 32-bit number\n", what, text);
		exit(2);
	}
	return (unsigned int)v;
}

/* Writes all of buf, retrying short writes. */
static int write_all(int fd, const char *buf, ssize_t len) {
	while (len > 0) {
		ssize_t n = write(fd, buf, (size_t)len);
		if (n < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		buf += n;
		len -= n;
	}
	return 0;
}

static int pump(int sock) {
	static char buf[65536];
	struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = sock, .events = POLLIN } };
	int stdin_open = 1;
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR) continue;
			return fail("poll");
		}
		if (stdin_open && (fds[0].revents & (POLLIN | POLLHUP))) {
			ssize_t n = read(0, buf, sizeof buf);
			if (n < 0) return fail("reading stdin");
			if (n == 0) {
				stdin_open = 0;
				fds[0].fd = -1;
				if (shutdown(sock, SHUT_WR) < 0) return fail("shutdown");
			} else if (write_all(sock, buf, n) < 0) {
				return fail("writing the socket");
			}
		}
		if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(sock, buf, sizeof buf);
			if (n < 0) return fail("reading the socket");
			if (n == 0) return 0; /* the peer has closed: the exchange is over */
			if (write_all(1, buf, n) < 0) return fail("writing stdout");
		}
	}
}

#define MAX_MESSAGE (1 << 20)

/* Sends one message per size in sizes, shuts the write side, reports each message received. */
static int messages(int sock, char **sizes, int count) {
	static char buf[MAX_MESSAGE];
	for (int k = 0; k < count; k++) {
		unsigned int len = number(sizes[k], "message size");
		if (len > MAX_MESSAGE) {
			fprintf(stderr, "vsock: message size %u is above %u\n", len, MAX_MESSAGE);
			return 2;
		}
		memset(buf, 'a' + k % 26, len);
		ssize_t n = send(sock, buf, len, 0);
		if (n < 0) return fail("sending a message");
		if ((size_t)n != len) {
			fprintf(stderr, "vsock: sent %zd of a %u-byte message\n", n, len);
			return 1;
		}
	}
	if (shutdown(sock, SHUT_WR) < 0) return fail("shutdown");
	for (;;) {
		struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n = recvmsg(sock, &msg, MSG_TRUNC);
		if (n < 0) return fail("receiving a message");
		if (n == 0) return 0; /* the peer has shut down: the exchange is over */
		if (msg.msg_flags & MSG_TRUNC) {
			printf("%zd truncated\n", n);
			continue;
		}
		unsigned long sum = 0;
		for (ssize_t i = 0; i < n; i++) sum += (unsigned char)buf[i];
		printf("%zd %lu\n", n, sum);
		fflush(stdout);
	}
}

int main(int argc, char **argv) {
	struct sockaddr_vm addr;
	memset(&addr, 0, sizeof addr);
	addr.svm_family = AF_VSOCK;
	int seq = argc >= 2 && (strcmp(argv[1], "connect-seq") == 0 || strcmp(argv[1], "listen-seq") == 0);
	int sock = socket(AF_VSOCK, seq ? SOCK_SEQPACKET : SOCK_STREAM, 0);
	if (sock < 0) return fail("socket");
	if (argc >= 4 && strcmp(argv[1], "connect-seq") == 0) {
		addr.svm_cid = number(argv[2], "CID");
		addr.svm_port = number(argv[3], "port");
		if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");
		return messages(sock, argv + 4, argc - 4);
	}
	if (argc >= 3 && strcmp(argv[1], "listen-seq") == 0) {
		addr.svm_cid = VMADDR_CID_ANY;
		addr.svm_port = number(argv[2], "port");
		if (bind(sock, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("bind");
		if (listen(sock, 1) < 0) return fail("listen");
		fprintf(stderr, "vsock: listening on port %u\n", addr.svm_port);
		int conn = accept(sock, NULL, NULL);
		if (conn < 0) return fail("accept");
		close(sock);
		return messages(conn, argv + 3, argc - 3);
	}
	if (argc == 4 && strcmp(argv[1], "connect") == 0) {
		addr.svm_cid = number(argv[2], "CID");
		addr.svm_port = number(argv[3], "port");
		if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");
		return pump(sock);
	}
	if (argc == 3 && strcmp(argv[1], "listen") == 0) {
		addr.svm_cid = VMADDR_CID_ANY;
		addr.svm_port = number(argv[2], "port");
		if (bind(sock, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("bind");
		if (listen(sock, 1) < 0) return fail("listen");
		/* Tells a waiting test that the port is open before the first connection arrives. */
		fprintf(stderr, "vsock: listening on port %u\n", addr.svm_port);
		int conn = accept(sock, NULL, NULL);
		if (conn < 0) return fail("accept");
		close(sock);
		return pump(conn);
	}
	fprintf(stderr, "usage: vsock connect CID PORT | vsock listen PORT | vsock connect-seq CID PORT SIZE... | vsock listen-seq PORT SIZE...\n");
	return 2;
}
