/*
 * A tiny static guest helper for the whole-VM device tests: busybox has no
 * vsock tool, and no TCP client that checks what it gets back.
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
 *   vsock-echo tcp-serve PORT
 *   vsock-echo tcp-client IPV4 PORT BYTES
 *       The same over TCP/IPv4 (the virtio-net test), printing "tcp-echo"
 *       where the vsock modes print "vsock-echo".
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
#include <arpa/inet.h>
#include <netinet/in.h>
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

static int serve(const char *tag, const struct sockaddr *addr, socklen_t len, unsigned port)
{
	static char buf[CHUNK];
	int l = socket(addr->sa_family, SOCK_STREAM, 0);
	if (l < 0)
		return die("socket");
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, addr, len) < 0)
		return die("bind");
	if (listen(l, 1) < 0)
		return die("listen");
	/* The host test waits for this line before connecting. */
	printf("%s-echo listening %u\n", tag, port);
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
	printf("%s-echo served %llu\n", tag, (unsigned long long)total);
	return 0;
}

static int client(const char *tag, const struct sockaddr *addr, socklen_t len, uint64_t bytes)
{
	static char out[CHUNK], in[CHUNK];
	int s = socket(addr->sa_family, SOCK_STREAM, 0);
	if (s < 0)
		return die("socket");
	if (connect(s, addr, len) < 0)
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
	printf("%s-echo client ok %llu\n", tag, (unsigned long long)bytes);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0) {
		unsigned port = (unsigned)strtoul(argv[2], NULL, 10);
		struct sockaddr_vm a = {
			.svm_family = AF_VSOCK,
			.svm_port = port,
			.svm_cid = VMADDR_CID_ANY,
		};
		return serve("vsock", (struct sockaddr *)&a, sizeof(a), port);
	}
	if (argc == 5 && strcmp(argv[1], "client") == 0) {
		struct sockaddr_vm a = {
			.svm_family = AF_VSOCK,
			.svm_port = (unsigned)strtoul(argv[3], NULL, 10),
			.svm_cid = (unsigned)strtoul(argv[2], NULL, 10),
		};
		return client("vsock", (struct sockaddr *)&a, sizeof(a), strtoull(argv[4], NULL, 10));
	}
	if (argc == 3 && strcmp(argv[1], "tcp-serve") == 0) {
		unsigned port = (unsigned)strtoul(argv[2], NULL, 10);
		struct sockaddr_in a = {
			.sin_family = AF_INET,
			.sin_port = htons((uint16_t)port),
			.sin_addr.s_addr = htonl(INADDR_ANY),
		};
		return serve("tcp", (struct sockaddr *)&a, sizeof(a), port);
	}
	if (argc == 5 && strcmp(argv[1], "tcp-client") == 0) {
		struct sockaddr_in a = {
			.sin_family = AF_INET,
			.sin_port = htons((uint16_t)strtoul(argv[3], NULL, 10)),
		};
		if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) {
			fprintf(stderr, "vsock-echo: bad IPv4 address %s\n", argv[2]);
			return 2;
		}
		return client("tcp", (struct sockaddr *)&a, sizeof(a), strtoull(argv[4], NULL, 10));
	}
	fprintf(stderr, "usage: vsock-echo serve PORT | client CID PORT BYTES | "
			"tcp-serve PORT | tcp-client IPV4 PORT BYTES\n");
	return 2;
}
