#!/usr/bin/env bash
# `make report-check`: rebuild the report from the result files committed at HEAD (no training) and check that it
# comes out byte-identical to the report committed at HEAD.
#
# It runs in a throwaway `git worktree` of HEAD, so the working tree is neither read nor touched: result files that
# `make repro` rewrote on this machine (another CPU rounds differently), a half-edited pipeline or report, are
# ignored. To check uncommitted work, commit it first. The report stage's deps (results/**, references/, the report
# code, params.yaml) are all tracked by git (cache: false), so HEAD alone rebuilds it.
# Needs the venv's `python` and `dvc` on PATH (the Makefile puts them there).
set -euo pipefail

repo=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/report-check.XXXXXX")
wt="$tmp/worktree"
# shellcheck disable=SC2317  # (run by the trap)
cleanup() {
    git -C "$repo" worktree remove --force "$wt" 2>/dev/null || true
    rm -rf "$tmp"
    git -C "$repo" worktree prune
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

git -C "$repo" worktree add --quiet --detach "$wt" HEAD
# The worktree's DVC cache is its own .dvc/cache (git-ignored, removed with it); its per-path state (file hashes,
# locks) goes to a site cache inside $tmp instead of one more directory in the machine's shared site cache.
export DVC_SITE_CACHE_DIR="$tmp/dvc-site"
(cd "$wt" && dvc repro --single-item --force report)

status=0
git -C "$wt" diff --exit-code --stat -- reports || status=1
new=$(git -C "$wt" ls-files --others --exclude-standard -- reports)
if [ -n "$new" ]; then
    printf 'report-check: the rebuilt report has files that are not committed:\n%s\n' "$new"
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "report-check: the report rebuilt from HEAD's results differs from HEAD's report (above)." >&2
fi
exit "$status"
