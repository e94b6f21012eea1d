/*
 * A tiny static guest helper for the whole-VM device tests: busybox has no
 * vsock tool.
 *
 *   vsock-echo serve PORT
 *       Listen on vsock PORT, accept one connection, send back everything
 *       it receives until the peer shuts down its side, then close.
 *
 *   vsock-echo client CID PORT BYTES
 *       Connect to CID:PORT, send BYTES bytes of a fixed pseudo-random
 *       pattern while reading the echo, and compare the echo byte for byte.
 *       Prints "vsock-echo client ok BYTES" on success.
 *
 * Exit status 0 on success, 1 on any failure (with a message on stderr).
 *
 * Build: cc -static -O2 -o vsock-echo vsock_echo.c
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define CHUNK 65536

static int die(const char *what)
{
	fprintf(stderr, "vsock-echo: %s: %s\n", what, strerror(errno));
	return 1;
}

/* xorshift32: the host test generates the same stream. */
static uint8_t pattern_byte(uint64_t i)
{
	uint32_t x = (uint32_t)(i / 4) * 2654435761u + 0x9e3779b9u;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return (uint8_t)(x >> (8 * (i % 4)));
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int serve(unsigned port)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_port = port,
		.svm_cid = VMADDR_CID_ANY,
	};
	static char buf[CHUNK];
	int l = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (l < 0)
		return die("socket");
	if (bind(l, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return die("bind");
	if (listen(l, 1) < 0)
		return die("listen");
	/* The host test waits for this line before connecting. */
	printf("vsock-echo listening %u\n", port);
	fflush(stdout);
	int c = accept(l, NULL, NULL);
	if (c < 0)
		return die("accept");
	uint64_t total = 0;
	for (;;) {
		ssize_t n = read(c, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return die("read");
		}
		if (n == 0)
			break;
		if (write_all(c, buf, (size_t)n) < 0)
			return die("write");
		total += (uint64_t)n;
	}
	close(c);
	close(l);
	printf("vsock-echo served %llu\n", (unsigned long long)total);
	return 0;
}

static int client(unsigned cid, unsigned port, uint64_t bytes)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_port = port,
		.svm_cid = cid,
	};
	static char out[CHUNK], in[CHUNK];
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0)
		return die("socket");
	if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return die("connect");
	uint64_t sent = 0, received = 0;
	size_t pending = 0, offset = 0;
	while (received < bytes) {
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (sent < bytes || pending > 0)
			p.events |= POLLOUT;
		if (poll(&p, 1, 60000) <= 0)
			return die("poll (timeout or error)");
		if ((p.revents & POLLOUT) && (pending > 0 || sent < bytes)) {
			if (pending == 0) {
				uint64_t left = bytes - sent;
				pending = left < CHUNK ? (size_t)left : CHUNK;
				for (size_t i = 0; i < pending; i++)
					out[i] = (char)pattern_byte(sent + i);
				offset = 0;
			}
			ssize_t n = send(s, out + offset, pending, MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				return die("send");
			if (n > 0) {
				offset += (size_t)n;
				pending -= (size_t)n;
				sent += (uint64_t)n;
				if (sent == bytes && pending == 0)
					shutdown(s, SHUT_WR);
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = recv(s, in, sizeof(in), MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				return die("recv");
			if (n == 0) {
				fprintf(stderr, "vsock-echo: peer closed after %llu of %llu bytes\n",
					(unsigned long long)received, (unsigned long long)bytes);
				return 1;
			}
			for (ssize_t i = 0; i < n; i++) {
				if ((uint8_t)in[i] != pattern_byte(received + (uint64_t)i)) {
					fprintf(stderr, "vsock-echo: byte %llu differs\n",
						(unsigned long long)(received + (uint64_t)i));
					return 1;
				}
			}
			if (n > 0)
				received += (uint64_t)n;
		}
	}
	close(s);
	printf("vsock-echo client ok %llu\n", (unsigned long long)bytes);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0)
		return serve((unsigned)strtoul(argv[2], NULL, 10));
	if (argc == 5 && strcmp(argv[1], "client") == 0)
		return client((unsigned)strtoul(argv[2], NULL, 10),
			      (unsigned)strtoul(argv[3], NULL, 10),
			      strtoull(argv[4], NULL, 10));
	fprintf(stderr, "usage: vsock-echo serve PORT | client CID PORT BYTES\n");
	return 2;
}
