"""A TCP relay that adds a one-way delay to every byte in both directions (RTT = 2 × delay).

This kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so the bench emulates the link's
latency here, in the registry's network namespace, between the veth (rate-shaped with tc tbf)
and the registry on the namespace's loopback. Each chunk read is written out `delay` after it
was read, in order; a new connection waits one RTT before it is relayed (the handshake a real
link would cost). TCP's own round trips (ACK clock) are not delayed: at the rates benched the
bandwidth-delay product (1 Gbit/s × 2 ms = 250 kB) is below the default socket buffers, so
windows do not limit the transfer and per-request latency is what the delay changes.

    python3 delay-relay.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT DELAY_MS
"""
import asyncio
import sys
import time

listen, upstream, delay = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000.0


async def pipe(reader, writer):
    q = asyncio.Queue(maxsize=256)

    async def read():
        while True:
            data = await reader.read(1 << 18)
            await q.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write():
        while True:
            due, data = await q.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        pass


async def handle(cr, cw):
    await asyncio.sleep(2 * delay)
    try:
        ur, uw = await asyncio.open_connection(*upstream.rsplit(":", 1))
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
    for w in (cw, uw):
        w.close()


async def main():
    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), backlog=256)
    async with server:
        await server.serve_forever()


asyncio.run(main())
