"""A tiny prpod tag-policy plugin in Python: primary tag pr-<number>, else pr-<branch>."""
import re
import wit_world
from wit_world.imports import types, logging
from componentize_py_types import Err


def _slug(branch: str) -> str:
    s = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", branch.lower())).strip("-")
    if not s:
        raise Err(f"branch {branch!r} has no usable characters; rename it")
    return s[:40]


class WitWorld(wit_world.WitWorld):
    def compute_tags(self, ctx: types.PrContext, image_repository: str) -> types.TagSet:
        slug = _slug(ctx.branch)
        primary = f"pr-{ctx.number}" if ctx.number is not None else f"pr-{slug}"
        extra = [t for t in (f"pr-{slug}", f"sha-{ctx.sha[:12]}") if t != primary]
        logging.log(logging.Level.DEBUG, f"python tag-policy: {primary} for {image_repository}")
        return types.TagSet(primary=primary, extra=extra, cache_from=[f"cache-{slug}"], cache_to=f"cache-{slug}")

    def release(self, ctx: types.PrContext) -> types.ReleaseTarget:
        name = f"pr-{ctx.number}" if ctx.number is not None else f"pr-{_slug(ctx.branch)}"
        return types.ReleaseTarget(name=name, namespace=name)
