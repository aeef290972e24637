// A tag-policy plugin in JavaScript (componentize-js): the seed scheme, minus the long-branch
// hash. Build and run it with scripts/check-wit; the README's plugin guide explains the flags.
import { log } from 'prpod:plugin/logging@0.1.0';

// Lowercase; anything outside [a-z0-9._-] becomes '-'; runs of '-' collapse; ends trimmed.
function slug(branch) {
  const s = branch.toLowerCase().replace(/[^a-z0-9._-]/g, '-').replace(/-+/g, '-').replace(/^[-._]+|[-._]+$/g, '');
  if (s === '') {
    throw `branch ${JSON.stringify(branch)} has no characters usable in a tag`;
  }
  return s.slice(0, 100);
}

// u64 fields arrive as BigInt; `option` fields as undefined when absent.
export function computeTags(ctx, imageRepository) {
  const branch = slug(ctx.branch);
  const base = slug(ctx.baseBranch ?? 'main');
  const primary = ctx.number !== undefined ? `pr-${ctx.number}` : `pr-${branch}`;
  const extra = [`pr-${branch}`, `sha-${ctx.sha.slice(0, 12).toLowerCase()}`].filter((t) => t !== primary);
  log('info', `tags for ${imageRepository}: ${primary}`);
  return {
    primary,
    extra,
    cacheFrom: [...new Set([`cache-${branch}`, `cache-${base}`])],
    cacheTo: `cache-${branch}`,
  };
}

export function release(ctx) {
  if (ctx.number === undefined) {
    throw 'this policy only previews pull requests (no PR number in the context)';
  }
  return { name: `pr-${ctx.number}`, namespace: `pr-${ctx.number}` };
}
