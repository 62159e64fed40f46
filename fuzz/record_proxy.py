# Loopback TCP proxy that records each connection's two byte streams.
import asyncio, sys, os, itertools
LISTEN, TARGET, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(OUT, exist_ok=True)
counter = itertools.count()
async def pipe(r, w, f):
    try:
        while True:
            d = await r.read(65536)
            if not d:
                break
            f.write(d); f.flush()
            w.write(d)
            await w.drain()
    except Exception:
        pass
    finally:
        try: w.close()
        except Exception: pass
async def handle(cr, cw):
    n = next(counter)
    sr, sw = await asyncio.open_connection('127.0.0.1', TARGET)
    with open(f"{OUT}/{n:03d}.c2s", "wb") as fc, open(f"{OUT}/{n:03d}.s2c", "wb") as fs:
        await asyncio.gather(pipe(cr, sw, fc), pipe(sr, cw, fs))
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', LISTEN)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
