"""MPS naming in Python: {AppName}/{StreamName}/{rand}/{start}_{Sequence}.{ext}, a fresh random
string per file so two tasks recording one stream never overwrite each other."""

from datetime import datetime, timezone

from wit_world import exports
from wit_world.imports import types

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
EXT = {types.Container.FLV: "flv", types.Container.HLS: "m3u8", types.Container.MP4: "mp4", types.Container.AAC: "aac"}


def rand(seed: int, n: int) -> str:
    out = []
    for _ in range(n):
        seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(ALPHABET[(seed >> 33) % len(ALPHABET)])
    return "".join(out)


class Naming(exports.Naming):
    def name_file(self, ctx: types.Context, s: types.StreamInfo, f: types.FileInfo) -> str:
        start = datetime.fromtimestamp(f.start_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
        print(f"naming {s.app}/{s.name} file {f.sequence}")
        return f"{s.app}/{s.name}/{rand(ctx.nonce, 8)}/{start}_{f.sequence}.{EXT[f.container]}"
